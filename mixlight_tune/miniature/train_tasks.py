"""Ten pick-one task families of the training mixture, with training templates and new prompts.

Every task is a rank-classification task a tiny T5 can learn (full fine-tuning reaches
>= 0.9 on fresh items; see docs/demo/README.md): a lookup of a world fact (habitat, size,
ability), a reading of a scene (who, where, what colour, how many), or a classification of
a sentence (sentiment, topic). ``templates`` are what tuning sees; ``new_templates`` are
never trained on and make table B (T0's prompt generalisation): new wording, a new order of
the listed options, and, for the label tasks, new label words. The first five templates of
each family are the first mixture's (``suite.MIXTURES``): never edit or reorder them, since
the shipped bases' tokenizer was trained on their texts.
"""

from __future__ import annotations

import random

from ..schema import Item, Task, Template, make_templates
from . import scenes, world


def new_prompts(*specs: str | tuple[str, tuple[str, ...]]) -> tuple[Template, ...]:
    """Templates named n1, n2, ...: the prompts of table B, never trained on."""
    return make_templates(*specs, prefix="n")


def _sentiment(rng: random.Random) -> Item:
    r = scenes.review(rng)
    return Item({"review": r.text, "obj": r.obj}, answer=0 if r.positive else 1)


def _topic(rng: random.Random) -> Item:
    label = rng.randrange(len(world.TOPICS))
    return Item({"sentence": scenes.topic_sentence(rng, world.TOPICS[label])}, answer=label)


def _habitat(rng: random.Random) -> Item:
    animal = rng.choice(world.ANIMALS)
    fields = {"animal": animal.name, "animals": animal.plural}
    return Item(fields, answer=world.HOMES.index(animal.home))


def _biggest(rng: random.Random) -> Item:
    picks = scenes.three_sizes(rng)
    answer = max(range(3), key=lambda i: picks[i].size)
    names = tuple(a.name for a in picks)
    return Item({"options": ", ".join(names)}, choices=names, answer=answer)


def _ability(rng: random.Random) -> Item:
    ability = rng.choice(world.ABILITIES)
    fits = [a.name for a in world.ANIMALS if ability in a.abilities]
    others = [a.name for a in world.ANIMALS if ability not in a.abilities]
    options, answer = scenes.one_that_fits(rng, fits, others, 3)
    return Item({"ability": ability, "options": ", ".join(options)}, choices=options, answer=answer)


def _pick_colour(rng: random.Random) -> Item:
    colours = rng.sample(world.COLOURS, 3)
    options = tuple(
        f"{c} {o}" for c, o in zip(colours, rng.sample(list(world.OBJECTS), 3), strict=True)
    )
    answer = rng.randrange(3)
    fields = {"options": ", ".join(options), "colour": colours[answer]}
    return Item(fields, choices=options, answer=answer)


def _with_distractors(
    rng: random.Random, fields: dict[str, str], right: str, pool: tuple[str, ...] | list[str]
) -> Item:
    """An item whose choices are ``right`` and two other words from ``pool``, shuffled."""
    options, answer = scenes.one_that_fits(rng, [right], [w for w in pool if w != right], 3)
    return Item({**fields, "options": ", ".join(options)}, choices=options, answer=answer)


def _giver(rng: random.Random) -> Item:
    a, b, c = rng.sample(world.PEOPLE, 3)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    sentence = f"{a} gave {scenes.article(obj)} to {b} at the {place}."
    options = [a, b, c]
    rng.shuffle(options)
    fields = {"sentence": sentence, "obj": obj, "options": ", ".join(options)}
    return Item(fields, choices=tuple(options), answer=options.index(a))


def _place(rng: random.Random) -> Item:
    name, place = rng.choice(world.PEOPLE), rng.choice(world.PLACES)
    sentence = f"{name} {rng.choice(world.ACTIVITIES)} at the {place} on {rng.choice(world.DAYS)}."
    return _with_distractors(rng, {"sentence": sentence, "name": name}, place, world.PLACES)


def _colour(rng: random.Random) -> Item:
    name, colour = rng.choice(world.PEOPLE), rng.choice(world.COLOURS)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    sentence = f"{name} bought {scenes.article(colour)} {obj} at the {place}."
    return _with_distractors(rng, {"sentence": sentence, "obj": obj}, colour, world.COLOURS)


def _number(rng: random.Random) -> Item:
    name, n = rng.choice(world.PEOPLE), rng.randint(2, 20)
    objs, place = rng.choice(list(world.OBJECTS.values())), rng.choice(world.PLACES)
    sentence = f"{name} found {n} {objs} at the {place}."
    numbers = [str(k) for k in range(2, 21)]
    return _with_distractors(
        rng, {"sentence": sentence, "name": name, "objs": objs}, str(n), numbers
    )


