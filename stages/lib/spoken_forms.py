"""How a transcript token is spoken, for forced alignment: `42` -> "forty two", `2021` -> "twenty twenty
one" or "two thousand twenty one", `3.5` -> "three point five", `15%` -> "fifteen percent", `3rd` ->
"third", `COVID-19` -> "COVID nineteen". Each token keeps its own readings so that aligned times map
back to it one to one.
"""
from __future__ import annotations

import re

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}
NUMBER = re.compile(r"(\d+)(?:\.(\d+))?(%|st|nd|rd|th|s)?")


def int_words(n: int) -> list[str]:
    if n < 20:
        return [ONES[n]]
    if n < 100:
        return [TENS[n // 10]] + ([ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [ONES[n // 100], "hundred"] + (int_words(n % 100) if n % 100 else [])
    for size, name in SCALES:
        if n >= size:
            return int_words(n // size) + [name] + (int_words(n % size) if n % size else [])
    raise ValueError(n)


def year_words(n: int) -> list[str]:
    """1999 -> nineteen ninety nine, 2021 -> twenty twenty one, 1900 -> nineteen hundred."""
    high, low = divmod(n, 100)
    if low == 0:
        return int_words(high) + ["hundred"]
    if 2000 <= n < 2010:
        return int_words(n)
    return int_words(high) + (["oh"] + int_words(low) if low < 10 else int_words(low))


def _ordinal(word: str) -> str:
    return ORDINALS.get(word) or (word[:-1] + "ieth" if word.endswith("y") else word + "th")


def number_readings(token: str) -> list[list[str]] | None:
    """The ways a numeric token is read (most likely first), or None when it is not a number."""
    match = NUMBER.fullmatch(token.replace(",", ""))
    if not match:
        return None
    whole, decimals, suffix = match.groups()
    n = int(whole)
    readings = [int_words(n) if len(whole) < 16 else [ONES[int(c)] for c in whole]]
    if decimals is None and 1100 <= n <= 2099 and suffix in (None, "s"):
        readings.append(year_words(n))
    if decimals is not None:
        readings = [r + ["point"] + [ONES[int(c)] for c in decimals] for r in readings]
    if suffix == "%":
        readings = [r + ["percent"] for r in readings]
    elif suffix in ("st", "nd", "rd", "th"):
        readings = [r[:-1] + [_ordinal(r[-1])] for r in readings]
    elif suffix == "s":
        readings = [r[:-1] + [r[-1][:-1] + "ies" if r[-1].endswith("y") else r[-1] + "s"] for r in readings]
    return readings


def clean_token(token: str) -> str:
    """The token without the punctuation around it (case kept: it tells acronyms apart)."""
    return re.sub(r"^[^\w$£€]+|[^\w%]+$", "", token.strip())


def readings(token: str) -> list[list[str]]:
    """Spoken word sequences of a cleaned token: numbers spelled out, `-`, `/` and `_` split."""
    whole = number_readings(token)
    if whole:
        return whole
    out: list[list[str]] = [[]]
    for part in filter(None, re.split(r"[-/_]", token)):
        first = (number_readings(part) or [[part]])[0]
        out = [seq + first for seq in out]
    return out
