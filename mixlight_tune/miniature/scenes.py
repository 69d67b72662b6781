"""Sentence builders over the world, shared by training tasks, held-out tasks and the corpus.

Each builder draws everything it needs from the ``rng`` it is given, so the callers stay
deterministic. Sharing the builders is what makes held-out tasks reachable: a held-out task
poses a new question about a scene the model has already learned to read.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from . import world


def article(word: str) -> str:
    """``word`` with its indefinite article ("a cup", "an owl")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def join_and(words: Sequence[str]) -> str:
    """English list: "x", "x and y", "x, y and z"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def one_that_fits(
    rng: random.Random, fits: Sequence[str], others: Sequence[str], k: int
) -> tuple[tuple[str, ...], int]:
    """Shuffle one word from ``fits`` among ``k - 1`` from ``others``; return (options, index)."""
    good = rng.choice(list(fits))
    options = [good, *rng.sample([w for w in others if w != good], k - 1)]
    rng.shuffle(options)
    return tuple(options), options.index(good)


def three_sizes(rng: random.Random) -> tuple[world.Animal, ...]:
    """Three animals of three different sizes, in random order."""
    sizes = rng.sample(sorted({a.size for a in world.ANIMALS}), 3)
    picks = [rng.choice([a for a in world.ANIMALS if a.size == s]) for s in sizes]
    rng.shuffle(picks)
    return tuple(picks)


def two_numbers(rng: random.Random, low: int, high: int) -> tuple[int, int]:
    """Two distinct integers from ``[low, high]`` in random order."""
    a, b = rng.sample(range(low, high + 1), 2)
    return a, b


@dataclass(frozen=True)
class Review:
    """A short product review and its sentiment."""

    text: str
    obj: str
    positive: bool


def review(rng: random.Random) -> Review:
    """A two-sentence review of a coloured object bought somewhere, positive or not."""
    positive = rng.random() < 0.5
    obj = rng.choice(list(world.OBJECTS))
    colour = rng.choice(world.COLOURS)
    place = rng.choice(world.PLACES)
    adjective = rng.choice(world.REVIEW_ADJECTIVES[positive])
    coda = rng.choice(world.REVIEW_CODAS[positive])
    text = f"The {colour} {obj} I got at the {place} is {adjective}. {coda}"
    return Review(text, obj, positive)


@dataclass(frozen=True)
class Owned:
    """A person holding a coloured object."""

    person: str
    colour: str
    obj: str

    def clause(self) -> str:
        """ "Anna has a red cup" (no final period)."""
        return f"{self.person} has {article(self.colour)} {self.obj}"


def owned_pair(rng: random.Random, same_object: bool = False) -> tuple[Owned, Owned]:
    """Two people with objects of distinct colours (the same object kind if asked)."""
    a, b = rng.sample(world.PEOPLE, 2)
    c1, c2 = rng.sample(world.COLOURS, 2)
    o1, o2 = rng.sample(list(world.OBJECTS), 2)
    return Owned(a, c1, o1), Owned(b, c2, o1 if same_object else o2)


def false_variant(rng: random.Random, fact: Owned, pair: tuple[Owned, Owned]) -> Owned:
    """A possession claim contradicting ``pair`` obtained by changing one detail of ``fact``."""
    other = pair[1] if fact is pair[0] else pair[0]
    colours = [c for c in world.COLOURS if c != fact.colour]
    if rng.random() < 0.5:
        return Owned(fact.person, rng.choice(colours), fact.obj)
    return Owned(other.person, fact.colour, fact.obj)


@dataclass(frozen=True)
class Container:
    """A container and the objects in it."""

    name: str
    items: tuple[str, ...]

    def sentence(self) -> str:
        """ "The bag holds a pen, a cup and a key." """
        return f"The {self.name} holds {join_and([article(i) for i in self.items])}."

    def absent(self, rng: random.Random) -> str:
        """An object that is not in the container."""
        return rng.choice([o for o in world.OBJECTS if o not in self.items and o != self.name])


def container(rng: random.Random, k: int = 3) -> Container:
    """A container holding ``k`` distinct objects."""
    name = rng.choice(world.CONTAINERS)
    return Container(name, tuple(rng.sample([o for o in world.OBJECTS if o != name], k)))


def topic_sentence(rng: random.Random, topic: str) -> str:
    """A sentence about one of ``world.TOPICS``."""
    name = rng.choice(world.PEOPLE)
    if topic == "animals":
        animal = rng.choice(world.ANIMALS)
        return f"{name} saw {article(animal.name)} near the {rng.choice(world.PLACES)}."
    if topic == "weather":
        return f"There was {rng.choice(world.WEATHER)} all day on {rng.choice(world.DAYS)}."
    if topic == "food":
        first, second = rng.sample(world.FOODS, 2)
        return f"{name} cooked {first} with {second} for dinner."
    return f"{name} took the {rng.choice(world.VEHICLES)} to {rng.choice(world.CITIES)}."
