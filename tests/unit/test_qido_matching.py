"""PS3.4 C.2.2.2 matching on DICOM JSON, table-driven: the rules every candidate passes through."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.matching import matches_all
from dicomweb_core.qido.query import parse_query

SPS = "RequestAttributesSequence.ScheduledProcedureStepID"
RP = "RequestAttributesSequence.RequestedProcedureID"


def pn(name: str) -> dict[str, Any]:
    return {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}


def el(tag: str, vr: str, *values: Any) -> dict[str, Any]:
    return {tag: {"vr": vr, "Value": list(values)}} if values else {tag: {"vr": vr}}


def date_time(date: str, time: str | None = None) -> dict[str, Any]:
    return el("00080020", "DA", date) | (el("00080030", "TM", time) if time is not None else {})


def requests(*items: dict[str, str]) -> dict[str, Any]:
    tags = {"sps": ("00400009", "SH"), "rp": ("00401001", "SH")}
    return {
        "00400275": {
            "vr": "SQ",
            "Value": [
                {tags[k][0]: {"vr": tags[k][1], "Value": [v]} for k, v in item.items()} for item in items
            ],
        }
    }


# (level, query, stored DICOM JSON, matches?)
CASES: list[tuple[Level, str, dict[str, Any], bool]] = [
    # person names: case, accents, separators, dropped punctuation
    (Level.STUDY, "PatientName=muller^jose", pn("Müller^José"), True),
    (Level.STUDY, "PatientName=MÜLLER JOSÉ", pn("Muller^Jose"), True),
    (Level.STUDY, "PatientName=obrien^anne marie", pn("O'Brien^Anne-Marie"), True),
    (Level.STUDY, "PatientName=O%E2%80%99Brien*", pn("O'Brien^Anne"), True),
    (Level.STUDY, "PatientName=St John^Mary", pn("St. John^Mary"), True),
    (Level.STUDY, "PatientName=Doe^John", pn("Doe, John"), True),
    (Level.STUDY, "PatientName=Smith^John", pn("SMITH^JOHN^^^"), True),
    (Level.STUDY, "PatientName=Madonna", pn("^Madonna"), True),
    (Level.STUDY, "PatientName=dupont^zoe", pn("Dupont^Zoë"), True),
    (Level.STUDY, "PatientName=Yamada^Tarou", pn("Yamada^Tarou=山田^太郎"), True),
    (Level.STUDY, "PatientName=Smith", pn("Smith^John"), False),
    (Level.STUDY, "PatientName=Smith^Johnny", pn("Smith^John"), False),
    # person-name wildcards match the whole folded name
    (Level.STUDY, "PatientName=smi*", pn("Smith^John"), True),
    (Level.STUDY, "PatientName=*JOHN", pn("Smith^John"), True),
    (Level.STUDY, "PatientName=*smi*", pn("Goldsmith^Anna"), True),
    (Level.STUDY, "PatientName=?mith^john", pn("Smith^John"), True),
    (Level.STUDY, "PatientName=s?ith", pn("Smith^John"), False),
    (Level.STUDY, "PatientName=anne-marie*", pn("Anne Marie^Chevalier"), True),
    (Level.STUDY, "PatientName=jo*", pn("Smith^John"), False),
    # fuzzy matching: every key word starts some name word
    (Level.STUDY, "PatientName=jo sm&fuzzymatching=true", pn("Smith^John"), True),
    (Level.STUDY, "PatientName=JOS&fuzzymatching=true", pn("Müller^José"), True),
    (Level.STUDY, "PatientName=jo xx&fuzzymatching=true", pn("Smith^John"), False),
    (Level.STUDY, "PatientName=ohn&fuzzymatching=true", pn("Smith^John"), False),
    (Level.STUDY, "PatientName=jo&fuzzymatching=false", pn("Smith^John"), False),
    # absent or empty values match only universal matching
    (Level.STUDY, "PatientName=Smith", {}, False),
    (Level.STUDY, "PatientName=Smith", el("00100010", "PN"), False),
    (Level.STUDY, "PatientName=*mith", {}, False),
    (Level.STUDY, "PatientName=s&fuzzymatching=true", el("00100010", "PN"), False),
    (Level.STUDY, "PatientName=*", {}, True),
    (Level.STUDY, "PatientName=", {}, True),
    (Level.STUDY, "AccessionNumber=", el("00080050", "SH"), True),
    (Level.STUDY, "AccessionNumber=*", {}, True),
    (Level.STUDY, "AccessionNumber=A*", el("00080050", "SH"), False),
    # other strings are case-sensitive; wildcards are literal otherwise
    (Level.STUDY, "PatientID=abc", el("00100020", "LO", "ABC"), False),
    (Level.STUDY, "PatientID=ABC", el("00100020", "LO", "ABC"), True),
    (Level.STUDY, "AccessionNumber=A*1", el("00080050", "SH", "A-0001"), True),
    (Level.STUDY, "AccessionNumber=A?1", el("00080050", "SH", "A-01"), False),
    (Level.STUDY, "AccessionNumber=A??1", el("00080050", "SH", "A-01"), True),
    (Level.STUDY, "StudyDescription=*chest*", el("00081030", "LO", "CT Chest"), False),
    (Level.STUDY, "StudyDescription=*(1)*", el("00081030", "LO", "Chest (1)"), True),
    (Level.STUDY, "StudyDescription=a.c", el("00081030", "LO", "abc"), False),
    (Level.STUDY, "StudyDescription=*", el("00081030", "LO", "abc"), True),
    # UIDs and code strings: single values and lists
    (Level.STUDY, "StudyInstanceUID=1.2.3,1.2.4", el("0020000D", "UI", "1.2.4"), True),
    (Level.STUDY, "StudyInstanceUID=1.2.3,1.2.4", el("0020000D", "UI", "1.2.5"), False),
    (Level.STUDY, "StudyInstanceUID=1.2.3", el("0020000D", "UI", "1.2.30"), False),
    (Level.STUDY, "ModalitiesInStudy=CT", el("00080061", "CS", "PT", "CT"), True),
    (Level.STUDY, "ModalitiesInStudy=MR,US", el("00080061", "CS", "CT", "PT"), False),
    (Level.STUDY, "ModalitiesInStudy=PT,US", el("00080061", "CS", "CT", "PT"), True),
    (Level.STUDY, "ModalitiesInStudy=?T", el("00080061", "CS", "SR", "PT"), True),
    (Level.STUDY, "ModalitiesInStudy=ct", el("00080061", "CS", "CT"), False),
    (Level.STUDY, "ModalitiesInStudy=CT", {}, False),
    # integers compare as numbers
    (Level.SERIES, "SeriesNumber=%2B3", el("00200011", "IS", 3), True),
    (Level.SERIES, "SeriesNumber=03", el("00200011", "IS", 3), True),
    (Level.SERIES, "SeriesNumber=3", el("00200011", "IS", 3.0), True),
    (Level.SERIES, "SeriesNumber=3", el("00200011", "IS", 30), False),
    (Level.INSTANCE, "InstanceNumber=1", el("00200013", "IS"), False),
    # dates: single values and ranges, closed and open
    (Level.STUDY, "StudyDate=20240229", date_time("20240229"), True),
    (Level.STUDY, "StudyDate=20240101-20240131", date_time("20240131"), True),
    (Level.STUDY, "StudyDate=20240101-20240131", date_time("20240101"), True),
    (Level.STUDY, "StudyDate=20240101-20240131", date_time("20240201"), False),
    (Level.STUDY, "StudyDate=-20231231", date_time("20231231"), True),
    (Level.STUDY, "StudyDate=-20231231", date_time("20240101"), False),
    (Level.STUDY, "StudyDate=20240101-", date_time("20231231"), False),
    (Level.STUDY, "StudyDate=20240101-", {}, False),
    # times: an upper bound covers its whole precision; fractions count
    (Level.STUDY, "StudyTime=1000-1200", el("00080030", "TM", "120059"), True),
    (Level.STUDY, "StudyTime=1000-1200", el("00080030", "TM", "120100"), False),
    (Level.STUDY, "StudyTime=1000-1200", el("00080030", "TM", "095959.999"), False),
    (Level.STUDY, "StudyTime=1000-12", el("00080030", "TM", "125959.5"), True),
    (Level.STUDY, "StudyTime=101010.6-", el("00080030", "TM", "101010.5"), False),
    (Level.STUDY, "StudyTime=101010.6-", el("00080030", "TM", "101010.6"), True),
    (Level.STUDY, "StudyTime=-101010.4", el("00080030", "TM", "101010.5"), False),
    (Level.STUDY, "StudyTime=-101010.4", el("00080030", "TM", "101010.4999"), True),
    (Level.STUDY, "StudyTime=10:00-11", el("00080030", "TM", "10:30"), True),
    (Level.STUDY, "StudyTime=-08", el("00080030", "TM", "08"), True),
    (Level.STUDY, "StudyTime=120000", el("00080030", "TM", "1200"), True),
    (Level.STUDY, "StudyTime=120000", el("00080030", "TM", "12:00:00"), True),
    (Level.STUDY, "StudyTime=120000", el("00080030", "TM", "120001"), False),
    (Level.STUDY, "StudyTime=101010", el("00080030", "TM", "101010.5"), True),
    (Level.STUDY, "StudyTime=1010", el("00080030", "TM", "101030"), False),
    # StudyDate and StudyTime ranges together are one date-time range
    (Level.STUDY, "StudyDate=20240101-20240102&StudyTime=1000-1800", date_time("20240101", "0900"), False),
    (Level.STUDY, "StudyDate=20240101-20240102&StudyTime=1000-1800", date_time("20240101", "2300"), True),
    (Level.STUDY, "StudyDate=20240101-20240102&StudyTime=1000-1800", date_time("20240102", "0100"), True),
    (Level.STUDY, "StudyDate=20240101-20240102&StudyTime=1000-1800", date_time("20240102", "1801"), False),
    (Level.STUDY, "StudyDate=20231231-20240101&StudyTime=2300-0100", date_time("20231231", "2330"), True),
    (Level.STUDY, "StudyDate=20231231-20240101&StudyTime=2300-0100", date_time("20240101", "003000.5"), True),
    (Level.STUDY, "StudyDate=20231231-20240101&StudyTime=2300-0100", date_time("20240101", "0200"), False),
    (Level.STUDY, "StudyDate=20231231-20240101&StudyTime=2300-0100", date_time("20231231", "2200"), False),
    (Level.STUDY, "StudyDate=20240101-&StudyTime=1200-", date_time("20240101", "1100"), False),
    (Level.STUDY, "StudyDate=20240101-&StudyTime=1200-", date_time("20240301", "0100"), True),
    (Level.STUDY, "StudyDate=-20240101&StudyTime=-1200", date_time("20231201", "2300"), True),
    (Level.STUDY, "StudyDate=-20240101&StudyTime=-1200", date_time("20240101", "1300"), False),
    (Level.STUDY, "StudyDate=20240101-20240102&StudyTime=1000-", date_time("20240102", "235959.9"), True),
    (Level.STUDY, "StudyDate=20240101-20240102&StudyTime=1000-1800", {}, False),
    # without a date range, the time range is matched on its own
    (Level.STUDY, "StudyDate=20240101&StudyTime=1000-1800", date_time("20240101", "2300"), False),
    (Level.STUDY, "StudyDate=20240101&StudyTime=1000-1800", date_time("20240101", "1100"), True),
    # sequence items are searched
    (Level.SERIES, f"{SPS}=SPS-2", requests({"sps": "SPS-1"}, {"sps": "SPS-2"}), True),
    (Level.SERIES, f"{SPS}=SPS-2", requests({"sps": "SPS-1", "rp": "SPS-2"}), False),
    (Level.SERIES, f"{SPS}=SPS*", requests({"rp": "RP1"}, {"sps": "SPS-9"}), True),
    (Level.SERIES, f"{RP}=RP*", requests({"sps": "SPS-1"}), False),
    (Level.SERIES, f"{RP}=RP1", {}, False),
    # every key must match
    (
        Level.SERIES,
        "PatientID=P1&Modality=CT",
        el("00100020", "LO", "P1") | el("00080060", "CS", "CT"),
        True,
    ),
    (
        Level.SERIES,
        "PatientID=P1&Modality=PT",
        el("00100020", "LO", "P1") | el("00080060", "CS", "CT"),
        False,
    ),
    (Level.SERIES, "PatientID=&Modality=", {}, True),
]


@pytest.mark.parametrize(
    ("level", "raw", "stored", "expected"), CASES, ids=[f"{c[1]}~{c[2]}"[:90] for c in CASES]
)
def test_matching(level: Level, raw: str, stored: dict[str, Any], expected: bool) -> None:
    # Given a query and a stored result as DICOM JSON
    query = parse_query(level, raw)
    # When the result is matched against every key
    # Then it matches exactly when the PS3.4 rules (and the documented choices) say so
    assert matches_all(query, stored) is expected
