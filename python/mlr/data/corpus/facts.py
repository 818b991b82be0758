"""The project's own small fact table (made-up countries included) and the ways it is asked about.

Each relation has five question phrasings. Every fact is asked in all five; one of them, picked by a
stable hash of the fact, is held out. A held-out fact question therefore tests recall of a fact the
model trained on, in a phrasing it has not seen for that fact (a fact cannot be learned unseen).
"""

from __future__ import annotations

# A phrasing is (instruction, input); "{x}" is the subject.
Phrasing = tuple[str, str]

COLORS: dict[str, str] = {
    "a banana": "yellow", "grass": "green", "the clear sky": "blue", "fresh snow": "white",
    "coal": "black", "a ripe tomato": "red", "a carrot": "orange", "a lemon": "yellow",
    "a strawberry": "red", "milk chocolate": "brown", "milk": "white", "a pumpkin": "orange",
    "a frog": "green", "a crow": "black", "a cherry": "red", "a lime": "green", "a plum": "purple",
    "an eggplant": "purple", "a flamingo": "pink", "a polar bear": "white", "a fire truck": "red",
    "a school bus": "yellow", "a blueberry": "blue", "a tree trunk": "brown",
}

OPPOSITE_PAIRS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("loud", "quiet"),
    ("wet", "dry"), ("thick", "thin"), ("heavy", "light"), ("rich", "poor"), ("inside", "outside"),
    ("tall", "short"), ("first", "last"), ("push", "pull"), ("win", "lose"), ("buy", "sell"),
)
# Each pair is asked both ways, except where the answer would be ambiguous (short: tall or long?
# light: heavy or dark?).
OPPOSITES: dict[str, str] = {
    **{a: b for a, b in OPPOSITE_PAIRS},
    **{b: a for a, b in OPPOSITE_PAIRS if b not in ("short", "light")},
}

ANIMAL_SOUNDS: dict[str, str] = {
    "a dog": "bark", "a cat": "meow", "a cow": "moo", "a duck": "quack", "a sheep": "baa",
    "a lion": "roar", "an owl": "hoot", "a horse": "neigh", "a pig": "oink", "a bee": "buzz",
    "a snake": "hiss", "a frog": "croak", "a mouse": "squeak", "a wolf": "howl", "a donkey": "bray",
}

BABY_ANIMALS: dict[str, str] = {
    "dog": "puppy", "cat": "kitten", "cow": "calf", "sheep": "lamb", "horse": "foal",
    "duck": "duckling", "frog": "tadpole", "goat": "kid", "kangaroo": "joey", "bear": "cub",
    "swan": "cygnet", "owl": "owlet", "pig": "piglet", "deer": "fawn",
}

# Made-up countries, so no answer depends on knowledge from outside the project.
CAPITALS: dict[str, str] = {
    "Veloria": "Tamsk", "Orrindor": "Kelvath", "Quessa": "Brimholt", "Tarvania": "Ossel",
    "Mirelund": "Faxby", "Pellorin": "Drune", "Zantheria": "Ulvik", "Korrash": "Mennith",
    "Estavel": "Gorran", "Lunmark": "Pirzo", "Caddoria": "Welbrook", "Ysthene": "Narbay",
    "Brevonia": "Saltmere", "Dunhaven": "Klisso", "Framont": "Aubelle", "Galvesh": "Torrin",
    "Hollisque": "Vantee", "Irrowen": "Cobble", "Jastemar": "Ruen", "Nerovia": "Lisk",
}

RELATIONS: dict[str, tuple[dict[str, str], tuple[Phrasing, ...]]] = {
    "color": (COLORS, (
        ("What color is {x}?", ""),
        ("Name the usual color of {x}.", ""),
        ("Answer with one word: what color is {x}?", ""),
        ("What color is this?", "{x}"),
        ("Give the color of the following.", "{x}"),
    )),
    "opposite": (OPPOSITES, (
        ("What is the opposite of {x}?", ""),
        ("Give the opposite of the word.", "{x}"),
        ("Name a word that means the opposite of {x}.", ""),
        ("Answer with one word: what is the opposite of {x}?", ""),
        ("Write the antonym of the word.", "{x}"),
    )),
    "animal_sound": (ANIMAL_SOUNDS, (
        ("What sound does {x} make?", ""),
        ("What noise does {x} make?", ""),
        ("Name the sound made by {x}.", ""),
        ("Which sound does this animal make?", "{x}"),
        ("Answer with one word: what sound does {x} make?", ""),
    )),
    "baby_animal": (BABY_ANIMALS, (
        ("What is a baby {x} called?", ""),
        ("What do you call a young {x}?", ""),
        ("Name the baby of this animal.", "{x}"),
        ("Answer with one word: what is a baby {x} called?", ""),
        ("A baby {x} is called what?", ""),
    )),
    "capital": (CAPITALS, (
        ("What is the capital of {x}?", ""),
        ("Name the capital city of {x}.", ""),
        ("Which city is the capital of {x}?", ""),
        ("Give the capital of this country.", "{x}"),
        ("Answer with one word: what is the capital of {x}?", ""),
    )),
}
