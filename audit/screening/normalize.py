"""The form of a text that look-alike characters cannot disguise, screened beside the text itself.

Swapping Latin letters for Cyrillic or Greek look-alikes ("bоmb" with a Cyrillic о), fullwidth
forms or invisible format characters changes a text's tokens without changing what a reader sees,
and walks a harmful request past probes trained on ordinary spelling. :func:`canonical_text`
undoes that: Unicode NFKC (fullwidth and compatibility forms), format characters removed
(zero-width spaces and joiners, the byte-order mark, soft hyphens), and look-alike letters mapped
to Latin in every word that mixes scripts, or in the whole text when most of its letters are
Latin. A text written in Cyrillic or Greek keeps its own letters.
"""

from __future__ import annotations

import re
import unicodedata

# Cyrillic and Greek letters a reader takes for Latin ones (after NFKC; lower and upper case).
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j",
        "ӏ": "l", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y",
        "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K",
        "М": "M", "О": "O", "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y", "Ԝ": "W",
        # Greek
        "α": "a", "ι": "i", "ν": "v", "ο": "o", "ρ": "p", "υ": "u",
        "Α": "A", "Β": "B", "Ε": "E", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
        "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ζ": "Z",
    }
)  # fmt: skip
_WORD = re.compile(r"\w+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _is_latin(char: str) -> bool:
    return char.isascii() and char.isalpha()


def _is_confusable(char: str) -> bool:
    return char.translate(_CONFUSABLES) != char


def _without_format_characters(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def canonical_text(text: str) -> str:
    """Return ``text`` with compatibility forms, invisible characters and look-alikes undone.

    Returns ``text`` itself (the same object) when nothing changes, so a caller can test
    ``canonical_text(t) is t`` to skip screening a second form.
    """
    if text.isascii():
        return text
    if unicodedata.is_normalized("NFKC", text) and not any(
        unicodedata.category(c) == "Cf" or _is_confusable(c) for c in _NON_ASCII.findall(text)
    ):  # nothing below would change it (most non-ASCII texts: accents, other scripts)
        return text
    changed = _without_format_characters(unicodedata.normalize("NFKC", text))
    letters = [c for c in changed if c.isalpha()]
    mostly_latin = sum(_is_latin(c) for c in letters) * 2 > len(letters)

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        if mostly_latin or any(_is_latin(c) for c in word):
            return word.translate(_CONFUSABLES) if any(map(_is_confusable, word)) else word
        return word

    changed = _WORD.sub(fix, changed)
    return text if changed == text else changed
