"""Successor sequences and curated succession prompts (data), and the token-level successor map.

Six categories of ordered sequences, each one or more lists in their standard order (facts):
days of the week and months (cyclic: Sunday -> Monday, December -> January), numbers as words
(one .. twenty), ordinals (first .. tenth), letters (A .. Z and a .. z) and numerals (0 .. 2100,
which covers the years).

Curated prompts come from two places:

* the original L1H5 repository's succession test cases (``create_succession_test_cases`` in
  ``skew_ablation.py`` of github.com/Mamiglia/deep-dive-L1H5, commit
  ffce6df3b83b3c04be1971206a63415499ea0a61, 2025-06-16), the ones that belong to the six
  categories, regrouped by category (its colour, pronoun, country, Roman-numeral and "mixed"
  lists are not successions of a standard sequence and are left out);
* generated from the sequences: "a, b," -> " c" for every three consecutive elements
  (:func:`generated_cases`).

Every answer is meant to be one GPT-2 token with its leading space; the script drops (and
reports) any case whose answer is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

ORIGINAL_SOURCE = ("github.com/Mamiglia/deep-dive-L1H5, skew_ablation.py (create_succession_test_cases), "
                   "commit ffce6df3b83b3c04be1971206a63415499ea0a61")


@dataclass(frozen=True)
class Sequence:
    items: tuple[str, ...]
    cyclic: bool = False
    prompts: bool = True  # generate curated prompts from it (False: only for mining text)


_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty").split()
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

SEQUENCES: dict[str, tuple[Sequence, ...]] = {
    "days": (Sequence(tuple("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()), cyclic=True),),
    "months": (Sequence(tuple("January February March April May June July August September October "
                              "November December".split()), cyclic=True),),
    "number_words": (Sequence(tuple(_WORDS)), Sequence(tuple(w.capitalize() for w in _WORDS), prompts=False)),
    "ordinals": (Sequence(tuple(_ORDINALS)), Sequence(tuple(w.capitalize() for w in _ORDINALS), prompts=False)),
    "letters": (Sequence(tuple(_LETTERS)), Sequence(tuple(_LETTERS.lower()))),
    "digits": (Sequence(tuple(str(i) for i in range(2101))),),
}
CATEGORY_NAMES = tuple(SEQUENCES)

# The original's test cases (prompt, answer) in the six categories, regrouped (source above).
ORIGINAL_CASES: dict[str, list[tuple[str, str]]] = {
    "days": [
        ("Monday, Tuesday,", " Wednesday"), ("Wednesday, Thursday,", " Friday"), ("Friday, Saturday,", " Sunday"),
        ("Sunday, Monday,", " Tuesday"), ("Tuesday, Wednesday, Thursday,", " Friday"),
        ("On Monday and Tuesday, then", " Wednesday"), ("From Monday to Tuesday to", " Wednesday"),
        ("Last Monday, this Tuesday, next", " Wednesday"), ("Mon, Tue,", " Wed"), ("Thu, Fri,", " Sat"),
    ],
    "months": [
        ("January, February,", " March"), ("March, April,", " May"), ("May, June,", " July"),
        ("September, October,", " November"), ("October, November,", " December"),
        ("December, January,", " February"), ("In January and February, then", " March"),
        ("From June to July to", " August"), ("Jan, Feb,", " Mar"), ("Apr, May,", " Jun"), ("Jul, Aug,", " Sep"),
        ("Oct, Nov,", " Dec"),
    ],
    "number_words": [
        ("Chapter one, chapter two, chapter", " three"), ("Round one, round two, round", " three"),
        ("One, two,", " three"), ("Twenty, thirty,", " forty"), ("Fifty, sixty,", " seventy"),
    ],
    "ordinals": [
        ("The first, second, and", " third"), ("First place, second place,", " third"),
        ("First, second,", " third"), ("Primary, secondary,", " tertiary"),
    ],
    "letters": [
        ("A, B,", " C"), ("B, C,", " D"), ("X, Y,", " Z"), ("a, b,", " c"), ("d, e,", " f"),
        ("Option A, Option B, Option", " C"), ("Plan A, Plan B, Plan", " C"),
        ("Section a, section b, section", " c"), ("Part (a), part (b), part", " (c)"),
        ("Point A, Point B, Point", " C"), ("Step A, Step B, Step", " C"),
    ],
    "digits": [
        ("Grade 1, Grade 2, Grade", " 3"), ("Season 1, Season 2, Season", " 3"), ("1, 2,", " 3"), ("2, 3,", " 4"),
        ("5, 6,", " 7"), ("8, 9,", " 10"), ("10, 11,", " 12"), ("2015, 2016,", " 2017"), ("2020, 2021,", " 2022"),
        ("10, 20,", " 30"), ("5, 10,", " 15"), ("100, 200,", " 300"), ("The years 2010, 2011,", " 2012"),
        ("Ages 5, 6,", " 7"), ("Rooms 101, 102,", " 103"), ("Page 1, page 2, page", " 3"),
        ("Chapter 1, Chapter 2, Chapter", " 3"), ("Volume 1, Volume 2, Volume", " 3"),
    ],
}

# How far the generated "a, b," -> " c" cases go into each sequence (numerals: 0 .. 21 only; the
# rest of the numeral sequence is there for mining years and page ranges from text).
GENERATED_LIMIT = {"digits": 22}


def generated_cases(category: str) -> list[tuple[str, str]]:
    """"a, b," -> " c" for every three consecutive elements of the category's prompt sequences
    (wrapping around for cyclic ones; the capitalised number words and ordinals are for mining only)."""
    out = []
    for seq in SEQUENCES[category]:
        if not seq.prompts:
            continue
        items = seq.items[: GENERATED_LIMIT.get(category, len(seq.items))]
        n = len(items)
        stop = n if seq.cyclic else n - 2
        for i in range(stop):
            a, b, c = (items[(i + k) % n] for k in range(3))
            out.append((f"{a}, {b},", f" {c}"))
    return out


def curated_cases(categories: list[str]) -> list[tuple[str, str, str, str]]:
    """(category, prompt, answer, origin) for ``categories``: the original's cases, then the
    generated ones not already among them. ``origin`` is "original" or "generated"."""
    unknown = [c for c in categories if c not in SEQUENCES]
    if unknown:
        raise KeyError(f"unknown category {unknown[0]!r}: choose from {', '.join(CATEGORY_NAMES)}")
    out, seen = [], set()
    for cat in categories:
        for origin, cases in (("original", ORIGINAL_CASES[cat]), ("generated", generated_cases(cat))):
            for prompt, answer in cases:
                if (prompt, answer) not in seen:
                    seen.add((prompt, answer))
                    out.append((cat, prompt, answer, origin))
    return out


class Element(NamedTuple):
    """Where a token sits in the successor sequences."""

    category: str
    sequence: int  # running number over all sequences of the chosen categories
    position: int
    length: int
    cyclic: bool


def successor_index(tokenizer, categories: list[str]) -> dict[int, Element]:
    """token id -> :class:`Element` for every element of the categories' sequences that is one
    GPT-2 token, with a leading space and without one (the first spelling listed wins a clash).
    Token b succeeds token a when both are in one sequence and b's position is a's + 1 (modulo
    the length for a cyclic sequence: Sunday -> Monday)."""
    index: dict[int, Element] = {}
    seq_no = 0
    for cat in categories:
        for seq in SEQUENCES[cat]:
            for pos, item in enumerate(seq.items):
                for text in (" " + item, item):
                    ids = tokenizer.encode(text, add_special_tokens=False)
                    if len(ids) == 1 and ids[0] not in index:
                        index[ids[0]] = Element(cat, seq_no, pos, len(seq.items), seq.cyclic)
            seq_no += 1
    return index


# Tokens allowed between two elements of a mined succession ("Monday, Tuesday", "Monday and
# Tuesday", "1990 - 1991", WikiText's " @-@ " and " , "); at most MAX_GAP of them.
SEPARATORS = (",", " ,", " and", " or", " to", " through", " then", " until", " till", "-", " -", "–", " –",
              "—", " —", "/", " /", " &", " @", "@")
MAX_GAP = 3
