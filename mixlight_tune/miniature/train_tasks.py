"""The training mixture: 24 tasks in six families, each with several prompt templates."""

from __future__ import annotations

import random

from . import scenes, world
from ..schema import Item, Task, make_templates

YES_NO = ("yes", "no")
TRUE_FALSE = ("true", "false")
CORRECT = ("correct", "incorrect")
POS_NEG = ("positive", "negative")
WORD_POOL = tuple(a.name for a in world.ANIMALS) + tuple(world.OBJECTS)


def _sentiment(rng: random.Random) -> Item:
    r = scenes.review(rng)
    return Item({"review": r.text, "obj": r.obj}, answer=0 if r.positive else 1)


def _topic(rng: random.Random) -> Item:
    label = rng.randrange(len(world.TOPICS))
    return Item({"sentence": scenes.topic_sentence(rng, world.TOPICS[label])}, answer=label)


def _parity(rng: random.Random) -> Item:
    n = rng.randrange(100)
    return Item({"n": str(n)}, answer=n % 2)


def _habitat(rng: random.Random) -> Item:
    animal = rng.choice(world.ANIMALS)
    return Item({"animal": animal.name}, answer=world.HOMES.index(animal.home))


def _possession(rng: random.Random) -> Item:
    pair = scenes.owned_pair(rng)
    fact = rng.choice(pair)
    holds = rng.random() < 0.5
    claim = fact if holds else scenes.false_variant(rng, fact, pair)
    premise = f"{pair[0].clause()} and {pair[1].clause()}."
    return Item({"premise": premise, "claim": claim.clause()}, answer=0 if holds else 1)


def _location(rng: random.Random) -> Item:
    people = rng.sample(world.PEOPLE, 2)
    places = rng.sample(world.PLACES, 3)
    premise = " ".join(f"{p} is at the {q}." for p, q in zip(people, places[:2], strict=True))
    who = rng.randrange(2)
    holds = rng.random() < 0.5
    place = places[who] if holds else rng.choice([places[1 - who], places[2]])
    claim = f"{people[who]} is at the {place}"
    return Item({"premise": premise, "claim": claim}, answer=0 if holds else 1)


def _membership(rng: random.Random) -> Item:
    box = scenes.container(rng)
    holds = rng.random() < 0.5
    obj = rng.choice(box.items) if holds else box.absent(rng)
    fields = {
        "contents": box.sentence(),
        "items": ", ".join(box.items),
        "container": box.name,
        "obj": obj,
        "obj_article": scenes.article(obj),
    }
    return Item(fields, answer=0 if holds else 1)


def _relation(rng: random.Random) -> Item:
    a, b = rng.sample(world.PEOPLE, 2)
    rel = rng.choice(world.COMPARATIVES)
    holds = rng.random() < 0.5
    x, y = (a, b) if holds else (b, a)
    fields = {"fact": f"{a} is {rel} than {b}.", "x": x, "y": y, "rel": rel}
    return Item(fields, answer=0 if holds else 1)


def _ages(rng: random.Random) -> Item:
    a, b = rng.sample(world.PEOPLE, 2)
    n, m = scenes.two_numbers(rng, 5, 80)
    return Item({"a": a, "b": b, "n": str(n), "m": str(m)}, choices=(a, b), answer=int(m > n))


def _larger(rng: random.Random) -> Item:
    n, m = scenes.two_numbers(rng, 0, 99)
    return Item({"n": str(n), "m": str(m)}, choices=(str(n), str(m)), answer=int(m > n))


def _biggest(rng: random.Random) -> Item:
    sizes = rng.sample(sorted({a.size for a in world.ANIMALS}), 3)
    picks = [rng.choice([a for a in world.ANIMALS if a.size == s]) for s in sizes]
    rng.shuffle(picks)
    answer = max(range(3), key=lambda i: picks[i].size)
    names = tuple(a.name for a in picks)
    return Item({"options": ", ".join(names)}, choices=names, answer=answer)


def _pick_colour(rng: random.Random) -> Item:
    colours = rng.sample(world.COLOURS, 3)
    options = tuple(
        f"{c} {o}" for c, o in zip(colours, rng.sample(list(world.OBJECTS), 3), strict=True)
    )
    answer = rng.randrange(3)
    fields = {"options": ", ".join(options), "colour": colours[answer]}
    return Item(fields, choices=options, answer=answer)


