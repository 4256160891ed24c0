"""Tests for DICOMweb resource URIs (PS3.18 §10.3, Table 10.3-2): parse once, validated."""

from __future__ import annotations

import dataclasses

import pytest

from dicomweb_core.errors import BadRequest, InvalidUID, NotFound
from dicomweb_core.web.uri import MAX_FRAMES_PER_REQUEST, DicomWebURI, ResourceType, Suffix

BASE = "https://dicom.example.org/dicomweb"
ST = "1.2.826.0.1.3680043.8.498.1"
SE = "1.2.826.0.1.3680043.8.498.2"
IN = "1.2.826.0.1.3680043.8.498.3"
STUDY = f"/studies/{ST}"
SERIES = f"{STUDY}/series/{SE}"
INSTANCE = f"{SERIES}/instances/{IN}"

SHAPES = [
    ("/", ResourceType.ROOT, None, None, None, None, None),
    (STUDY, ResourceType.STUDY, ST, None, None, None, None),
    (f"{STUDY}/metadata", ResourceType.STUDY, ST, None, None, None, Suffix.METADATA),
    (f"{STUDY}/rendered", ResourceType.STUDY, ST, None, None, None, Suffix.RENDERED),
    (f"{STUDY}/thumbnail", ResourceType.STUDY, ST, None, None, None, Suffix.THUMBNAIL),
    (SERIES, ResourceType.SERIES, ST, SE, None, None, None),
    (f"{SERIES}/metadata", ResourceType.SERIES, ST, SE, None, None, Suffix.METADATA),
    (f"{SERIES}/rendered", ResourceType.SERIES, ST, SE, None, None, Suffix.RENDERED),
    (f"{SERIES}/thumbnail", ResourceType.SERIES, ST, SE, None, None, Suffix.THUMBNAIL),
    (INSTANCE, ResourceType.INSTANCE, ST, SE, IN, None, None),
    (f"{INSTANCE}/metadata", ResourceType.INSTANCE, ST, SE, IN, None, Suffix.METADATA),
    (f"{INSTANCE}/rendered", ResourceType.INSTANCE, ST, SE, IN, None, Suffix.RENDERED),
    (f"{INSTANCE}/thumbnail", ResourceType.INSTANCE, ST, SE, IN, None, Suffix.THUMBNAIL),
    (f"{INSTANCE}/bulkdata", ResourceType.INSTANCE, ST, SE, IN, None, Suffix.BULKDATA),
    (f"{INSTANCE}/frames/1", ResourceType.FRAMES, ST, SE, IN, (1,), None),
    (f"{INSTANCE}/frames/1,2,3", ResourceType.FRAMES, ST, SE, IN, (1, 2, 3), None),
    (f"{INSTANCE}/frames/3,1,3", ResourceType.FRAMES, ST, SE, IN, (3, 1, 3), None),
    (f"{INSTANCE}/frames/1/rendered", ResourceType.FRAMES, ST, SE, IN, (1,), Suffix.RENDERED),
    (f"{INSTANCE}/frames/2,4/thumbnail", ResourceType.FRAMES, ST, SE, IN, (2, 4), Suffix.THUMBNAIL),
]


@pytest.mark.parametrize(
    ("path", "resource_type", "study", "series", "instance", "frames", "suffix"),
    SHAPES,
    ids=[shape[0].replace(ST, "{st}").replace(SE, "{se}").replace(IN, "{in}") for shape in SHAPES],
)
def test_every_resource_shape_round_trips(
    path: str,
    resource_type: ResourceType,
    study: str | None,
    series: str | None,
    instance: str | None,
    frames: tuple[int, ...] | None,
    suffix: Suffix | None,
) -> None:
    # Given the path of a DICOMweb resource
    # When it is parsed
    uri = DicomWebURI.from_path(BASE, path)
    # Then every part is recognised
    assert uri.resource_type is resource_type
    assert (uri.study, uri.series, uri.instance, uri.frames, uri.suffix) == (
        study,
        series,
        instance,
        frames,
        suffix,
    )
    # And it prints back to the same path and URL, and parses to an equal URI
    assert uri.path == path
    assert uri.url == BASE + path
    assert DicomWebURI.from_path(BASE, uri.path) == uri


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("", "/"),
        (f"{STUDY}/", STUDY),
        (f"/{STUDY}", STUDY),
        (f"/studies//{ST}", STUDY),
        (f"{INSTANCE}/frames/01,2", f"{INSTANCE}/frames/1,2"),
    ],
    ids=["empty", "trailing-slash", "double-leading-slash", "double-inner-slash", "leading-zero-frame"],
)
def test_equivalent_spellings_parse_to_the_canonical_path(path: str, canonical: str) -> None:
    # Given a path with redundant slashes or zero-padded frame numbers
    # When it is parsed
    uri = DicomWebURI.from_path(BASE, path)
    # Then it is the canonical resource
    assert uri.path == canonical


