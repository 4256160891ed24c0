"""Parsing a QIDO-RS query string into a validated :class:`QidoQuery` (PS3.18 §8.3.4, §10.6.1).

Everything a person can get wrong is a 400 whose message says what is allowed: unknown
keys, a key given twice, wildcards where the VR forbids them, malformed dates, times,
numbers and UIDs, a negative limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from urllib.parse import parse_qsl

from dicomweb_core.dicom.uid import is_valid_uid
from dicomweb_core.errors import BadRequest
from dicomweb_core.qido.attributes import Level, SearchAttribute, matchable_keywords, resolve

MAX_LIMIT = 1000
MAX_QUERY_CHARS = 8192
_CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
# Query parameters that are not matching keys (PS3.18 Table 10.6.1-2): content negotiation.
_IGNORED = frozenset({"accept", "charset"})
_NO_WILDCARDS = frozenset({"DA", "TM", "DT", "UI", "IS", "DS", "US", "UL", "SS", "SL", "FL", "FD"})
_LISTS = frozenset({"UI", "CS"})
# ASCII digits only (PS3.5 Table 6.2-1): \d and str.isdigit() also accept other digits.
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")


class MatchKind(Enum):
    UNIVERSAL = "universal"
    SINGLE = "single"
    LIST = "list"
    WILDCARD = "wildcard"
    RANGE = "range"


@dataclass(frozen=True, slots=True)
class Term:
    """One matching key and how to match it (PS3.4 C.2.2.2)."""

    attribute: SearchAttribute
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str | None = None  # RANGE bounds (None: open)
    high: str | None = None

    @property
    def value(self) -> str:
        return self.values[0]


@dataclass(frozen=True, slots=True)
class QidoQuery:
    level: Level
    study: str | None = None  # scope from the path
    series: str | None = None
    terms: tuple[Term, ...] = ()
    include_all: bool = False
    include: tuple[SearchAttribute, ...] = ()
    limit: int = MAX_LIMIT
    offset: int = 0
    fuzzy: bool = False
    warnings: tuple[str, ...] = field(default=())

    def term(self, keyword: str) -> Term | None:
        return next((t for t in self.terms if t.attribute.keyword == keyword), None)

    @property
    def matching_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.kind is not MatchKind.UNIVERSAL)


def parse_query(
    level: Level, raw_query: str, *, study: str | None = None, series: str | None = None
) -> QidoQuery:
    if len(raw_query) > MAX_QUERY_CHARS:
        raise BadRequest(f"The query string is longer than {MAX_QUERY_CHARS} characters.")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
    except ValueError:
        raise BadRequest("The query string has too many parameters (at most 200).") from None
    terms: dict[str, Term] = {}
    include: list[SearchAttribute] = []
    include_all = False
    controls: dict[str, str] = {}
    for name, value in pairs:
        if name == "includefield":
            for field_name in (v.strip() for v in value.split(",") if v.strip()):
                if field_name == "all":
                    include_all = True
                else:
                    include.append(resolve(field_name))
            continue
        if name in _IGNORED:
            continue
        if name in _CONTROL:
            if name in controls:
                raise BadRequest(f"The parameter {name} is given more than once.")
            controls[name] = value
            continue
        term = _term(resolve(name), value, level)
        if term.attribute.keyword in terms:
            raise BadRequest(
                f"The matching key {term.attribute.keyword} is given more than once (PS3.18 §8.3.4.1)."
            )
        terms[term.attribute.keyword] = term
    _check_time_range(terms.get("StudyTime"), terms.get("StudyDate"))
    fuzzy = _boolean(controls.get("fuzzymatching", "false"), "fuzzymatching")
    return QidoQuery(
        level=level,
        study=study,
        series=series,
        terms=tuple(terms.values()),
        include_all=include_all,
        include=tuple(include),
        limit=_integer(controls.get("limit"), "limit", default=MAX_LIMIT),
        offset=_integer(controls.get("offset"), "offset", default=0),
        fuzzy=fuzzy,
    )


def _term(attribute: SearchAttribute, value: str, level: Level) -> Term:
    if attribute.level is None:
        raise BadRequest(
            f"Matching on {attribute.keyword} is not supported. "
            f"Supported keys: {', '.join(matchable_keywords())}."
        )
    if attribute.level > level:
        raise BadRequest(
            f"{attribute.keyword} is a {attribute.level.label}-level attribute and cannot be matched "
            f"in a {level.label}-level search."
        )
    if attribute.keyword in {
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
    }:
        raise BadRequest(f"{attribute.keyword} is a return attribute and cannot be a matching key.")
    if value == "":
        return Term(attribute, MatchKind.UNIVERSAL)
    vr = attribute.vr
    if "*" in value or "?" in value:
        if vr in _NO_WILDCARDS:
            raise BadRequest(f"Wildcards are not allowed in {attribute.keyword} (VR {vr}; PS3.4 C.2.2.2.4).")
        if value.strip("*") == "":
            return Term(attribute, MatchKind.UNIVERSAL)
        return Term(attribute, MatchKind.WILDCARD, (value,))
    if vr in {"DA", "TM", "DT"} and "-" in value:
        return _range(attribute, value)
    if vr in _LISTS and "," in value:
        values = tuple(v for v in value.split(",") if v)
        for v in values:
            _check_value(attribute, v)
        return Term(attribute, MatchKind.LIST, values)
    _check_value(attribute, value)
    return Term(attribute, MatchKind.SINGLE, (value,))


def _range(attribute: SearchAttribute, value: str) -> Term:
    low, _, high = value.partition("-")
    if "-" in high or (not low and not high):
        raise BadRequest(f"{attribute.keyword} range must be a-b, a- or -b (PS3.4 C.2.2.2.5).")
    for bound in (low, high):
        if bound:
            _check_value(attribute, bound)
    # StudyTime may wrap past midnight when a StudyDate range goes with it (checked by the caller).
    backwards = bool(low and high) and _ordered(attribute.vr, low) > _ordered(attribute.vr, high, upper=True)
    if backwards and attribute.keyword != "StudyTime":
        raise BadRequest(f"{attribute.keyword} range starts after it ends.")
    return Term(attribute, MatchKind.RANGE, (value,), low or None, high or None)


def _ordered(vr: str, bound: str, *, upper: bool = False) -> str:
    """A range bound in a form that sorts: TM bounds padded to HHMMSS.FFFFFF."""
    if vr != "TM":
        return bound
    digits, _, fraction = bound.replace(":", "").partition(".")
    pad = "9" if upper else "0"
    return f"{(digits + pad * 6)[:6]}.{(fraction + pad * 6)[:6]}"


def _check_time_range(time: Term | None, date: Term | None) -> None:
    """A StudyTime range ending before it starts is one date-time range with a StudyDate
    range (PS3.4 C.2.2.2.5.2, e.g. 2300-0100 across midnight); alone it is an error."""
    if time is None or time.kind is not MatchKind.RANGE or not time.low or not time.high:
        return
    if date is not None and date.kind is MatchKind.RANGE:
        return
    if _ordered("TM", time.low) > _ordered("TM", time.high, upper=True):
        raise BadRequest(
            "StudyTime range starts after it ends (only with a StudyDate range may it cross midnight)."
        )


def _valid_date(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    digits = value.replace(":", "").split(".", 1)[0]
    return int(digits[0:2]) < 24 and int(digits[2:4] or 0) < 60 and int(digits[4:6] or 0) < 61


def _check_value(attribute: SearchAttribute, value: str) -> None:
    vr = attribute.vr
    problem = None
    if vr == "DA" and not (_DATE.fullmatch(value) and _valid_date(value)):
        problem = "a date YYYYMMDD"
    elif vr == "TM" and not (_TIME.fullmatch(value.replace(":", "")) and _valid_time(value)):
        problem = "a time HHMMSS[.FFFFFF] (HH and HHMM allowed)"
    elif vr == "UI" and not is_valid_uid(value):
        problem = "a UID (digits and dots, at most 64 characters, no leading zeros)"
    elif vr in {"IS", "US", "UL", "SS", "SL"} and not re.fullmatch(r"[+-]?[0-9]{1,12}", value.strip()):
        problem = "an integer"
    elif len(value) > 64 * 4:
        problem = "at most 256 characters"
    if problem:
        raise BadRequest(f"The value of {attribute.keyword} must be {problem}.")


def _integer(value: str | None, name: str, *, default: int) -> int:
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise BadRequest(f"{name} must be a non-negative integer.")
    return int(value)


def _boolean(value: str, name: str) -> bool:
    if value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise BadRequest(f"{name} must be true or false.")
