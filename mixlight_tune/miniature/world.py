"""The synthetic world behind the demo suite: a fixed, modest vocabulary and a few facts.

Everything here is constant data. Task generators (``train_tasks``, ``held_out_tasks``) and
the pre-training corpus (``corpus``) draw from it through ``scenes``, so the model meets the
same names, objects and facts during span-corruption pre-training and instruction tuning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Animal:
    """An animal and its fixed facts: plural, home, abilities, and a size rank (1 = tiny)."""

    name: str
    plural: str
    home: str
    abilities: frozenset[str]
    size: int


def _animal(name: str, plural: str, home: str, abilities: str, size: int) -> Animal:
    return Animal(name, plural, home, frozenset(abilities.split()), size)


ANIMALS: tuple[Animal, ...] = (
    _animal("cat", "cats", "house", "climb", 2),
    _animal("dog", "dogs", "house", "swim", 3),
    _animal("mouse", "mice", "house", "climb", 1),
    _animal("cow", "cows", "farm", "", 5),
    _animal("pig", "pigs", "farm", "", 4),
    _animal("sheep", "sheep", "farm", "", 4),
    _animal("goose", "geese", "farm", "fly swim", 2),
    _animal("horse", "horses", "farm", "swim", 5),
    _animal("fox", "foxes", "forest", "", 3),
    _animal("bear", "bears", "forest", "climb swim", 5),
    _animal("owl", "owls", "forest", "fly", 2),
    _animal("squirrel", "squirrels", "forest", "climb", 1),
    _animal("monkey", "monkeys", "forest", "climb", 3),
    _animal("fish", "fish", "sea", "swim", 1),
    _animal("crab", "crabs", "sea", "swim", 1),
    _animal("seal", "seals", "sea", "swim", 4),
    _animal("whale", "whales", "sea", "swim", 6),
)
HOMES: tuple[str, ...] = ("house", "farm", "forest", "sea")
ABILITIES: tuple[str, ...] = ("fly", "swim", "climb")

PEOPLE: tuple[str, ...] = (
    "Anna", "Ben", "Carl", "Dana", "Emma", "Finn", "Gina", "Hugo", "Ivy", "Jack",
    "Kate", "Liam", "Mia", "Noah", "Omar", "Paul", "Rosa", "Sam", "Tina", "Zoe",
)  # fmt: skip
COLOURS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown",
)  # fmt: skip
# Countable objects with their plurals.
OBJECTS: dict[str, str] = {
    "ball": "balls", "box": "boxes", "cup": "cups", "hat": "hats", "book": "books",
    "lamp": "lamps", "chair": "chairs", "bag": "bags", "pen": "pens", "kite": "kites",
    "clock": "clocks", "shoe": "shoes", "coat": "coats", "ring": "rings", "key": "keys",
    "bottle": "bottles", "brush": "brushes", "dress": "dresses", "watch": "watches",
}  # fmt: skip
CONTAINERS: tuple[str, ...] = ("bag", "box", "basket", "drawer", "car")
PLACES: tuple[str, ...] = (
    "park", "school", "market", "library", "beach", "garden", "station", "cinema",
    "museum", "bakery", "zoo", "office",
)  # fmt: skip
ACTIVITIES: tuple[str, ...] = (
    "read a book", "ate lunch", "met a friend", "played chess", "sang a song",
    "drew a picture", "waited for a bus", "wrote a letter",
)  # fmt: skip
DAYS: tuple[str, ...] = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)  # fmt: skip

# Plurals of words that are not objects or animals (irregular ones on purpose).
EXTRA_PLURALS: dict[str, str] = {
    "child": "children", "man": "men", "woman": "women", "foot": "feet", "tooth": "teeth",
    "city": "cities", "baby": "babies", "leaf": "leaves", "knife": "knives", "bus": "buses",
}  # fmt: skip
PLURALS: dict[str, str] = {
    **OBJECTS,
    **{a.name: a.plural for a in ANIMALS},
    **EXTRA_PLURALS,
}

_OPPOSITE_PAIRS: tuple[tuple[str, str], ...] = (
    ("big", "small"), ("hot", "cold"), ("fast", "slow"), ("happy", "sad"),
    ("tall", "short"), ("old", "young"), ("open", "closed"), ("light", "dark"),
    ("early", "late"), ("full", "empty"), ("loud", "quiet"), ("wet", "dry"),
    ("hard", "soft"), ("clean", "dirty"), ("strong", "weak"), ("near", "far"),
    ("thick", "thin"), ("sweet", "sour"), ("high", "low"), ("up", "down"),
)  # fmt: skip
OPPOSITES: dict[str, str] = {
    **dict(_OPPOSITE_PAIRS),
    **{b: a for a, b in _OPPOSITE_PAIRS},
}

# Comparative relations used in relational facts ("Anna is taller than Ben").
COMPARATIVES: tuple[str, ...] = ("taller", "older", "faster", "stronger")

# Review vocabulary: each sentiment has its own adjectives and closing remarks.
REVIEW_ADJECTIVES: dict[bool, tuple[str, ...]] = {
    True: ("great", "lovely", "wonderful", "excellent", "perfect", "amazing", "nice"),
    False: ("awful", "terrible", "horrible", "broken", "useless", "boring", "ugly"),
}
REVIEW_CODAS: dict[bool, tuple[str, ...]] = {
    True: ("I love it.", "I would buy it again.", "It made my day.", "Worth every coin."),
    False: ("I hate it.", "I want my money back.", "Never again.", "It was a waste."),
}

# Topic vocabulary for the topic-classification task.
TOPICS: tuple[str, ...] = ("animals", "weather", "food", "travel")
FOODS: tuple[str, ...] = ("apples", "bread", "cake", "soup", "rice", "cheese", "eggs", "pasta")
WEATHER: tuple[str, ...] = ("rain", "snow", "wind", "sunshine", "fog", "storms")
VEHICLES: tuple[str, ...] = ("train", "bus", "plane", "ship", "bike", "taxi")
CITIES: tuple[str, ...] = ("Paris", "Rome", "Oslo", "Cairo", "Lima", "Tokyo")

# Word categories for odd-one-out: each category is a pool of interchangeable words.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "colours": COLOURS,
    "animals": tuple(a.name for a in ANIMALS),
    "objects": tuple(OBJECTS),
    "places": PLACES,
    "foods": FOODS,
}
