"""Held-out tasks: new questions, templates and answer choices over familiar scenes.

Tuning never sees these templates; each task recombines skills the training mixture teaches
(see ``docs/suite.md`` for the skill each one relies on). Every example is a
rank-classification item.
"""

from __future__ import annotations

import random

from . import scenes, world
from ..schema import Item, Task, make_templates


def _claim_check(rng: random.Random) -> Item:
    pair = scenes.owned_pair(rng)
    places = rng.sample(world.PLACES, 3)
    premise = " ".join(
        f"{o.person} is at the {p} with {scenes.article(o.colour)} {o.obj}."
        for o, p in zip(pair, places[:2], strict=True)
    )
    holds = rng.random() < 0.5
    who = rng.randrange(2)
    if rng.random() < 0.5:
        place = places[who] if holds else rng.choice([places[1 - who], places[2]])
        claim = f"{pair[who].person} is at the {place}"
    else:
        claim = (pair[who] if holds else scenes.false_variant(rng, pair[who], pair)).clause()
    return Item({"premise": premise, "claim": claim}, answer=0 if holds else 1)


def _younger(rng: random.Random) -> Item:
    a, b = rng.sample(world.PEOPLE, 2)
    n, m = scenes.two_numbers(rng, 5, 80)
    return Item({"a": a, "b": b, "n": str(n), "m": str(m)}, choices=(a, b), answer=int(m < n))


def _home_choice(rng: random.Random) -> Item:
    home = rng.choice(world.HOMES)
    fits = [a.name for a in world.ANIMALS if a.home == home]
    others = [a.name for a in world.ANIMALS if a.home != home]
    options, answer = scenes.one_that_fits(rng, fits, others, 3)
    return Item({"home": home, "options": ", ".join(options)}, choices=options, answer=answer)


def _who_has_more(rng: random.Random) -> Item:
    a, b = rng.sample(world.PEOPLE, 2)
    n, m = scenes.two_numbers(rng, 1, 20)
    fields = {
        "a": a,
        "b": b,
        "n": str(n),
        "m": str(m),
        "objs": rng.choice(list(world.OBJECTS.values())),
    }
    return Item(fields, choices=(a, b), answer=int(m > n))


def _which_inside(rng: random.Random) -> Item:
    box = scenes.container(rng)
    inside, outside = rng.choice(box.items), box.absent(rng)
    choices = (inside, outside) if rng.random() < 0.5 else (outside, inside)
    fields = {
        "contents": box.sentence(),
        "items": ", ".join(box.items),
        "container": box.name,
        "x": choices[0],
        "y": choices[1],
    }
    return Item(fields, choices=choices, answer=choices.index(inside))


def _recommend(rng: random.Random) -> Item:
    r = scenes.review(rng)
    return Item({"review": r.text, "obj": r.obj}, answer=0 if r.positive else 1)


def _whose_colour(rng: random.Random) -> Item:
    first, second = scenes.owned_pair(rng, same_object=True)
    asked = rng.randrange(2)
    fields = {
        "a": first.person,
        "b": second.person,
        "c1": first.colour,
        "c2": second.colour,
        "c1_article": scenes.article(first.colour),
        "c2_article": scenes.article(second.colour),
        "obj": first.obj,
        "objs": world.OBJECTS[first.obj],
        "colour": (first, second)[asked].colour,
    }
    return Item(fields, choices=(first.person, second.person), answer=asked)


# fmt: off
HELD_OUT_TASKS: tuple[Task, ...] = (
    Task("claim_check", "entailment", make_templates(
        ("Suppose {premise} Can we infer that {claim}?", ("yes", "no")),
        ("Read: {premise} Claim: {claim}. Is the claim correct?", ("correct", "incorrect")),
        ("{premise} Given only these facts, is this true or false: {claim}?", ("true", "false")),
    ), _claim_check, held_out=True),
    Task("younger_of_two", "comparison", make_templates(
        "{a} turned {n} this year, while {b} turned {m}. Which of them is younger?",
        "Between {a} (age {n}) and {b} (age {m}), who is the younger one?",
        "Who is younger: {a}, aged {n}, or {b}, aged {m}?",
    ), _younger, held_out=True),
    Task("animal_home_choice", "multiple_choice", make_templates(
        "Which one of these animals has its home in the {home}: {options}?",
        "{options}. Only one of them makes its home in the {home}. Which?",
        "Animals: {options}. Pick the one found in the {home}.",
    ), _home_choice, held_out=True),
    Task("who_has_more", "comparison", make_templates(
        "{a} owns {n} {objs}, and {b} owns {m}. Who owns more {objs}?",
        "Count check: {a} with {n} {objs}, {b} with {m} {objs}. Which person has more?",
        "If {a} keeps {n} {objs} and {b} keeps {m}, who has the larger number of {objs}?",
    ), _who_has_more, held_out=True),
    Task("which_is_inside", "entailment", make_templates(
        "{contents} Which of the two is inside the {container}: the {x} or the {y}?",
        "Look inside the {container}: {items}. One of {x} and {y} is there. Which one?",
        "{contents} Name the item you would find in the {container}, {x} or {y}.",
    ), _which_inside, held_out=True),
    Task("recommend_review", "classification", make_templates(
        ("{review} Would the writer tell a friend to buy this {obj}?", ("yes", "no")),
        ("Here is what a buyer said: {review} Was the buyer pleased?", ("yes", "no")),
        ("{review} Overall, the feeling of this buyer is", ("positive", "negative")),
    ), _recommend, held_out=True),
    Task("whose_colour", "extraction", make_templates(
        "{a} carries {c1_article} {obj} and {b} carries {c2_article} {obj}. "
        "Tell me whose {obj} is {colour}.",
        "There are two {objs}. {a} owns {c1_article} one and {b} owns {c2_article} one. "
        "Which person has the {colour} one?",
        "Who is the owner of the {colour} {obj}, {a} or {b}? "
        "Note: {a}'s {obj} is {c1}, {b}'s is {c2}.",
    ), _whose_colour, held_out=True),
)
# fmt: on
