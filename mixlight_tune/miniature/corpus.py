"""Plain sentences about the demo world, for span-corruption pre-training.

The corpus states facts and describes scenes; it never contains a prompt, so pre-training
teaches the world (which animal lives where, what "younger" means) but no held-out template.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from . import scenes, world


def _animal_fact(rng: random.Random) -> str:
    a = rng.choice(world.ANIMALS)
    ability = rng.choice(world.ABILITIES)
    verb = "can" if ability in a.abilities else "cannot"
    name = scenes.article(a.name).capitalize()
    return rng.choice(
        [
            f"{name} lives in the {a.home}.",
            f"{a.plural.capitalize()} live in the {a.home}.",
            f"The {a.home} is the home of the {a.name}.",
            f"You can find {a.plural} in the {a.home}.",
            f"{name} {verb} {ability}.",
            f"{a.plural.capitalize()} {verb} {ability}.",
        ]
    )


def _animal_size(rng: random.Random) -> str:
    x, y = rng.sample(world.ANIMALS, 2)
    while x.size == y.size:
        y = rng.choice(world.ANIMALS)
    big, small = (x, y) if x.size > y.size else (y, x)
    if rng.random() < 0.5:
        return (
            f"{scenes.article(big.name).capitalize()} is bigger than {scenes.article(small.name)}."
        )
    return f"{scenes.article(small.name).capitalize()} is smaller than {scenes.article(big.name)}."


def _people_fact(rng: random.Random) -> str:
    a, b = rng.sample(world.PEOPLE, 2)
    n, m = sorted(scenes.two_numbers(rng, 5, 80))
    return rng.choice(
        [
            f"{a} is {m} years old and {b} is {n}, so {a} is older than {b}.",
            f"{b} is {n} years old, so {b} is younger than {a}, who is {m}.",
            f"{a} is {rng.choice(world.COMPARATIVES)} than {b}.",
            f"{a} has {m} {rng.choice(list(world.OBJECTS.values()))} and {b} has fewer.",
        ]
    )


def _scene(rng: random.Random) -> str:
    a, b = rng.sample(world.PEOPLE, 2)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    return rng.choice(
        [
            f"{scenes.owned_pair(rng)[0].clause()}.",
            f"{a} is at the {place}.",
            f"{a} gave {scenes.article(obj)} to {b} at the {place}.",
            f"{a} found {rng.randint(2, 20)} {world.OBJECTS[obj]} at the {place}.",
            f"{a} {rng.choice(world.ACTIVITIES)} at the {place} on {rng.choice(world.DAYS)}.",
            scenes.container(rng).sentence(),
            scenes.review(rng).text,
            scenes.topic_sentence(rng, rng.choice(world.TOPICS)),
        ]
    )


def _word_fact(rng: random.Random) -> str:
    word = rng.choice(sorted(world.OPPOSITES))
    noun = rng.choice(sorted(world.PLURALS))
    n, m = rng.randint(0, 12), rng.randint(0, 12)
    parity = "even" if n % 2 == 0 else "odd"
    return rng.choice(
        [
            f"The opposite of {word} is {world.OPPOSITES[word]}.",
            f"The plural of {noun} is {world.PLURALS[noun]}.",
            f"{n} plus {m} is {n + m}.",
            f"{n} is an {parity} number.",
        ]
    )


_GENERATORS: tuple[Callable[[random.Random], str], ...] = (
    _animal_fact,
    _animal_fact,
    _animal_size,
    _people_fact,
    _scene,
    _scene,
    _word_fact,
)


def pretraining_corpus(seed: int, n_sentences: int) -> list[str]:
    """``n_sentences`` plain sentences about the world, identical for the same ``seed``."""
    rng = random.Random(f"mixlight-demo-corpus:{seed}")
    return [rng.choice(_GENERATORS)(rng) for _ in range(n_sentences)]
