"""Two-way training tasks: a claim about a world fact or a scene, asked as yes/no or as a
choice between two words.

The first mixture (``suite.MIXTURES["first"]``) asked every family as "pick one of three or
four listed words", so a tuned model met "yes"/"no" only as sentiment labels and never chose
between two. Prompts written apart from the templates ask exactly that ("Do cows live on the
farm?", "bigger: the fox or the cat?") and every method answered them with one fixed label.
These families teach the formats, not new facts: each item is a claim ``{claim}`` with an
alternative ``{other}``; ``choices = (claim, other)`` and ``answer`` is 0 when the claim is
true, so a yes/no template (label 0 = yes) and a two-choice template read the same item.
Claims are true half the time, so neither label nor position answers an item.

``size_check`` asks only "bigger": "smaller" stays for table C's ``smallest_animal``.
"""

from __future__ import annotations

import random

from ..schema import Item, Task, make_templates
from . import scenes, world
from .train_tasks import new_prompts

YES_NO = ("yes", "no")
TRUE_FALSE = ("true", "false")


def _claim(rng: random.Random, right: str, wrong: list[str]) -> tuple[str, str, int]:
    """``(claim, other, answer)``: the claim is ``right`` half the time (answer 0), else a
    word of ``wrong`` with ``right`` as the other (answer 1)."""
    if rng.random() < 0.5:
        return right, rng.choice(wrong), 0
    return rng.choice(wrong), right, 1


def _item(fields: dict[str, str], claim: str, other: str, answer: int) -> Item:
    return Item({**fields, "claim": claim, "other": other}, choices=(claim, other), answer=answer)


def _home_check(rng: random.Random) -> Item:
    animal = rng.choice(world.ANIMALS)
    wrong = [h for h in world.HOMES if h != animal.home]
    fields = {"animal": animal.name, "animals": animal.plural}
    return _item(fields, *_claim(rng, animal.home, wrong))


def _ability_check(rng: random.Random) -> Item:
    """The claim is an animal able to ``ability``; the other one is not (or the reverse)."""
    ability = rng.choice(world.ABILITIES)
    can = [a.name for a in world.ANIMALS if ability in a.abilities]
    cannot = [a.name for a in world.ANIMALS if ability not in a.abilities]
    if rng.random() < 0.5:
        return _item({"ability": ability}, rng.choice(can), rng.choice(cannot), 0)
    return _item({"ability": ability}, rng.choice(cannot), rng.choice(can), 1)


def _size_check(rng: random.Random) -> Item:
    """The claim is that ``claim`` is the bigger of two animals of different sizes."""
    first, second = scenes.three_sizes(rng)[:2]
    return _item({}, first.name, second.name, 0 if first.size > second.size else 1)


def _colour_check(rng: random.Random) -> Item:
    name, colour = rng.choice(world.PEOPLE), rng.choice(world.COLOURS)
    obj, place = rng.choice(list(world.OBJECTS)), rng.choice(world.PLACES)
    sentence = f"{name} bought {scenes.article(colour)} {obj} at the {place}."
    wrong = [c for c in world.COLOURS if c != colour]
    return _item({"sentence": sentence, "obj": obj}, *_claim(rng, colour, wrong))


def _place_check(rng: random.Random) -> Item:
    name, place = rng.choice(world.PEOPLE), rng.choice(world.PLACES)
    sentence = f"{name} {rng.choice(world.ACTIVITIES)} at the {place} on {rng.choice(world.DAYS)}."
    wrong = [p for p in world.PLACES if p != place]
    return _item({"sentence": sentence, "name": name}, *_claim(rng, place, wrong))


# fmt: off
BINARY_TASKS: tuple[Task, ...] = (
    Task("home_check", "world_fact", make_templates(
        ("Do {animals} live in the {claim}? yes or no", YES_NO),
        ("Is the {claim} the home of the {animal}?", YES_NO),
        ("True or false: {animals} live in the {claim}.", TRUE_FALSE),
        "Does a {animal} live in the {claim} or in the {other}?",
        "{animals}: {claim} or {other}? Pick their home.",
    ), _home_check, new_templates=new_prompts(
        ("Answer yes or no. Is a {animal} at home in the {claim}?", YES_NO),
        ("{animals} belong in the {claim}. Right? yes or no", YES_NO),
        "Where would a {animal} be living, the {claim} or the {other}?",
    )),
    Task("ability_check", "world_fact", make_templates(
        ("Can a {claim} {ability}? yes or no", YES_NO),
        ("Is a {claim} able to {ability}?", YES_NO),
        ("True or false: a {claim} can {ability}.", TRUE_FALSE),
        "Which can {ability}, a {claim} or a {other}?",
        "{claim} or {other}: pick the one that can {ability}.",
    ), _ability_check, new_templates=new_prompts(
        ("Yes or no: does the {claim} know how to {ability}?", YES_NO),
        ("Could a {claim} {ability} if it wanted to? Answer yes or no.", YES_NO),
        "Between the {claim} and the {other}, who is able to {ability}?",
    )),
    Task("size_check", "world_fact", make_templates(
        ("Is a {claim} bigger than a {other}? yes or no", YES_NO),
        ("{claim} and {other}: is the {claim} the bigger one?", YES_NO),
        ("True or false: a {claim} is bigger than a {other}.", TRUE_FALSE),
        "Which is bigger, a {claim} or a {other}?",
        "{claim} or {other}: pick the bigger animal.",
    ), _size_check, new_templates=new_prompts(
        ("Answer yes or no. Does a {claim} have a larger body than a {other}?", YES_NO),
        ("Yes or no: next to a {other}, a {claim} looks big.", YES_NO),
        "Which animal is larger, the {claim} or the {other}?",
    )),
    Task("colour_check", "reading", make_templates(
        ("{sentence} Is the {obj} {claim}? yes or no", YES_NO),
        ("Read: {sentence} The {obj} is {claim}. Is that so?", YES_NO),
        ("{sentence} True or false: the {obj} is {claim}.", TRUE_FALSE),
        "{sentence} Is the {obj} {claim} or {other}?",
        "Read: {sentence} Colour of the {obj}, {claim} or {other}?",
    ), _colour_check, new_templates=new_prompts(
        ("Story: {sentence} Answer yes or no: was the {obj} {claim}?", YES_NO),
        ("{sentence} Yes or no, did it have the colour {claim}?", YES_NO),
        "Story: {sentence} What colour did the {obj} have, {claim} or {other}?",
    )),
    Task("place_check", "reading", make_templates(
        ("{sentence} Was {name} at the {claim}? yes or no", YES_NO),
        ("Read: {sentence} {name} was at the {claim}. Is that so?", YES_NO),
        ("{sentence} True or false: {name} was at the {claim}.", TRUE_FALSE),
        "{sentence} Was {name} at the {claim} or the {other}?",
        "Read: {sentence} Place, {claim} or {other}?",
    ), _place_check, new_templates=new_prompts(
        ("Story: {sentence} Answer yes or no: did {name} go to the {claim}?", YES_NO),
        ("{sentence} Yes or no, did this happen at the {claim}?", YES_NO),
        "Story: {sentence} Where did {name} spend the time, the {claim} or the {other}?",
    )),
)
# fmt: on
