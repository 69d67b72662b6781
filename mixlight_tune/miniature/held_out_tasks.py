"""Held-out tasks (table C): task families tuning never sees, each recombining skills the
training mixture teaches with facts the base learned in pre-training.

Nothing is tuned on these. ``docs/suite.md`` names the skills each one combines.
"""

from __future__ import annotations

import random

from ..schema import Item, Task, make_templates
from . import scenes, world


def _home_choice(rng: random.Random) -> Item:
    """habitat facts + picking one listed option (as ``ability`` does)."""
    home = rng.choice(world.HOMES)
    fits = [a.name for a in world.ANIMALS if a.home == home]
    others = [a.name for a in world.ANIMALS if a.home != home]
    options, answer = scenes.one_that_fits(rng, fits, others, 3)
    return Item({"home": home, "options": ", ".join(options)}, choices=options, answer=answer)


def _smallest(rng: random.Random) -> Item:
    """size facts, asked the other way round (``biggest_animal`` asks for the largest)."""
    picks = scenes.three_sizes(rng)
    answer = min(range(3), key=lambda i: picks[i].size)
    names = tuple(a.name for a in picks)
    return Item({"options": ", ".join(names)}, choices=names, answer=answer)


def _recommend(rng: random.Random) -> Item:
    """sentiment, as a decision about a friend."""
    r = scenes.review(rng)
    return Item({"review": r.text, "obj": r.obj}, answer=0 if r.positive else 1)


def _whose_colour(rng: random.Random) -> Item:
    """reading colours (``colour``) + naming a person (``giver``)."""
    first, second = scenes.owned_pair(rng, same_object=True)
    third = rng.choice([p for p in world.PEOPLE if p not in (first.person, second.person)])
    asked = rng.randrange(2)
    names = [first.person, second.person, third]
    rng.shuffle(names)
    fields = {
        "premise": f"{first.clause()} and {second.clause()}.",
        "obj": first.obj,
        "colour": (first, second)[asked].colour,
        "options": ", ".join(names),
    }
    return Item(fields, choices=tuple(names), answer=names.index((first, second)[asked].person))


def _seen_where(rng: random.Random) -> Item:
    """habitat facts applied to a scene: where was someone who saw this animal?"""
    animal = rng.choice(world.ANIMALS)
    fields = {"name": rng.choice(world.PEOPLE), "animal": animal.name}
    return Item(fields, answer=world.HOMES.index(animal.home))


# fmt: off
HELD_OUT_TASKS: tuple[Task, ...] = (
    Task("home_choice", "world_fact", make_templates(
        "Which one of these animals has its home in the {home}: {options}?",
        "{options}. Only one of them lives in the {home}. Which?",
        "Animals: {options}. Pick the one found in the {home}.",
    ), _home_choice, held_out=True),
    Task("smallest_animal", "world_fact", make_templates(
        "Which animal is the smallest: {options}?",
        "{options}. Which of these is the smallest animal?",
        "Of {options}, pick the tiniest.",
    ), _smallest, held_out=True),
    Task("seen_where", "world_fact", make_templates(
        ("{name} saw a {animal}. Was {name} at the house, farm, forest or sea?", world.HOMES),
        ("{name} is looking at a {animal} right now. Where is {name}: house, farm, forest or "
         "sea?", world.HOMES),
        ("Where did {name} probably meet the {animal} (house, farm, forest, sea)?", world.HOMES),
    ), _seen_where, held_out=True),
    Task("whose_colour", "reading", make_templates(
        "{premise} Whose {obj} is coloured {colour}? Options: {options}",
        "{premise} Which of {options} owns the {colour} {obj}?",
        "Read: {premise} The {colour} {obj} belongs to whom, {options}?",
    ), _whose_colour, held_out=True),
    Task("recommend", "classification", make_templates(
        ("{review} Would the writer tell a friend to buy this {obj}? yes or no", ("yes", "no")),
        ("Here is what a buyer said: {review} Was the buyer pleased, yes or no?", ("yes", "no")),
        ("{review} Should a friend buy the {obj} too, yes or no?", ("yes", "no")),
    ), _recommend, held_out=True),
)
# fmt: on
