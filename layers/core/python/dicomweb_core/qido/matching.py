"""Attribute matching on DICOM JSON (PS3.4 C.2.2.2), the final word on every candidate.

The index only narrows the candidates; every candidate then passes through
:func:`matches_all`, so what a search returns never depends on which index served it.

Choices (docs/conformance.md): person names match case- and accent-insensitively, with
``^``, spaces and hyphens as word separators; other strings match case-sensitively; an
absent or empty stored value matches only universal matching; a stored value with
several values (ModalitiesInStudy) matches if any value does; ``fuzzymatching=true``
matches a person name when every word of the key is the start of some word of the name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dicomweb_core.index.keys import normalise_time
from dicomweb_core.index.normalize import person_name, words
from dicomweb_core.qido.query import MatchKind, QidoQuery, Term

DicomJson = Mapping[str, Any]


def values_at(dataset: DicomJson, tags: Sequence[str]) -> list[Any]:
    """Every value at a tag path; sequence items are searched (PS3.4 C.2.2.2.6)."""
    element = dataset.get(tags[0])
    if element is None:
        return []
    found = element.get("Value") or []
    if len(tags) == 1:
        return list(found)
    nested: list[Any] = []
    for item in found:
        if isinstance(item, Mapping):
            nested += values_at(item, tags[1:])
    return nested


def as_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("Alphabetic", ""))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _wildcard_match(pattern: str, text: str) -> bool:
    """Whether ``pattern`` (``*`` any run, ``?`` one character) matches all of ``text``.

    Greedy, returning only to the last ``*``: at most len(pattern) * len(text) steps. (A
    regular expression of ``.*`` runs backtracks exponentially: ``*a*a*a*a*a*a*a*a*b`` took
    seconds against a 50-character value.)
    """
    p = t = 0
    star, resume = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] in ("?", text[t]) and pattern[p] != "*":
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif star >= 0:
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    return pattern[p:].strip("*") == ""


def _fuzzy(key: str, name: str) -> bool:
    name_words = words(name)
    return all(any(w.startswith(k) for w in name_words) for k in words(key.replace("*", "").replace("?", "")))


def matches_value(term: Term, value: Any, *, fuzzy: bool = False) -> bool:
    vr = term.attribute.vr
    text = as_text(value)
    if text == "":
        return False
    if vr == "PN":
        text = person_name(text)
        if term.kind is MatchKind.WILDCARD:
            return _wildcard_match(person_name(term.value), text)
        if fuzzy:
            return _fuzzy(person_name(term.value), text)
        return text == person_name(term.value)
    match term.kind:
        case MatchKind.WILDCARD:
            return _wildcard_match(term.value, text)
        case MatchKind.LIST:
            return text in term.values
        case MatchKind.RANGE:
            comparable = _comparable(vr, text)
            low = _comparable(vr, term.low) if term.low else None
            high = _comparable(vr, term.high, upper=True) if term.high else None
            return (low is None or comparable >= low) and (high is None or comparable <= high)
        case _:
            if vr in {"IS", "US", "UL", "SS", "SL"}:
                return _integer(text) == _integer(term.value)
            if vr == "TM":
                return normalise_time(text) == normalise_time(term.value)
            return text == term.value


def _comparable(vr: str, text: str, *, upper: bool = False) -> str:
    if vr == "TM":
        # HHMMSS.FFFFFF: an upper bound covers every instant of its precision, fractions count.
        digits, _, fraction = text.replace(":", "").partition(".")
        pad = "9" if upper else "0"
        return f"{(digits + pad * 6)[:6]}.{(fraction + pad * 6)[:6]}"
    return text


def _integer(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def matches_term(term: Term, dataset: DicomJson, *, fuzzy: bool = False) -> bool:
    if term.kind is MatchKind.UNIVERSAL:
        return True
    return any(matches_value(term, v, fuzzy=fuzzy) for v in values_at(dataset, term.attribute.tags))


def matches_all(query: QidoQuery, dataset: DicomJson) -> bool:
    """True when ``dataset`` (the merged DICOM JSON of a result) matches every key."""
    date, time = query.term("StudyDate"), query.term("StudyTime")
    combined = date is not None and time is not None and date.kind is time.kind is MatchKind.RANGE
    for term in query.matching_terms:
        if combined and term in (date, time):
            continue
        if not matches_term(term, dataset, fuzzy=query.fuzzy):
            return False
    if combined:
        assert date is not None and time is not None
        return _matches_date_time(date, time, dataset)
    return True


def _matches_date_time(date: Term, time: Term, dataset: DicomJson) -> bool:
    """StudyDate and StudyTime ranges together form one date-time range (PS3.4 C.2.2.2.5.2)."""
    dates = values_at(dataset, date.attribute.tags)
    times = values_at(dataset, time.attribute.tags) or ["000000"]
    if not dates:
        return False
    stamp = f"{as_text(dates[0])}{_comparable('TM', as_text(times[0]))}"
    low = f"{date.low}{_comparable('TM', time.low or '000000')}" if date.low else None
    high = f"{date.high}{_comparable('TM', time.high or '235959', upper=True)}" if date.high else None
    return (low is None or stamp >= low) and (high is None or stamp <= high)
