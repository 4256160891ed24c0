"""What each item contributes to the secondary indexes and postings (docs/index-design.md).

The writer stores these attributes; the QIDO planner queries them. Both sides build keys
with the functions here, so a key format is defined exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dicomweb_core.index.normalize import person_name, words

SHARDS = 8  # write shards for low-cardinality keys (dates, modalities, classes, numbers)
NO_DATE = "00000000"
MAX_TERM = 64  # DICOM LO/SH/PN component lengths keep terms short; bound them anyway


def first_value(dicom_json: Mapping[str, Any], tag: str) -> Any:
    values = dicom_json.get(tag, {}).get("Value") or []
    return values[0] if values else None


def text_value(dicom_json: Mapping[str, Any], tag: str) -> str:
    """The first value of a string attribute as text ('' when absent; PN: Alphabetic)."""
    value = first_value(dicom_json, tag)
    if value is None:
        return ""
    if isinstance(value, dict):
        return str(value.get("Alphabetic", ""))
    return str(value)


def shard_of(uid: str) -> int:
    return int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) % SHARDS


def normalise_time(value: str) -> str:
    """TM as 6 digits HHMMSS (missing parts as zeros, fractions dropped)."""
    digits = value.replace(":", "").split(".", 1)[0]
    return (digits + "000000")[:6] if digits.isdigit() else "000000"


def study_sort_key(study_json: Mapping[str, Any], study_uid: str) -> str:
    """``YYYYMMDDHHMMSS#uid``: study results come newest first (descending sort)."""
    date = text_value(study_json, STUDY_DATE)
    time = text_value(study_json, STUDY_TIME)
    date = date if len(date) == 8 and date.isdigit() else NO_DATE
    return f"{date}{normalise_time(time)}#{study_uid}"


def month_of(date: str) -> str:
    return date[:6] if len(date) == 8 and date.isdigit() else "none"


# Tags (8-hex, as in DICOM JSON) of the attributes the index keys use.
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
ACCESSION_NUMBER = "00080050"
MODALITY = "00080060"
BODY_PART_EXAMINED = "00180015"
REFERRING_PHYSICIAN_NAME = "00080090"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_ID = "00200010"
SERIES_NUMBER = "00200011"
INSTANCE_NUMBER = "00200013"
PPS_START_DATE = "00400244"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"
SCHEDULED_PROCEDURE_STEP_ID = "00400009"
REQUESTED_PROCEDURE_ID = "00401001"


def date_pk(month: str, shard: int) -> str:
    return f"D#{month}#{shard}"


def exact_pk(prefix: str, value: str) -> str:
    return f"{prefix}#{value[:MAX_TERM]}"


def sharded_pk(prefix: str, value: str, shard: int) -> str:
    return f"{prefix}#{value[:MAX_TERM]}#{shard}"


def name_pk(prefix: str, normalised: str) -> str:
    return f"{prefix}#{normalised[:1]}"


def posting_pk(family: str, term: str) -> str:
    return f"P#{family}#{term[:1]}"


def study_index_attributes(study_json: Mapping[str, Any], study_uid: str) -> dict[str, str]:
    """g1..g7 attributes of a study item (g8, the modality combination, is set by the writer)."""
    sort_key = study_sort_key(study_json, study_uid)
    date = text_value(study_json, STUDY_DATE)
    attributes = {
        "g1pk": date_pk(month_of(date), shard_of(study_uid)),
        "g1sk": sort_key,
    }
    for number, prefix, tag in ((3, "PID", PATIENT_ID), (4, "ACC", ACCESSION_NUMBER), (5, "SID", STUDY_ID)):
        value = text_value(study_json, tag)
        if value:  # gsi3 and gsi4 sort by the item's own sort_key (models.index_sort_attribute)
            attributes[f"g{number}pk"] = exact_pk(prefix, value)
            if number == 5:
                attributes["g5sk"] = sort_key
    for number, prefix, tag in ((6, "PN", PATIENT_NAME), (7, "RPN", REFERRING_PHYSICIAN_NAME)):
        name = person_name(text_value(study_json, tag))
        if name:
            attributes[f"g{number}pk"] = name_pk(prefix, name)
            attributes[f"g{number}sk"] = f"{name[:MAX_TERM]}#{study_uid}"
    return attributes