@pytest.mark.parametrize(
    "base",
    ["https://dicom.example.org/dicomweb", "https://dicom.example.org/dicomweb/", "http://localhost:3000"],
    ids=["no-slash", "trailing-slash", "local"],
)
def test_url_joins_the_base_url_with_exactly_one_slash(base: str) -> None:
    # Given a base URL with or without a trailing slash
    # When an instance URI is built on it
    uri = DicomWebURI(base, study=ST, series=SE, instance=IN)
    # Then the URL has exactly one slash between base and path
    assert uri.url == base.rstrip("/") + INSTANCE
    assert "//studies" not in uri.url


def test_url_of_the_root_is_the_base_with_a_slash() -> None:
    # Given the root resource
    uri = DicomWebURI.from_path(BASE, "/")
    # When its URL is taken
    # Then it is the base URL itself
    assert uri.url == BASE + "/"


def test_uri_is_immutable() -> None:
    # Given a parsed URI
    uri = DicomWebURI.from_path(BASE, STUDY)
    # When code tries to change it
    # Then it cannot
    with pytest.raises(dataclasses.FrozenInstanceError):
        uri.study = "1.2.3"  # type: ignore[misc]


@pytest.mark.parametrize(
    "path",
    [
        "/studies/../x",
        "/studies/..",
        f"/studies/{ST}/../../etc/passwd",
        "/studies/.",
        "/studies/%2e%2e",
        "/studies/%2e%2e/series/1.2",
        "/studies/%2E%2E%2Fetc",
        "/studies/1.2%2f..",
        "/studies/1.2\0",
        "/studies/1.2\0/series/1.3",
        "/studies/\0",
        "/studies/1.2\\..\\x",
        f"/studies/{ST}/series/..",
        f"/studies/{ST}/series/{SE}/instances/..",
        f"/studies/{ST}/series/{SE}/instances/%2e%2e/frames/1",
    ],
    ids=[
        "dotdot-then-segment",
        "dotdot",
        "dotdot-escape",
        "dot",
        "pct-dotdot",
        "pct-dotdot-series",
        "pct-upper-slash",
        "pct-slash-dotdot",
        "nul-suffix",
        "nul-in-study",
        "nul-only",
        "backslash",
        "series-dotdot",
        "instance-dotdot",
        "instance-pct-dotdot",
    ],
)
def test_path_traversal_never_becomes_a_resource(path: str) -> None:
    # Given a path that tries to escape its resource
    # When it is parsed
    with pytest.raises((InvalidUID, NotFound)) as info:
        DicomWebURI.from_path(BASE, path)
    # Then it is refused, and the error does not repeat the hostile segment
    message = str(info.value)
    assert ".." not in message
    assert "%2" not in message.lower()
    assert "\0" not in message


@pytest.mark.parametrize(
    "path",
    [
        "/studies",
        f"{STUDY}/series",
        f"{SERIES}/instances",
        f"{INSTANCE}/frames",
        "/metadata",
        "/rendered",
        "/series/1.2",
        "/instances/1.2",
        f"/Studies/{ST}",
        f"{STUDY}/instances/{IN}",
        f"{STUDY}/frames/1",
        f"{SERIES}/frames/1",
        f"{INSTANCE}/unknown",
        f"{INSTANCE}/metadata/metadata",
        f"{INSTANCE}/frames/1/extra",
        "/wado",
    ],
    ids=[
        "studies-collection",
        "series-collection",
        "instances-collection",
        "frames-without-list",
        "root-metadata",
        "root-rendered",
        "series-first",
        "instances-first",
        "capitalised",
        "instance-without-series",
        "frames-on-study",
        "frames-on-series",
        "unknown-suffix",
        "two-suffixes",
        "after-frames",
        "wado-uri",
    ],
)
def test_paths_that_are_not_resources_are_not_found(path: str) -> None:
    # Given a path that is not a resource in PS3.18 Table 10.3-2
    # When it is parsed
    # Then it is "not found"
    with pytest.raises(NotFound):
        DicomWebURI.from_path(BASE, path)


