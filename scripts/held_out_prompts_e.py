"""A third held-out prompt set (table E), written before any run of the wide mixture.

The two-way training tasks were designed after table D showed yes/no prompts answered with
one label, so D's yes/no families no longer test a format tuning never saw. This set was
written from ``docs/suite.md`` before the wide mixture was scored, in wordings and label
words of neither the templates nor set D: right/wrong and satisfied/disappointed verdicts,
"weighs more", two-choice homes and topics, and reading questions the mixture never asks
(who received, on which day, how many as yes/no). Answers come from the world's tables;
each family is balanced over its answers. It is kept out of every selection and scored
with ``mixlight demo --eval-data`` (after set D: table E)::

    python scripts/held_out_prompts_e.py > docs/demo/held_out_prompts_e.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from held_out_prompts import Row, balanced_rows, row

from mixlight_tune.miniature import scenes, world


def _animal_pair(rng: random.Random, fits: Callable[[world.Animal], bool]) -> tuple[str, str]:
    """(an animal that fits, one that does not)."""
    yes = rng.choice([a for a in world.ANIMALS if fits(a)])
    no = rng.choice([a for a in world.ANIMALS if not fits(a)])
    return yes.name, no.name


def _ordered(pair: tuple[str, str], first: bool) -> list[str]:
    return list(pair) if first else [pair[1], pair[0]]


def home_right_wrong(rng: random.Random, truth: bool) -> Row:
    animal = rng.choice(world.ANIMALS)
    home = animal.home if truth else rng.choice([h for h in world.HOMES if h != animal.home])
    text = f"Someone claims that {animal.plural} make their homes in the {home}. Right or wrong?"
    return row("home_right_wrong", text, ["right", "wrong"], "right" if truth else "wrong")


def home_visit_two(rng: random.Random, first: bool) -> Row:
    animal = rng.choice(world.ANIMALS)
    other = rng.choice([h for h in world.HOMES if h != animal.home])
    pair = _ordered((animal.home, other), first)
    text = (
        f"If you wanted to watch {animal.plural}, would you go to the {pair[0]} or the {pair[1]}?"
    )
    return row("home_visit_two", text, pair, animal.home)


def ability_possible(rng: random.Random, truth: bool) -> Row:
    ability = rng.choice(world.ABILITIES)
    animal = rng.choice([a for a in world.ANIMALS if (ability in a.abilities) == truth])
    text = f"Is it possible for a {animal.name} to {ability}? Reply yes or no."
    return row("ability_possible", text, ["yes", "no"], "yes" if truth else "no")


def ability_name_two(rng: random.Random, first: bool) -> Row:
    ability = rng.choice(world.ABILITIES)
    pair = _animal_pair(rng, lambda a: ability in a.abilities)
    options = _ordered(pair, first)
    text = f"The {options[0]} and the {options[1]}: only one is able to {ability}. Name it."
    return row("ability_name_two", text, options, pair[0])


def _sized(rng: random.Random) -> tuple[world.Animal, world.Animal]:
    """(the bigger, the smaller) of two animals of different sizes."""
    a, b = scenes.three_sizes(rng)[:2]
    return (a, b) if a.size > b.size else (b, a)


def larger_yes_no(rng: random.Random, truth: bool) -> Row:
    big, small = _sized(rng)
    x, y = (big, small) if truth else (small, big)
    text = f"Would a {x.name} look larger than a {y.name}? yes or no"
    return row("larger_yes_no", text, ["yes", "no"], "yes" if truth else "no")


def weighs_more_two(rng: random.Random, first: bool) -> Row:
    big, small = _sized(rng)
    pair = _ordered((big.name, small.name), first)
    text = f"Who weighs more, a {pair[0]} or a {pair[1]}?"
    return row("weighs_more_two", text, pair, big.name)


def receiver_two(rng: random.Random, first: bool) -> Row:
    giver, taker = rng.sample(world.PEOPLE, 2)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    pair = _ordered((taker, giver), first)
    text = (
        f"{giver} gave {scenes.article(obj)} to {taker} at the {place}. "
        f"Who received the {obj}, {pair[0]} or {pair[1]}?"
    )
    return row("receiver_two", text, pair, taker)


def day_two(rng: random.Random, first: bool) -> Row:
    name, place = rng.choice(world.PEOPLE), rng.choice(world.PLACES)
    day, other = rng.sample(world.DAYS, 2)
    pair = _ordered((day, other), first)
    text = (
        f"{name} {rng.choice(world.ACTIVITIES)} at the {place} on {day}. "
        f"Was that on {pair[0]} or on {pair[1]}?"
    )
    return row("day_two", text, pair, day)


def colour_reply(rng: random.Random, truth: bool) -> Row:
    name, colour = rng.choice(world.PEOPLE), rng.choice(world.COLOURS)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    asked = colour if truth else rng.choice([c for c in world.COLOURS if c != colour])
    text = (
        f"{name} bought {scenes.article(colour)} {obj} at the {place}. "
        f"Question: was the {obj} {asked}? Reply yes or no."
    )
    return row("colour_reply", text, ["yes", "no"], "yes" if truth else "no")


def count_yes_no(rng: random.Random, truth: bool) -> Row:
    name, n = rng.choice(world.PEOPLE), rng.randint(2, 20)
    objs, place = rng.choice(list(world.OBJECTS.values())), rng.choice(world.PLACES)
    k = n if truth else rng.choice([m for m in range(2, 21) if m != n])
    text = f"{name} found {n} {objs} at the {place}. Were there {k} of them? yes or no"
    return row("count_yes_no", text, ["yes", "no"], "yes" if truth else "no")


def review_verdict(rng: random.Random, liked: bool) -> Row:
    obj = rng.choice(sorted(world.OBJECTS))
    adjective = rng.choice(world.REVIEW_ADJECTIVES[liked])
    coda = rng.choice(world.REVIEW_CODAS[liked])
    text = f"A shopper wrote: 'My {obj} is {adjective}. {coda}' Satisfied or disappointed?"
    return row(
        "review_verdict",
        text,
        ["satisfied", "disappointed"],
        "satisfied" if liked else "disappointed",
    )


def topic_two(rng: random.Random, first: bool) -> Row:
    topic, other = rng.sample(world.TOPICS, 2)
    pair = _ordered((topic, other), first)
    text = f"{scenes.topic_sentence(rng, topic)} Is this text about {pair[0]} or {pair[1]}?"
    return row("topic_two", text, pair, topic)


FAMILIES: tuple[Callable[[random.Random, bool], Row], ...] = (
    home_right_wrong, home_visit_two, ability_possible, ability_name_two, larger_yes_no,
    weighs_more_two, receiver_two, day_two, colour_reply, count_yes_no, review_verdict,
    topic_two,
)  # fmt: skip


if __name__ == "__main__":
    for r in balanced_rows(FAMILIES, seed=2027):
        print(json.dumps(r))