def _ability(rng: random.Random) -> Item:
    ability = rng.choice(world.ABILITIES)
    fits = [a.name for a in world.ANIMALS if ability in a.abilities]
    others = [a.name for a in world.ANIMALS if ability not in a.abilities]
    options, answer = scenes.one_that_fits(rng, fits, others, 3)
    return Item({"ability": ability, "options": ", ".join(options)}, choices=options, answer=answer)


def _odd_one_out(rng: random.Random) -> Item:
    main, odd = rng.sample(sorted(world.CATEGORIES), 2)
    options, answer = scenes.one_that_fits(rng, world.CATEGORIES[odd], world.CATEGORIES[main], 4)
    return Item({"words": ", ".join(options)}, choices=options, answer=answer)


def _extract_colour(rng: random.Random) -> Item:
    name, colour = rng.choice(world.PEOPLE), rng.choice(world.COLOURS)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    sentence = f"{name} bought {scenes.article(colour)} {obj} at the {place}."
    return Item({"sentence": sentence, "obj": obj}, target=colour)


def _extract_name(rng: random.Random) -> Item:
    a, b = rng.sample(world.PEOPLE, 2)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    sentence = f"{a} gave {scenes.article(obj)} to {b} at the {place}."
    return Item({"sentence": sentence, "obj": obj}, target=a)


def _extract_number(rng: random.Random) -> Item:
    name, n = rng.choice(world.PEOPLE), rng.randint(2, 20)
    objs, place = rng.choice(list(world.OBJECTS.values())), rng.choice(world.PLACES)
    sentence = f"{name} found {n} {objs} at the {place}."
    return Item({"sentence": sentence, "name": name, "objs": objs}, target=str(n))


def _extract_place(rng: random.Random) -> Item:
    name, place = rng.choice(world.PEOPLE), rng.choice(world.PLACES)
    sentence = f"{name} {rng.choice(world.ACTIVITIES)} at the {place} on {rng.choice(world.DAYS)}."
    return Item({"sentence": sentence, "name": name}, target=place)


def _reverse(rng: random.Random) -> Item:
    words = rng.sample(WORD_POOL, rng.randint(3, 5))
    return Item({"items": ", ".join(words)}, target=", ".join(reversed(words)))


def _sort(rng: random.Random) -> Item:
    nums = rng.sample(range(31), rng.randint(3, 5))
    return Item({"nums": " ".join(map(str, nums))}, target=" ".join(map(str, sorted(nums))))


def _count(rng: random.Random) -> Item:
    words = rng.sample(WORD_POOL, rng.randint(2, 7))
    return Item({"items": ", ".join(words)}, target=str(len(words)))


def _opposite(rng: random.Random) -> Item:
    word = rng.choice(sorted(world.OPPOSITES))
    return Item({"word": word}, target=world.OPPOSITES[word])


def _plural(rng: random.Random) -> Item:
    noun = rng.choice(sorted(world.PLURALS))
    return Item({"noun": noun}, target=world.PLURALS[noun])


def _add(rng: random.Random) -> Item:
    a, b = rng.randint(0, 12), rng.randint(0, 12)
    return Item({"a": str(a), "b": str(b)}, target=str(a + b))


