"""The attributes QIDO-RS can match and return, by level (PS3.18 Tables 10.6.1-5, 10.6.3-3/4/5).

A key in a query is a keyword (``PatientName``), a tag (``00100010``) or a dotted path
into a sequence (``RequestAttributesSequence.ScheduledProcedureStepID``). Keys resolve
to a :class:`SearchAttribute`; an unknown keyword or tag, or an attribute this server
does not keep at any level, is a 400 with a message saying what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomweb_core.dicom.instance import INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS
from dicomweb_core.errors import BadRequest


class Level(IntEnum):
    STUDY = 1
    SERIES = 2
    INSTANCE = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# Attributes the index computes rather than copies from the instance.
AGGREGATES = {
    "ModalitiesInStudy": Level.STUDY,
    "NumberOfStudyRelatedSeries": Level.STUDY,
    "NumberOfStudyRelatedInstances": Level.STUDY,
    "NumberOfSeriesRelatedInstances": Level.SERIES,
}
NOT_MATCHABLE = {
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
}
_STORED: dict[str, Level] = {
    **dict.fromkeys(INSTANCE_KEYWORDS, Level.INSTANCE),
    **dict.fromkeys(SERIES_KEYWORDS, Level.SERIES),
    **dict.fromkeys(STUDY_KEYWORDS, Level.STUDY),
    **AGGREGATES,
}
_STORED.pop("SpecificCharacterSet")
NESTED = {
    ("RequestAttributesSequence", "ScheduledProcedureStepID"): Level.SERIES,
    ("RequestAttributesSequence", "RequestedProcedureID"): Level.SERIES,
}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass(frozen=True, slots=True)
class SearchAttribute:
    """One matchable attribute: its path of tags (8-hex, upper case), VR and level."""

    keywords: tuple[str, ...]
    tags: tuple[str, ...]
    vr: str
    level: Level | None  # None: a valid attribute this server does not keep

    @property
    def keyword(self) -> str:
        return ".".join(self.keywords)

    @property
    def tag(self) -> str:
        return self.tags[-1]


def _resolve_element(name: str) -> tuple[str, str]:
    """(keyword, 8-hex tag) of a keyword or tag; 400 if it is neither."""
    if _TAG.fullmatch(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise BadRequest(f"Unknown attribute tag {name[:8].upper()} in the query.")
        return keyword, f"{tag:08X}"
    tag_value = tag_for_keyword(name) if name.isidentifier() else None
    if tag_value is None:
        raise BadRequest(
            "Unknown attribute keyword in the query; use a DICOM keyword (e.g. PatientName) "
            "or an 8-digit hexadecimal tag (e.g. 00100010)."
        )
    return name, f"{tag_value:08X}"


def resolve(name: str) -> SearchAttribute:
    """The attribute a query key or includefield names (PS3.18 §8.3.4.1)."""
    parts = [_resolve_element(part) for part in name.split(".")]
    keywords = tuple(keyword for keyword, _ in parts)
    tags = tuple(tag for _, tag in parts)
    vr = str(dictionary_VR(int(tags[-1], 16)))
    if len(keywords) == 1 and keywords[0] in _STORED:
        return SearchAttribute(keywords, tags, vr, _STORED[keywords[0]])
    if keywords in NESTED:
        return SearchAttribute(keywords, tags, vr, NESTED[keywords])
    return SearchAttribute(keywords, tags, vr, None)


def matchable_keywords() -> list[str]:
    return sorted([k for k in _STORED if k not in NOT_MATCHABLE] + [".".join(k) for k in NESTED])
