"""A second held-out prompt set about the miniature world, in wordings the demo never uses.

Written from ``docs/suite.md``'s facts, not from the demo's templates: yes/no versions of
the facts, two-choice comparisons, and short reading questions, with label words of the
world. Answers come from the world's tables (``mixlight_tune.miniature.world``), so every
row is right by construction; each family is balanced over its answers. The set is kept out
of every selection (no learning rate or step count was picked on it) and is scored with
``mixlight demo --eval-data`` as table D::

    python scripts/held_out_prompts.py > docs/demo/held_out_prompts.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator

from mixlight_tune.miniature import world

Row = dict[str, object]
PER_FAMILY = 40


def row(task: str, inputs: str, choices: list[str], answer: str) -> Row:
    return {"inputs": inputs, "targets": answer, "answer_choices": choices, "task": task}


def homes_yes_no(rng: random.Random, truth: bool) -> Row:
    animal = rng.choice(world.ANIMALS)
    home = animal.home if truth else rng.choice([h for h in world.HOMES if h != animal.home])
    text = f"Tell me yes or no: would you expect to see {animal.plural} living in the {home}?"
    return row("homes_yes_no", text, ["yes", "no"], "yes" if truth else "no")


def homes_pick(rng: random.Random, first: bool) -> Row:
    animal = rng.choice(world.ANIMALS)
    other = rng.choice([h for h in world.HOMES if h != animal.home])
    pair = [animal.home, other] if first else [other, animal.home]
    text = f"A {animal.name} makes its home in one of these. Which: {pair[0]} or {pair[1]}?"
    return row("homes_pick", text, pair, animal.home)


def abilities_yes_no(rng: random.Random, truth: bool) -> Row:
    ability = rng.choice(world.ABILITIES)
    pool = [a for a in world.ANIMALS if (ability in a.abilities) == truth]
    animal = rng.choice(pool)
    text = f"Question about {animal.plural}: are they able to {ability}? Say yes or no."
    return row("abilities_yes_no", text, ["yes", "no"], "yes" if truth else "no")


def _two_sizes(rng: random.Random) -> tuple[world.Animal, world.Animal]:
    while True:
        a, b = rng.sample(world.ANIMALS, 2)
        if a.size != b.size:
            return a, b


def size_pick(rng: random.Random, bigger_first: bool) -> Row:
    a, b = sorted(_two_sizes(rng), key=lambda x: -x.size)
    pair = [a.name, b.name] if bigger_first else [b.name, a.name]
    text = f"Of the {pair[0]} and the {pair[1]}, which animal is the larger one?"
    return row("size_pick", text, pair, a.name)


def size_yes_no(rng: random.Random, truth: bool) -> Row:
    a, b = _two_sizes(rng)
    small, big = sorted((a, b), key=lambda x: x.size)
    x, y = (small, big) if truth else (big, small)
    text = f"True or false as yes or no: a {x.name} is smaller than a {y.name}."
    return row("size_yes_no", text, ["yes", "no"], "yes" if truth else "no")


def plural_pick(rng: random.Random, first: bool) -> Row:
    word, plural = rng.choice(sorted(world.PLURALS.items()))
    other = rng.choice([p for w, p in world.PLURALS.items() if w != word and p != plural])
    pair = [plural, other] if first else [other, plural]
    text = f"When there are several of the {word}, we say: {pair[0]} or {pair[1]}?"
    return row("plural_pick", text, pair, plural)


def parity(rng: random.Random, even: bool) -> Row:
    n = rng.choice([k for k in range(2, 21) if (k % 2 == 0) == even])
    text = f"Think of the number {n}. Can it be split into two equal whole halves? yes or no"
    return row("parity_yes_no", text, ["yes", "no"], "yes" if even else "no")


def sums(rng: random.Random, _: bool) -> Row:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    choices = [a + b, *rng.sample([k for k in range(2, 21) if k != a + b], 2)]
    rng.shuffle(choices)
    text = f"Start with {a}, then add {b} more. How many now?"
    return row("sums_pick", text, [str(c) for c in choices], str(a + b))


def opposite_pick(rng: random.Random, first: bool) -> Row:
    word, opposite = rng.choice(sorted(world.OPPOSITES.items()))
    other = rng.choice([w for w in world.OPPOSITES if w not in (word, opposite)])
    pair = [opposite, other] if first else [other, opposite]
    text = f"Which word says the reverse of '{word}': {pair[0]} or {pair[1]}?"
    return row("opposite_pick", text, pair, opposite)


def review_yes_no(rng: random.Random, liked: bool) -> Row:
    obj = rng.choice(sorted(world.OBJECTS))
    adjective = rng.choice(world.REVIEW_ADJECTIVES[liked])
    coda = rng.choice(world.REVIEW_CODAS[liked])
    text = f"Someone said about their new {obj}: 'It is {adjective}. {coda}' Were they pleased?"
    return row("review_yes_no", text, ["yes", "no"], "yes" if liked else "no")


FAMILIES: tuple[Callable[[random.Random, bool], Row], ...] = (
    homes_yes_no, homes_pick, abilities_yes_no, size_pick, size_yes_no, plural_pick,
    parity, sums, opposite_pick, review_yes_no,
)  # fmt: skip


def rows(seed: int = 2026) -> Iterator[Row]:
    """This set's rows (:func:`balanced_rows` of its families)."""
    return balanced_rows(FAMILIES, seed)


def balanced_rows(
    families: tuple[Callable[[random.Random, bool], Row], ...], seed: int
) -> Iterator[Row]:
    """Up to ``PER_FAMILY`` distinct rows of every family, as many with each answer side (a
    family with fewer distinct rows of one side, such as the animals that can fly, gives
    that many of each)."""
    rng = random.Random(seed)
    for family in families:
        seen: set[str] = set()
        sides: list[list[Row]] = [[], []]
        for side, kept in zip((True, False), sides, strict=True):
            for _ in range(PER_FAMILY * 50):
                candidate = family(rng, side)
                if candidate["inputs"] not in seen:
                    seen.add(str(candidate["inputs"]))
                    kept.append(candidate)
                if len(kept) == PER_FAMILY // 2:
                    break
        n = min(map(len, sides))
        for pair in zip(sides[0][:n], sides[1][:n], strict=True):
            yield from pair


if __name__ == "__main__":
    for r in rows():
        print(json.dumps(r))