@pytest.mark.parametrize(
    "frames",
    [
        "0",
        "1,0",
        "-1",
        "1,,2",
        ",1",
        "1,",
        "a",
        "1.5",
        "+1",
        " 1",
        "1 ",
        "1_0",
        "\u0661",
        "1e3",
        "12345678901",
    ],
    ids=[
        "zero",
        "zero-in-list",
        "negative",
        "empty-item",
        "leading-comma",
        "trailing-comma",
        "letter",
        "decimal",
        "plus-sign",
        "leading-space",
        "trailing-space",
        "underscore",
        "arabic-indic-digit",
        "exponent",
        "eleven-digits",
    ],
)
def test_malformed_frame_lists_are_bad_requests(frames: str) -> None:
    # Given a frame list that is not comma-separated 1-based ASCII numbers
    # When it is parsed
    with pytest.raises(BadRequest) as info:
        DicomWebURI.from_path(BASE, f"{INSTANCE}/frames/{frames}")
    # Then it is a 400 that explains frame lists
    assert not isinstance(info.value, InvalidUID)
    assert "1-based" in str(info.value)


@pytest.mark.parametrize(
    "frames",
    [",".join(["1"] * MAX_FRAMES_PER_REQUEST), ",".join(map(str, range(1, MAX_FRAMES_PER_REQUEST + 1)))],
    ids=["repeats", "distinct"],
)
def test_frame_lists_up_to_the_cap_are_kept_as_asked(frames: str) -> None:
    # Given a frame list exactly as long as the cap
    # When it is parsed
    uri = DicomWebURI.from_path(BASE, f"{INSTANCE}/frames/{frames}")
    # Then every number is kept, in the order asked, repeats included
    assert uri.frames == tuple(int(number) for number in frames.split(","))


@pytest.mark.parametrize("count", [MAX_FRAMES_PER_REQUEST + 1, 3000, 200_000], ids=["cap+1", "3000", "200k"])
def test_frame_lists_longer_than_the_cap_are_bad_requests(count: int) -> None:
    # Given a frame list longer than the cap (the review's 6 KB path repeats frame 1 3,000 times)
    frames = ",".join(["1"] * count)
    # When it is parsed
    with pytest.raises(BadRequest) as info:
        DicomWebURI.from_path(BASE, f"{INSTANCE}/frames/{frames}")
    # Then it is a 400 that says the cap, how many were asked for, and what to do
    message = str(info.value)
    assert f"at most {MAX_FRAMES_PER_REQUEST} frame numbers" in message
    assert f"this one has {count}" in message
    assert "several requests" in message


def test_the_frame_list_cap_is_checked_by_the_constructor_too() -> None:
    # Given a frames URI built in code with more numbers than the cap
    # When it is constructed
    # Then it is a bad request
    with pytest.raises(BadRequest, match="at most"):
        DicomWebURI(BASE, study=ST, series=SE, instance=IN, frames=(1,) * (MAX_FRAMES_PER_REQUEST + 1))


@pytest.mark.parametrize(
    ("position", "bad"),
    [("study", "1.02"), ("series", "1..2"), ("instance", "x" * 10)],
    ids=["study", "series", "instance"],
)
def test_invalid_uid_in_any_position_names_that_position(position: str, bad: str) -> None:
    # Given a path with one invalid UID
    uids = {"study": ST, "series": SE, "instance": IN} | {position: bad}
    path = f"/studies/{uids['study']}/series/{uids['series']}/instances/{uids['instance']}"
    # When it is parsed
    with pytest.raises(InvalidUID) as info:
        DicomWebURI.from_path(BASE, path)
    # Then the message names the position and not the value
    label = {"study": "Study", "series": "Series", "instance": "SOP Instance"}[position]
    assert str(info.value).startswith(f"{label} UID in the path")
    assert bad not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"series": SE},
        {"study": ST, "instance": IN},
        {"study": ST, "series": SE, "frames": (1,)},
    ],
    ids=["series-without-study", "instance-without-series", "frames-without-instance"],
)
def test_constructor_refuses_incomplete_hierarchies(kwargs: dict[str, object]) -> None:
    # Given a URI built in code with a level missing above another
    # When it is constructed
    # Then it is a programming error
    with pytest.raises(ValueError, match="needs"):
        DicomWebURI(BASE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("frames", [(), (0,), (1, -2)], ids=["empty", "zero", "negative"])
def test_constructor_refuses_frames_that_are_not_1_based(frames: tuple[int, ...]) -> None:
    # Given a frames URI with an empty or non-positive frame list
    # When it is constructed
    # Then it is a bad request
    with pytest.raises(BadRequest, match="1-based"):
        DicomWebURI(BASE, study=ST, series=SE, instance=IN, frames=frames)


def test_constructor_validates_uids_too() -> None:
    # Given a URI built in code with an invalid study UID
    # When it is constructed
    # Then the same validation as for parsed paths applies
    with pytest.raises(InvalidUID):
        DicomWebURI(BASE, study="../etc")