# fmt: off
HOMES_LISTED = "house, farm, forest or sea"
TRAIN_TASKS: tuple[Task, ...] = (
    Task("sentiment", "classification", make_templates(
        ("{review} Is this review positive or negative?", ("positive", "negative")),
        ("Review: {review} Did the buyer like the {obj}? Answer yes or no.", ("yes", "no")),
        ("{review} Was the buyer happy or sad?", ("happy", "sad")),
        ("How does the writer feel about the {obj}, good or bad? {review}", ("good", "bad")),
        ("{review} Sentiment (positive/negative):", ("positive", "negative")),
        ("{review} Did the writer like or dislike the {obj}?", ("like", "dislike")),
        ("Customer review: {review} Positive or negative?", ("positive", "negative")),
        ("{review} Is the buyer happy with it? yes or no", ("yes", "no")),
        ("Is this a good or a bad review? {review}", ("good", "bad")),
        ("{review} The buyer is happy or unhappy?", ("happy", "unhappy")),
    ), _sentiment, new_templates=new_prompts(
        ("A buyer wrote: {review} Does the buyer love or hate the {obj}?", ("love", "hate")),
        ("{review} Would you call this review great or awful?", ("great", "awful")),
        ("Is the following opinion nice or terrible? {review}", ("nice", "terrible")),
    )),
    Task("topic", "classification", make_templates(
        ("What is this sentence about? {sentence} Options: animals, weather, food, travel",
         world.TOPICS),
        ("{sentence} Topic (animals, weather, food or travel):", world.TOPICS),
        ("Choose the subject of the text (animals, weather, food, travel): {sentence}",
         world.TOPICS),
        ("{sentence} Is this about an animal, the weather, food or a trip?",
         ("animal", "weather", "food", "trip")),
        ("Classify by topic: {sentence}", world.TOPICS),
        ("{sentence} What is the topic: travel, weather, animals or food?", world.TOPICS),
        ("Topic of this text (food, animals, travel, weather): {sentence}", world.TOPICS),
        ("{sentence} Does this talk about animals, weather, food or travel?", world.TOPICS),
        ("Which subject, weather, travel, food or animals? {sentence}", world.TOPICS),
        ("{sentence} Subject: an animal, the weather, food or a trip?",
         ("animal", "weather", "food", "trip")),
    ), _topic, new_templates=new_prompts(
        ("Read the sentence and name its theme, travel, food, weather or animals: {sentence}",
         world.TOPICS),
        ("{sentence} This text talks mostly about which one: a trip, food, the weather or an "
         "animal?", ("animal", "weather", "food", "trip")),
        ("Sentence: {sentence} Label it with one of these words: food, travel, animals, "
         "weather.", world.TOPICS),
    )),
    Task("habitat", "world_fact", make_templates(
        (f"Where does a {{animal}} live? Options: {HOMES_LISTED}", world.HOMES),
        (f"{{animals}} live in the {HOMES_LISTED}?", world.HOMES),
        (f"Home of the {{animal}} ({HOMES_LISTED}):", world.HOMES),
        (f"Pick the place where {{animals}} live: {HOMES_LISTED}.", world.HOMES),
        (f"Question: the {{animal}} lives where? {HOMES_LISTED}", world.HOMES),
        ("Where do {animals} live: forest, house, sea or farm?", world.HOMES),
        ("Home of {animals}? sea, farm, house or forest", world.HOMES),
        ("A {animal} lives in the farm, forest, sea or house?", world.HOMES),
        ("{animals} live where: house, sea, farm or forest?", world.HOMES),
        ("Pick the home of the {animal} (forest, farm, house or sea).", world.HOMES),
    ), _habitat, new_templates=new_prompts(
        ("Which is the natural home of a {animal}: sea, forest, farm or house?", world.HOMES),
        ("You want to find some {animals}. Where do you look: forest, sea, house or farm?",
         world.HOMES),
        ("Name the habitat of the {animal}, one of farm, sea, house, forest.", world.HOMES),
    )),
    Task("biggest_animal", "world_fact", make_templates(
        "Which animal is the biggest: {options}?",
        "{options}. Which of these is the biggest animal?",
        "Biggest animal among {options}:",
        "Of {options}, pick the biggest.",
        "Name the biggest one: {options}",
        "{options}: which one is the biggest?",
        "Which is biggest, {options}?",
        "Pick the biggest animal. {options}",
        "Among {options}, which animal is biggest?",
        "The biggest of {options} is which?",
    ), _biggest, new_templates=new_prompts(
        "Look at these animals: {options}. Which one is largest?",
        "If you lined up {options}, which would be the biggest of the three?",
        "Tell me which animal has the largest body, {options}?",
    )),
    Task("ability", "world_fact", make_templates(
        "Which animal can {ability}: {options}?",
        "{options}: which of these can {ability}?",
        "Pick the animal that is able to {ability}: {options}.",
        "Only one of {options} can {ability}. Which?",
        "Animal that can {ability} ({options}):",
        "Which of {options} can {ability}?",
        "To {ability}: which animal can do it, {options}?",
        "Pick the one that can {ability} from {options}.",
        "Of {options}, which can {ability}?",
        "Which one can {ability}? {options}",
    ), _ability, new_templates=new_prompts(
        "Among {options}, name the one that knows how to {ability}.",
        "{options}. One of these animals can {ability}; say which.",
        "Which creature here knows how to {ability}, {options}?",
    )),
    Task("pick_by_colour", "reading", make_templates(
        "Which one is {colour}: {options}?",
        "{options}. Pick the {colour} one.",
        "Find the {colour} thing among {options}.",
        "Of {options}, which is {colour}?",
        "{colour} item ({options}):",
        "Which of {options} is {colour}?",
        "Pick the {colour} thing: {options}",
        "{options}. Which one is {colour}?",
        "The {colour} one among {options} is which?",
        "Find the {colour} one: {options}.",
    ), _pick_colour, new_templates=new_prompts(
        "Here are three things: {options}. Which of them has the colour {colour}?",
        "I want the {colour} one. Options are {options}.",
        "Point to the thing that is {colour}, from {options}.",
    )),
    Task("giver", "reading", make_templates(
        "{sentence} Who gave the {obj}? Options: {options}",
        "Name the person who gave something. {sentence} ({options})",
        "{sentence} Giver ({options}):",
        "{sentence} Which of {options} gave the {obj} away?",
        "Read: {sentence} The {obj} came from whom: {options}?",
        "{sentence} Who gave the {obj} away: {options}?",
        "Read: {sentence} Who gave it? {options}",
        "{sentence} Pick the giver from {options}.",
        "{sentence} Gave the {obj}: {options}?",
        "Who gave the {obj}, {options}? {sentence}",
    ), _giver, new_templates=new_prompts(
        "{sentence} Of {options}, who handed over the {obj}?",
        "Story: {sentence} Say who was the giver, {options}.",
        "{sentence} The one who gave it is which of these: {options}?",
    )),
    Task("place", "reading", make_templates(
        "{sentence} Where was {name}? Options: {options}",
        "Extract the place from this sentence: {sentence} ({options})",
        "{sentence} Place ({options}):",
        "{sentence} At which place was {name}: {options}?",
        "Read: {sentence} {name} was at the {options}?",
        "{sentence} Where was {name}: {options}?",
        "Read: {sentence} Which place, {options}?",
        "{sentence} {name} was where? {options}",
        "{sentence} Pick the place from {options}.",
        "Where was {name}, {options}? {sentence}",
    ), _place, new_templates=new_prompts(
        "{sentence} Name the location, one of {options}.",
        "Story: {sentence} To which of these did {name} go: {options}?",
        "{sentence} In which of these spots was {name}, {options}?",
    )),
    Task("colour", "reading", make_templates(
        "{sentence} What colour is the {obj}? Options: {options}",
        "Extract the colour from this sentence: {sentence} ({options})",
        "{sentence} The {obj} is which colour: {options}?",
        "{sentence} Colour of the {obj} ({options}):",
        "Read: {sentence} Is the {obj} {options}?",
        "{sentence} The {obj}'s colour: {options}?",
        "Read: {sentence} Colour, {options}?",
        "{sentence} The {obj} was {options}?",
        "{sentence} Pick the colour of the {obj} from {options}.",
        "What colour is the {obj}, {options}? {sentence}",
    ), _colour, new_templates=new_prompts(
        "{sentence} Tell me the colour of that {obj}, {options}.",
        "Story: {sentence} The {obj} was painted which of {options}?",
        "{sentence} Which colour, {options}, does the {obj} have?",
    )),
    Task("count", "reading", make_templates(
        "{sentence} How many {objs} did {name} find? Options: {options}",
        "Extract the number from this sentence: {sentence} ({options})",
        "{sentence} Number of {objs} ({options}):",
        "{sentence} {name} found how many {objs}: {options}?",
        "Read: {sentence} Count of {objs}, {options}?",
        "{sentence} How many {objs}: {options}?",
        "Read: {sentence} How many, {options}?",
        "{sentence} Pick the number of {objs} from {options}.",
        "How many {objs} did {name} find, {options}? {sentence}",
        "{sentence} The number is {options}?",
    ), _number, new_templates=new_prompts(
        "{sentence} What number of {objs} were found, {options}?",
        "Story: {sentence} So {name} has found which amount of {objs}: {options}?",
        "{sentence} Give the count, {options}.",
    )),
)
# fmt: on
