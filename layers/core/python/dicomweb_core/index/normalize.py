"""Normalised forms of values, shared by the index writer and the matcher.

Person names match case- and accent-insensitively (PS3.4 C.2.2.2.1 leaves PN case
sensitivity to the implementation; see docs/conformance.md): both the stored value and
the query are folded the same way, so the index and the in-memory matcher agree.
"""

from __future__ import annotations

import re
import unicodedata

_SEPARATORS = re.compile(r"[\^=\s,\-]+")
_DROPPED = re.compile(r"['`\u2019.]")


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks removed, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def person_name(text: str) -> str:
    """A PN value folded, with component and word separators collapsed to one space.

    ``Müller^José`` → ``muller jose``; ``O'Brien^Anne-Marie`` → ``obrien anne marie``.
    Only the alphabetic group (before the first ``=``) is used.
    """
    alphabetic = text.split("=", 1)[0]
    return _SEPARATORS.sub(" ", _DROPPED.sub("", fold(alphabetic))).strip()


def words(name: str) -> list[str]:
    """The words of a normalised person name."""
    return [w for w in name.split(" ") if w]
