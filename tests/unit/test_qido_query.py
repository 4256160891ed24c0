"""Parsing QIDO-RS query strings: what is accepted, and the 400 for what is not (PS3.18 §8.3.4)."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb_core.errors import BadRequest
from dicomweb_core.qido.attributes import Level
from dicomweb_core.qido.query import MAX_LIMIT, MatchKind, parse_query

S, SE, IN = Level.STUDY, Level.SERIES, Level.INSTANCE
U, ONE, LIST, WILD, RANGE = (
    MatchKind.UNIVERSAL,
    MatchKind.SINGLE,
    MatchKind.LIST,
    MatchKind.WILDCARD,
    MatchKind.RANGE,
)
SPS = "RequestAttributesSequence.ScheduledProcedureStepID"

# (level, query, [(keyword, kind, values, low, high)])
TERMS: list[tuple[Level, str, list[tuple[str, MatchKind, tuple[str, ...], str | None, str | None]]]] = [
    (S, "", []),
    (S, "PatientName=Smith^John", [("PatientName", ONE, ("Smith^John",), None, None)]),
    (S, "00100010=Smith*", [("PatientName", WILD, ("Smith*",), None, None)]),
    (S, "00100010=smith*", [("PatientName", WILD, ("smith*",), None, None)]),
    (S, "PatientName=M%C3%BCller%5EJos%C3%A9", [("PatientName", ONE, ("Müller^José",), None, None)]),
    (S, "PatientName=de+la+Cruz", [("PatientName", ONE, ("de la Cruz",), None, None)]),
    (S, "PatientName=", [("PatientName", U, (), None, None)]),
    (S, "PatientName=**", [("PatientName", U, (), None, None)]),
    (S, "PatientID=?", [("PatientID", WILD, ("?",), None, None)]),
    (S, "StudyDate=20240229", [("StudyDate", ONE, ("20240229",), None, None)]),
    (
        S,
        "StudyDate=20240101-20241231",
        [("StudyDate", RANGE, ("20240101-20241231",), "20240101", "20241231")],
    ),
    (S, "StudyDate=20240101-", [("StudyDate", RANGE, ("20240101-",), "20240101", None)]),
    (S, "StudyDate=-20240101", [("StudyDate", RANGE, ("-20240101",), None, "20240101")]),
    (S, "StudyTime=1200", [("StudyTime", ONE, ("1200",), None, None)]),
    (S, "StudyTime=10:10:10.5-12", [("StudyTime", RANGE, ("10:10:10.5-12",), "10:10:10.5", "12")]),
    (S, "StudyTime=1201-12", [("StudyTime", RANGE, ("1201-12",), "1201", "12")]),
    (
        S,
        "StudyDate=20231231-20240101&StudyTime=2300-0100",
        [
            ("StudyDate", RANGE, ("20231231-20240101",), "20231231", "20240101"),
            ("StudyTime", RANGE, ("2300-0100",), "2300", "0100"),
        ],
    ),
    (S, "StudyInstanceUID=1.2.3,1.2.4", [("StudyInstanceUID", LIST, ("1.2.3", "1.2.4"), None, None)]),
    (S, "StudyInstanceUID=1.2.3,", [("StudyInstanceUID", LIST, ("1.2.3",), None, None)]),
    (S, "ModalitiesInStudy=CT,PT", [("ModalitiesInStudy", LIST, ("CT", "PT"), None, None)]),
    (S, "ModalitiesInStudy=C?", [("ModalitiesInStudy", WILD, ("C?",), None, None)]),
    (
        SE,
        "Modality=CT&PatientID=PAT123",
        [("Modality", ONE, ("CT",), None, None), ("PatientID", ONE, ("PAT123",), None, None)],
    ),
    (SE, "SeriesNumber=%2B3", [("SeriesNumber", ONE, ("+3",), None, None)]),
    (SE, f"{SPS}=SPS*", [(SPS, WILD, ("SPS*",), None, None)]),
    (SE, "00400275.00400009=SPS-1", [(SPS, ONE, ("SPS-1",), None, None)]),
    (
        IN,
        "SOPClassUID=1.2.840.10008.5.1.4.1.1.2&InstanceNumber=1",
        [
            ("SOPClassUID", ONE, ("1.2.840.10008.5.1.4.1.1.2",), None, None),
            ("InstanceNumber", ONE, ("1",), None, None),
        ],
    ),
    (
        IN,
        "StudyDate=20240101&Modality=SR",
        [
            ("StudyDate", ONE, ("20240101",), None, None),
            ("Modality", ONE, ("SR",), None, None),
        ],
    ),
]


@pytest.mark.parametrize(("level", "raw", "expected"), TERMS, ids=[t[1] or "empty" for t in TERMS])
def test_valid_keys_parse_to_terms(level: Level, raw: str, expected: list[Any]) -> None:
    # Given a valid query string
    # When it is parsed at its level
    query = parse_query(level, raw)
    # Then each key is one term of the right kind, with its values and bounds
    got = [(t.attribute.keyword, t.kind, t.values, t.low, t.high) for t in query.terms]
    assert got == expected


# (level, query, what the parsed query holds)
CONTROLS: list[tuple[Level, str, dict[str, Any]]] = [
    (S, "", {"limit": MAX_LIMIT, "offset": 0, "fuzzy": False, "include_all": False, "include": ()}),
    (S, "limit=10&offset=20", {"limit": 10, "offset": 20}),
    (S, "limit=&offset=", {"limit": MAX_LIMIT, "offset": 0}),
    (S, "limit=0", {"limit": 0}),
    (S, "fuzzymatching=true", {"fuzzy": True}),
    (S, "fuzzymatching=TRUE", {"fuzzy": True}),
    (S, "fuzzymatching=false", {"fuzzy": False}),
    (S, "includefield=all", {"include_all": True, "include": ()}),
    (S, "includefield=00081030,00080060", {"include": ("StudyDescription", "Modality")}),
    (S, "includefield=00081030%2C00080060", {"include": ("StudyDescription", "Modality")}),
    (S, "includefield=StudyDescription&includefield=00080060", {"include": ("StudyDescription", "Modality")}),
    (S, "includefield=PatientAge", {"include": ("PatientAge",)}),
    (S, "includefield=all,PatientAge", {"include_all": True, "include": ("PatientAge",)}),
    (S, "includefield=", {"include_all": False, "include": ()}),
    (S, "accept=application%2Fdicom%2Bjson&charset=utf-8", {"limit": MAX_LIMIT, "include": ()}),
    (
        S,
        "limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060",
        {"limit": 101, "offset": 0, "fuzzy": False, "include": ("StudyDescription", "Modality")},
    ),
]


@pytest.mark.parametrize(("level", "raw", "expected"), CONTROLS, ids=[t[1] or "empty" for t in CONTROLS])
def test_control_parameters(level: Level, raw: str, expected: dict[str, Any]) -> None:
    # Given a query string with control parameters
    # When it is parsed
    query = parse_query(level, raw)
    # Then limit, offset, fuzzymatching and includefield are as given, and no term is made
    got = {
        "limit": query.limit,
        "offset": query.offset,
        "fuzzy": query.fuzzy,
        "include_all": query.include_all,
        "include": tuple(a.keyword for a in query.include),
    }
    assert {k: got[k] for k in expected} == expected
    assert query.terms == ()


# (level, query, a fragment of the message that says what is wrong or allowed)
INVALID: list[tuple[Level, str, str]] = [
    (S, "Foo=1", "use a DICOM keyword (e.g. PatientName) or an 8-digit hexadecimal tag"),
    (S, "patientname=x", "use a DICOM keyword"),
    (S, "Limit=5", "use a DICOM keyword"),
    (S, "00091010=x", "Unknown attribute tag 00091010"),
    (S, "FFFFFFFF=x", "Unknown attribute tag FFFFFFFF"),
    (S, "PatientName=a&PatientName=b", "PatientName is given more than once"),
    (S, "PatientName=a&00100010=b", "PatientName is given more than once"),
    (S, "limit=1&limit=2", "The parameter limit is given more than once"),
    (S, "fuzzymatching=true&fuzzymatching=false", "fuzzymatching is given more than once"),
    (S, "StudyDate=2024*", "Wildcards are not allowed in StudyDate (VR DA"),
    (S, "StudyTime=12*", "Wildcards are not allowed in StudyTime (VR TM"),
    (S, "StudyInstanceUID=1.2.*", "Wildcards are not allowed in StudyInstanceUID (VR UI"),
    (S, "StudyDate=*", "Wildcards are not allowed in StudyDate"),
    (SE, "SeriesNumber=1?", "Wildcards are not allowed in SeriesNumber (VR IS"),
    (S, "StudyDate=2024-01-01", "range must be a-b, a- or -b"),
    (S, "StudyDate=-", "range must be a-b, a- or -b"),
    (S, "StudyDate=2024010", "StudyDate must be a date YYYYMMDD"),
    (S, "StudyDate=2024-1-1x", "range must be"),
    (S, "StudyDate=20241301", "StudyDate must be a date YYYYMMDD"),
    (S, "StudyDate=20230229", "StudyDate must be a date YYYYMMDD"),
    (S, "StudyDate=20240101-20240132", "StudyDate must be a date YYYYMMDD"),
    (S, "StudyDate=20241231-20240101", "StudyDate range starts after it ends"),
    (S, "PatientBirthDate=19700101-19600101", "PatientBirthDate range starts after it ends"),
    (S, "StudyTime=25", "StudyTime must be a time HHMMSS[.FFFFFF]"),
    (S, "StudyTime=1261", "StudyTime must be a time"),
    (S, "StudyTime=12.5", "StudyTime must be a time"),
    (S, "StudyTime=noon", "StudyTime must be a time"),
    (S, "StudyTime=1300-12", "StudyTime range starts after it ends"),
    (S, "StudyDate=20240101&StudyTime=2300-0100", "only with a StudyDate range may it cross midnight"),
    (S, "StudyInstanceUID=1.02.3", "StudyInstanceUID must be a UID"),
    (S, "StudyInstanceUID=abc", "StudyInstanceUID must be a UID"),
    (S, "StudyInstanceUID=1.2.3,x", "StudyInstanceUID must be a UID"),
    (S, f"StudyInstanceUID=1.{'2' * 64}", "StudyInstanceUID must be a UID"),
    (SE, "SeriesNumber=one", "SeriesNumber must be an integer"),
    (IN, "InstanceNumber=1.5", "InstanceNumber must be an integer"),
    (S, "PatientName=" + "x" * 300, "PatientName must be at most 256 characters"),
    (S, "SOPClassUID=1.2.3", "instance-level attribute and cannot be matched in a study-level search"),
    (S, "InstanceNumber=1", "cannot be matched in a study-level search"),
    (S, "Modality=CT", "Modality is a series-level attribute"),
    (SE, "SOPInstanceUID=1.2.3", "cannot be matched in a series-level search"),
    (S, f"{SPS}=X", "series-level attribute"),
    (S, "PatientAge=030Y", "Matching on PatientAge is not supported. Supported keys:"),
    (S, "NumberOfStudyRelatedInstances=3", "is a return attribute and cannot be a matching key"),
    (SE, "NumberOfSeriesRelatedInstances=3", "is a return attribute"),
    (S, "limit=-1", "limit must be a non-negative integer"),
    (S, "limit=ten", "limit must be a non-negative integer"),
    (S, "limit=+5", "limit must be a non-negative integer"),
    (S, "limit=1234567890", "limit must be a non-negative integer"),
    (S, "offset=-5", "offset must be a non-negative integer"),
    (S, "offset=1.5", "offset must be a non-negative integer"),
    (S, "fuzzymatching=yes", "fuzzymatching must be true or false"),
    (S, "fuzzymatching=", "fuzzymatching must be true or false"),
    (S, "includefield=Nope", "use a DICOM keyword"),
    (S, "includefield=00091010", "Unknown attribute tag 00091010"),
    (S, "includefield=StudyDescription,Nope", "use a DICOM keyword"),
    (S, "PatientName=" + "x" * 8192, "longer than 8192 characters"),
    (S, "&".join(["includefield=PatientAge"] * 201), "too many parameters (at most 200)"),
]


@pytest.mark.parametrize(("level", "raw", "message"), INVALID, ids=[t[1][:60] for t in INVALID])
def test_invalid_queries_are_bad_requests(level: Level, raw: str, message: str) -> None:
    # Given a query string a person got wrong
    # When it is parsed
    with pytest.raises(BadRequest) as caught:
        parse_query(level, raw)
    # Then it is a 400 whose message says what is wrong and what is allowed
    assert caught.value.status == 400
    assert message in caught.value.message


def test_supported_keys_are_listed_for_an_unsupported_one() -> None:
    # Given a key the index does not keep
    # When it is matched on
    with pytest.raises(BadRequest) as caught:
        parse_query(Level.STUDY, "PatientWeight=70")
    # Then the message lists the keys that can be matched
    for keyword in ("PatientName", "StudyDate", "ModalitiesInStudy", SPS):
        assert keyword in caught.value.message
    assert "NumberOfStudyRelatedInstances" not in caught.value.message


def test_the_path_scope_is_kept() -> None:
    # Given a search within a study and series
    # When it is parsed
    query = parse_query(Level.INSTANCE, "InstanceNumber=2", study="1.2.3", series="1.2.3.4")
    # Then the scope and the level go with the terms
    assert (query.level, query.study, query.series) == (Level.INSTANCE, "1.2.3", "1.2.3.4")
    assert query.term("InstanceNumber") is not None
    assert query.term("PatientName") is None
    assert [t.attribute.keyword for t in query.matching_terms] == ["InstanceNumber"]