def modality_combo_attributes(combo: str, study_uid: str, sort_key: str) -> dict[str, str]:
    return {"g8pk": sharded_pk("MODS", combo, shard_of(study_uid)), "g8sk": sort_key}


def series_index_attributes(
    series_json: Mapping[str, Any], *, study_sort: str, series_uid: str
) -> dict[str, str]:
    """The series item's index keys, and ``sort_key`` (gsi2 to gsi4 sort by it)."""
    sort_key = f"{study_sort}#{series_uid}"
    shard = shard_of(series_uid)
    attributes = {"sort_key": sort_key, "g2pk": exact_pk("SE", series_uid)}
    modality = text_value(series_json, MODALITY)
    if modality:
        attributes["g3pk"] = sharded_pk("MOD", modality, shard)
    number = first_value(series_json, SERIES_NUMBER)
    if number is not None:
        attributes["g4pk"] = sharded_pk("SNUM", str(int(number)), shard)
    pps_date = text_value(series_json, PPS_START_DATE)
    if pps_date:
        attributes |= {"g5pk": date_pk(month_of(pps_date), shard), "g5sk": f"{pps_date}#{sort_key}"}
    return attributes


def instance_index_attributes(
    instance_json: Mapping[str, Any], *, series_sort: str, sop_uid: str, sop_class_uid: str
) -> dict[str, str]:
    """The instance item's index keys, and ``sort_key`` (gsi2 to gsi4 sort by it)."""
    shard = shard_of(sop_uid)
    attributes = {
        "sort_key": f"{series_sort}#{sop_uid}",
        "g2pk": exact_pk("I", sop_uid),
        "g3pk": sharded_pk("CLS", sop_class_uid, shard),
    }
    number = first_value(instance_json, INSTANCE_NUMBER)
    if number is not None:
        attributes["g4pk"] = sharded_pk("INUM", str(int(number)), shard)
    return attributes


@dataclass(frozen=True, slots=True)
class Posting:
    family: str
    term: str
    study_uid: str
    series_uid: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        suffix = f"#{self.series_uid}" if self.series_uid else ""
        return posting_pk(self.family, self.term), f"{self.term[:MAX_TERM]}#{self.study_uid}{suffix}"


# Posting families: W = word starts of a person name (fuzzy matching), S = every suffix of
# a folded value (wildcards with a leading '*'), P = the whole folded value of an ID
# (wildcards with a literal prefix), R = request attribute IDs of a series.
def study_postings(study_json: Mapping[str, Any], study_uid: str) -> Iterator[Posting]:
    for family, tag in (("PN", PATIENT_NAME), ("RPN", REFERRING_PHYSICIAN_NAME)):
        name = person_name(text_value(study_json, tag))[:MAX_TERM]
        for word in set(words(name)):
            yield Posting(f"{family}W", word, study_uid)
        for start in range(len(name)):
            yield Posting(f"{family}S", name[start:], study_uid)
    for family, tag in (("PID", PATIENT_ID), ("ACC", ACCESSION_NUMBER), ("SID", STUDY_ID)):
        value = text_value(study_json, tag)[:MAX_TERM]
        if value:
            yield Posting(f"{family}P", value, study_uid)
            for start in range(1, len(value)):
                yield Posting(f"{family}S", value[start:], study_uid)


def series_postings(series_json: Mapping[str, Any], study_uid: str, series_uid: str) -> Iterator[Posting]:
    for item in series_json.get(REQUEST_ATTRIBUTES_SEQUENCE, {}).get("Value") or []:
        for family, tag in (("SPS", SCHEDULED_PROCEDURE_STEP_ID), ("RP", REQUESTED_PROCEDURE_ID)):
            value = text_value(item, tag)
            if value:
                yield Posting(family, value[:MAX_TERM], study_uid, series_uid)
