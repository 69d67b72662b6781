"""Fact probes: does the base model know the world before any tuning?

Each probe is the start of a sentence the pre-training corpus states (the prefix-LM half of
pre-training continues such text), scored by rank classification over the continuations the
fact allows ("Cows live in the" -> "farm." or "sea." ...). A base that only knows sentence
form scores at chance; the results report each family's accuracy beside its chance level.
"""

from __future__ import annotations

import random

from ..schema import Example
from . import scenes, world


def _probe(family: str, text: str, choices: tuple[str, ...], answer: str) -> Example:
    return Example(family, "probe", text, answer, choices, choices.index(answer))


def _home(rng: random.Random) -> Example:
    a = rng.choice(world.ANIMALS)
    if rng.random() < 0.5:
        text = f"{scenes.article(a.name).capitalize()} lives in the"
    else:
        text = f"{a.plural.capitalize()} live in the"
    return _probe("probe_home", text, tuple(f"{h}." for h in world.HOMES), f"{a.home}.")


def _ability(rng: random.Random) -> Example:
    a = rng.choice([a for a in world.ANIMALS if len(a.abilities) == 1])
    text = f"{scenes.article(a.name).capitalize()} can"
    choices = tuple(f"{b}." for b in world.ABILITIES)
    return _probe("probe_ability", text, choices, f"{next(iter(a.abilities))}.")


def _size(rng: random.Random) -> Example:
    x, y = rng.sample(list(world.ANIMALS), 2)
    while x.size == y.size:
        y = rng.choice(world.ANIMALS)
    other = scenes.article(y.name)
    choices = (f"bigger than {other}.", f"smaller than {other}.")
    text = f"{scenes.article(x.name).capitalize()} is"
    return _probe("probe_size", text, choices, choices[0 if x.size > y.size else 1])


def _feeling(rng: random.Random) -> Example:
    r = scenes.review(rng)
    first = r.text.split(". ")[0]
    answer = "I love it." if r.positive else "I hate it."
    return _probe("probe_feeling", f"{first}.", ("I love it.", "I hate it."), answer)


PROBES = (_home, _ability, _size, _feeling)
CHANCE = {"probe_home": 1 / 4, "probe_ability": 1 / 3, "probe_size": 1 / 2, "probe_feeling": 1 / 2}


def fact_probes(seed: int, per_family: int) -> list[Example]:
    """``per_family`` probes of every family, identical for the same ``seed``."""
    out = []
    for make in PROBES:
        rng = random.Random(f"mixlight-demo-probe:{seed}:{make.__name__}")
        out += [make(rng) for _ in range(per_family)]
    return out