# fmt: off
TRAIN_TASKS: tuple[Task, ...] = (
    # classification
    Task("sentiment", "classification", make_templates(
        ("Review: {review} Is this review positive or negative?", POS_NEG),
        ("{review} Did the writer like the {obj}?", YES_NO),
        ("Give the sentiment of this review. {review}", POS_NEG),
        ("{review} Is the writer happy or sad?", ("happy", "sad")),
    ), _sentiment),
    Task("topic", "classification", make_templates(
        ("What is this sentence about? {sentence}", world.TOPICS),
        ("{sentence} Topic:", world.TOPICS),
        ("Pick the topic: animals, weather, food or travel. Text: {sentence}", world.TOPICS),
    ), _topic),
    Task("parity", "classification", make_templates(
        ("Is {n} an even or odd number?", ("even", "odd")),
        ("{n}: even or odd?", ("even", "odd")),
        ("Tell me if the number {n} is even.", YES_NO),
    ), _parity),
    Task("habitat", "classification", make_templates(
        ("Where does a {animal} live?", world.HOMES),
        ("A {animal} lives where: house, farm, forest or sea?", world.HOMES),
        ("Name the home of the {animal}.", world.HOMES),
    ), _habitat),
    # entailment
    Task("possession_nli", "entailment", make_templates(
        ("Premise: {premise} Hypothesis: {claim}. Does the premise support it?", YES_NO),
        ("{premise} Question: {claim}. True or false?", TRUE_FALSE),
        ("{premise} Based on this, is it correct that {claim}?", CORRECT),
    ), _possession),
    Task("location_nli", "entailment", make_templates(
        ("Premise: {premise} Hypothesis: {claim}. Does the premise support it?", YES_NO),
        ("{premise} Is it true that {claim}?", YES_NO),
        ("Facts: {premise} Statement: {claim}. True or false?", TRUE_FALSE),
    ), _location),
    Task("membership", "entailment", make_templates(
        ("{contents} Is there {obj_article} in the {container}?", YES_NO),
        ("Items in the {container}: {items}. Does the {container} contain the {obj}?", YES_NO),
        ("{contents} True or false: the {obj} is in the {container}.", TRUE_FALSE),
    ), _membership),
    Task("relation_nli", "entailment", make_templates(
        ("{fact} Is {x} {rel} than {y}?", YES_NO),
        ("Fact: {fact} Question: is {x} {rel} than {y}? Answer yes or no.", YES_NO),
        ("{fact} So {x} is {rel} than {y}. True or false?", TRUE_FALSE),
    ), _relation),
    # comparison
    Task("older_of_two", "comparison", make_templates(
        "{a} is {n} years old and {b} is {m} years old. Who is older?",
        "Ages: {a} {n}, {b} {m}. Name the older person.",
        "Who is older, {a} who is {n} or {b} who is {m}?",
    ), _ages),
    Task("larger_number", "comparison", make_templates(
        "Which number is bigger: {n} or {m}?",
        "Pick the larger number. {n} {m}",
        "Of {n} and {m}, which is greater?",
    ), _larger),
    # multiple choice
    Task("biggest_animal", "multiple_choice", make_templates(
        "Which animal is the biggest: {options}?",
        "Of these animals, name the largest: {options}.",
        "{options}. Which is the biggest animal?",
    ), _biggest),
    Task("pick_by_colour", "multiple_choice", make_templates(
        "Which item is {colour}? Options: {options}",
        "Options: {options}. Choose the {colour} one.",
        "Find the {colour} thing among these: {options}.",
    ), _pick_colour),
    Task("pick_by_ability", "multiple_choice", make_templates(
        "Which animal can {ability}? Options: {options}",
        "{options}: which of these can {ability}?",
        "Pick the animal that is able to {ability}: {options}.",
    ), _ability),
    Task("odd_one_out", "multiple_choice", make_templates(
        "Which word does not belong: {words}?",
        "Find the odd one out: {words}.",
        "{words}. One of these is different. Which one?",
    ), _odd_one_out),
    # extraction
    Task("extract_colour", "extraction", make_templates(
        "{sentence} What colour is the {obj}?",
        "Extract the colour from this sentence: {sentence}",
        "{sentence} The {obj} is which colour?",
    ), _extract_colour),
    Task("extract_name", "extraction", make_templates(
        "{sentence} Who gave the {obj}?",
        "Name the person who gave something. {sentence}",
        "{sentence} Giver:",
    ), _extract_name),
    Task("extract_number", "extraction", make_templates(
        "{sentence} How many {objs} did {name} find?",
        "Extract the number from this sentence: {sentence}",
        "{sentence} Number of {objs}:",
    ), _extract_number),
    Task("extract_place", "extraction", make_templates(
        "{sentence} Where was {name}?",
        "Extract the place from this sentence: {sentence}",
        "{sentence} Place:",
    ), _extract_place),
    # transformation
    Task("reverse_list", "transformation", make_templates(
        "Reverse the list: {items}",
        "Write these words in the opposite order: {items}",
        "{items} Reversed:",
    ), _reverse),
    Task("sort_numbers", "transformation", make_templates(
        "Sort from smallest to largest: {nums}",
        "Put in increasing order: {nums}",
        "{nums} Sorted:",
    ), _sort),
    Task("count_items", "transformation", make_templates(
        "How many items are in this list? {items}",
        "Count the words: {items}",
        "{items} Number of items:",
    ), _count),
    Task("opposite", "transformation", make_templates(
        "What is the opposite of {word}?",
        "Give the antonym of {word}.",
        "{word}: opposite word?",
    ), _opposite),
    Task("plural", "transformation", make_templates(
        "What is the plural of {noun}?",
        "Write the plural form: {noun}",
        "One {noun}, many what?",
    ), _plural),
    Task("addition", "transformation", make_templates(
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "{a} + {b} =",
    ), _add),
)
# fmt: on
