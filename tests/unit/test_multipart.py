"""Tests for media type / Accept parsing and multipart/related framing (PS3.18 §8.6, §8.7)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomweb_core.errors import BadRequest, MultipartError, TooManyParts, UnsupportedMediaType
from dicomweb_core.web.mediatype import MediaRange, MediaType, parse_accept, parse_media_type
from dicomweb_core.web.multipart import (
    Part,
    boundary_of,
    encode_multipart,
    iter_parts,
    multipart_content_type,
    split_parts,
)

DICOM_RELATED = MediaType("multipart/related", (("type", "application/dicom"), ("boundary", "xyz")))


def bodies(parts: list[Part]) -> list[bytes]:
    return [bytes(part.body) for part in parts]


# --- parse_media_type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        'multipart/related; type="application/dicom"; boundary=xyz',
        "multipart/related; type=application/dicom; boundary=xyz",
        'Multipart/Related;type="application/dicom";boundary="xyz"',
        "multipart/related ; type = application/dicom ;  boundary = xyz",
        "\tmultipart/related;\ttype=application/dicom; boundary=xyz;",
        "multipart/related; TYPE=application/dicom;; Boundary=xyz",
    ],
)
def test_parse_media_type_accepts_quoted_unquoted_and_spaced_forms(value: str) -> None:
    # Given a Content-Type as sent by various clients (OHIF sends type unquoted)
    # When it is parsed
    media = parse_media_type(value)
    # Then it is the same normalised media type
    assert media == DICOM_RELATED
    assert media.param("Type") == "application/dicom"
    assert media.maintype == "multipart"
    assert media.subtype == "related"


def test_parse_media_type_unescapes_quoted_pairs() -> None:
    # Given a quoted-string with backslash escapes (RFC 9110 §5.6.4)
    value = r'text/plain; title="a \"b\" \\ c"; charset=utf-8'
    # When it is parsed
    media = parse_media_type(value)
    # Then the value is unquoted and unescaped
    assert media.param("title") == 'a "b" \\ c'
    assert media.param("missing") is None


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", UnsupportedMediaType, "missing or empty"),
        ("   ", UnsupportedMediaType, "missing or empty"),
        ("*/*", UnsupportedMediaType, "concrete media type"),
        ("image/*", UnsupportedMediaType, "concrete media type"),
        ("application", BadRequest, "expected type/subtype"),
        ("/dicom", BadRequest, "expected type/subtype"),
        ("application/dicom; charset", BadRequest, "'charset' has no value"),
        ("application/dicom; =x", BadRequest, "expected name=value"),
        ('application/dicom; x="unterminated', BadRequest, "expected a token or a double-quoted string"),
        ("application/dicom; x=1; X=2", BadRequest, "repeats the parameter 'x'"),
        ("application/dicom extra", BadRequest, "unexpected text at character 19"),
        ("application/dicom; a=b c", BadRequest, "unexpected text"),
        ("application/dicom\r\nX-Injected: 1", BadRequest, "unexpected text"),
        ("application/dicom; x=" + "a" * 9000, BadRequest, "at most 8192 characters"),
    ],
)
def test_parse_media_type_rejects_garbage_with_actionable_messages(
    value: str, error: type[Exception], message: str
) -> None:
    # Given a malformed Content-Type
    # When it is parsed
    with pytest.raises(error) as raised:
        parse_media_type(value)
    # Then the error type is exact and the message says what was expected
    assert type(raised.value) is error
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("media", "rendered"),
    [
        (DICOM_RELATED, 'multipart/related; type="application/dicom"; boundary=xyz'),
        (MediaType("Application/DICOM"), "application/dicom"),
        (MediaType("text/plain", (("x", ""),)), 'text/plain; x=""'),
        (MediaType("text/plain", (("x", 'a "b" \\'),)), r'text/plain; x="a \"b\" \\"'),
        (MediaType("multipart/related", (("boundary", "a b:c"),)), 'multipart/related; boundary="a b:c"'),
    ],
)
def test_str_renders_a_header_value_quoting_only_when_needed(media: MediaType, rendered: str) -> None:
    # Given a media type / When it is rendered / Then tokens stay bare and others are quoted
    assert str(media) == rendered
    # And the rendering parses back to the same media type
    assert parse_media_type(rendered) == media


def test_with_params_replaces_in_place_and_appends() -> None:
    # Given a media type with parameters
    # When parameters are set, one existing (case-insensitively) and one new
    updated = DICOM_RELATED.with_params({"BOUNDARY": "new"}, transfer_syntax="1.2.840.10008.1.2.1")
    # Then the existing one keeps its position, the new one is appended and the original is unchanged
    assert updated.params == (
        ("type", "application/dicom"),
        ("boundary", "new"),
        ("transfer-syntax", "1.2.840.10008.1.2.1"),
    )
    assert DICOM_RELATED.param("boundary") == "xyz"


@pytest.mark.parametrize(
    ("kind", "params"),
    [("no-slash", ()), ("a/b/c", ()), ("a/b", (("x", "line\r\nbreak"),)), ("a/b", (("x", "1"), ("X", "2")))],
)
def test_media_type_constructor_refuses_unrenderable_values(
    kind: str, params: tuple[tuple[str, str], ...]
) -> None:
    # Given values that cannot be rendered into a header / When constructed / Then ValueError
    with pytest.raises(ValueError, match=r"type/subtype|control|twice"):
        MediaType(kind, params)


# --- parse_accept -----------------------------------------------------------------------------


def test_parse_accept_sorts_by_q_stably_and_keeps_parameters() -> None:
    # Given an Accept header with q-values, wildcards and DICOM parameters
    value = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50; q=0.5, '
        "application/dicom+json, image/*;q=0.500, */*;q=0, application/json ; Q=1.0"
    )
    # When it is parsed
    ranges = parse_accept(value)
    # Then ranges are ordered by q descending, ties in the client's order, q=0 kept
    assert [(r.type, r.q) for r in ranges] == [
        ("application/dicom+json", 1.0),
        ("application/json", 1.0),
        ("multipart/related", 0.5),
        ("image/*", 0.5),
        ("*/*", 0.0),
    ]
    # And parameters other than q are kept
    assert ranges[2].param("transfer-syntax") == "1.2.840.10008.1.2.4.50"
    assert ranges[2].param("type") == "application/dicom"
    assert ranges[2].param("q") is None


def test_parse_accept_does_not_split_on_commas_inside_quoted_strings() -> None:
    # Given a quoted parameter value containing commas
    ranges = parse_accept('multipart/related; type="application/dicom, x"; q=0.9 , ,application/json,')
    # When parsed / Then there are two ranges and the quoted value is intact
    assert [str(r) for r in ranges] == [
        "application/json",
        'multipart/related; type="application/dicom, x"; q=0.9',
    ]


@pytest.mark.parametrize("value", ["", "  ", ",", " , ,"])
def test_parse_accept_empty_list(value: str) -> None:
    # Given an Accept header with no elements / When parsed / Then no ranges (caller treats as */*)
    assert parse_accept(value) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("application/json; q=1.5", "a q-value must be a number from 0 to 1"),
        ("application/json; q=0.1234", "at most three decimals"),
        ("application/json; q=abc", "q=abc"),
        ("application/json; q=1.001", "from 0 to 1"),
        ("*/json", "use */* or type/*"),
        ("application/json application/dicom", "or ',' and another media range"),
        ("application/json;", ""),
        ("text/html, " * 1000, "at most 8192 characters"),
    ],
)
def test_parse_accept_rejects_invalid_ranges(value: str, message: str) -> None:
    # Given an Accept header that breaks RFC 9110 §12.5.1
    if value == "application/json;":
        # (a trailing empty parameter is allowed, so this one is the valid control case)
        assert [r.type for r in parse_accept(value)] == ["application/json"]
        return
    # When it is parsed / Then BadRequest says what is wrong
    with pytest.raises(BadRequest, match=message.replace("*", r"\*")):
        parse_accept(value)


@pytest.mark.parametrize(
    ("accept", "candidate", "expected"),
    [
        ("*/*", "application/dicom", True),
        ("application/*", "application/dicom", True),
        ("image/*", "application/dicom", False),
        ('multipart/related; type="Application/DICOM"', 'multipart/related; type="application/dicom"', True),
        (
            "multipart/related; type=application/dicom",
            "multipart/related; type=application/octet-stream",
            False,
        ),
        ("multipart/related; transfer-syntax=*", "multipart/related; transfer-syntax=1.2.3", True),
        ("multipart/related; transfer-syntax=1.2.3", "multipart/related", False),
    ],
)
def test_media_range_matches(accept: str, candidate: str, expected: bool) -> None:
    # Given a media range / When matched against a media type / Then wildcards and parameters apply
    assert parse_accept(accept)[0].matches(parse_media_type(candidate)) is expected


def test_media_range_rejects_out_of_range_q() -> None:
    # Given a weight above 1 / When a range is built / Then ValueError
    with pytest.raises(ValueError, match="between 0 and 1"):
        MediaRange(MediaType("a/b"), 1.5)


# --- boundary_of --------------------------------------------------------------------------------

B70 = "b" * 69 + "="
ORTHANC_UUID = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
#: Orthanc's DICOMweb client: a UUID, "-", the same UUID (Plugin/DicomWebClient.cpp, StowClientJob).
B73 = f"{ORTHANC_UUID}-{ORTHANC_UUID}"
B1000 = "z" * 999 + "9"


@pytest.mark.parametrize(
    "boundary",
    [
        pytest.param("xyz", id="short"),
        pytest.param(B70, id="70-rfc2046-maximum"),
        pytest.param("a'()+_,-./:=? z", id="every-bchar"),
        pytest.param(B73, id="73-orthanc"),
        pytest.param(B1000, id="1000"),
        pytest.param("{{dicom*boundary}}#!", id="outside-bchars"),
        pytest.param('a"b\\c', id="quote-and-backslash"),
    ],
)
def test_boundary_of_accepts_the_boundaries_real_senders_use(boundary: str) -> None:
    # Given a multipart Content-Type with a boundary longer than RFC 2046's 70 characters, or
    # with characters outside its bchars, as Orthanc and hand-written requests have them
    media = MediaType("multipart/related", (("boundary", boundary),))
    # When the boundary is taken / Then it comes back as given
    assert boundary_of(media) == boundary


@pytest.mark.parametrize(
    ("boundary", "message"),
    [
        pytest.param("b" * 1001, "is 1001 characters long; this server accepts at most 1000", id="1001"),
        pytest.param("ends with space ", "ends with a space", id="trailing-space"),
        pytest.param("tab\there", "control or non-ASCII character", id="control"),
        pytest.param("caf\u00e9", "control or non-ASCII character", id="non-ascii"),
        pytest.param("", "is empty", id="empty"),
    ],
)
def test_boundary_of_refuses_boundaries_that_cannot_frame_a_body(boundary: str, message: str) -> None:
    # Given a boundary too long to be anything but abuse, or one that cannot be matched as a
    # line of ASCII bytes / When taken / Then a 400 says why
    media = MediaType("multipart/related", (("boundary", boundary),))
    with pytest.raises(MultipartError, match=message) as raised:
        boundary_of(media)
    assert raised.value.status == 400


def test_boundary_of_explains_missing_boundary_and_non_multipart() -> None:
    # Given no boundary / When taken / Then the message shows what was expected
    with pytest.raises(MultipartError, match="no boundary parameter; expected"):
        boundary_of(MediaType("multipart/related", (("type", "application/dicom"),)))
    # Given a non-multipart type / When taken / Then 415
    with pytest.raises(UnsupportedMediaType, match="Expected a multipart/related body"):
        boundary_of(MediaType("application/dicom"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"--abc\r\n\r\nA\r\n--abc--", "abc", id="body-uses-it-unquoted"),
        pytest.param(b"--'abc'\r\n\r\nA\r\n--'abc'--", "'abc'", id="body-uses-the-quotes"),
        pytest.param(b"no delimiter at all", "'abc'", id="neither"),
    ],
)
def test_boundary_of_lets_the_body_decide_a_single_quoted_boundary(body: bytes, expected: str) -> None:
    # Given boundary='abc' as a hand-written curl -H line has it (' is also an RFC 2046 bchar)
    media = parse_media_type("multipart/related; type='application/dicom'; boundary='abc'")
    # When the boundary is taken with the body / Then the one the body uses is chosen
    assert boundary_of(media, body=body) == expected
    # And without a body the value is taken as it stands
    assert boundary_of(media) == "'abc'"


def test_what_we_write_stays_within_rfc2046() -> None:
    # Given boundaries this server accepts but RFC 2046 does not / When used to write a body
    # or a Content-Type / Then they are refused: liberal in what we accept, not in what we send
    with pytest.raises(ValueError, match="73 characters long; RFC 2046"):
        multipart_content_type(B73, "application/dicom")
    with pytest.raises(ValueError, match="characters RFC 2046"):
        encode_multipart([({}, b"x")], boundary="a*b")


# --- split_parts: valid bodies ----------------------------------------------------------------

CT = b"Content-Type: application/dicom\r\n"


@pytest.mark.parametrize(
    ("body", "boundary", "expected"),
    [
        pytest.param(b"--xyz\r\n" + CT + b"\r\nAAA\r\n--xyz--\r\n", "xyz", [b"AAA"], id="simple"),
        pytest.param(
            b"preamble text\r\n--xyz\r\n"
            + CT
            + b"\r\nA\r\n--xyz\r\n"
            + CT
            + b"\r\nB\r\n--xyz--\r\nepilogue --xyz",
            "xyz",
            [b"A", b"B"],
            id="preamble-epilogue",
        ),
        pytest.param(
            b"--xyz\nContent-Type: a/b\n\nA\n--xyz\nContent-Type: a/b\n\nB\r\n--xyz--",
            "xyz",
            [b"A", b"B"],
            id="lf-only",
        ),
        pytest.param(
            b"--xyz \t\r\n" + CT + b"\r\nA\r\n--xyz  \r\n" + CT + b"\r\nB\r\n--xyz--  ",
            "xyz",
            [b"A", b"B"],
            id="padding",
        ),
        pytest.param(b"--xyz\r\n" + CT + b"\r\n\r\n--xyz--", "xyz", [b""], id="empty-body"),
        pytest.param(b"--xyz\r\n" + CT + b"\r\n--xyz--", "xyz", [b""], id="headers-only"),
        pytest.param(b"--xyz\r\n\r\nRAW\r\n--xyz--", "xyz", [b"RAW"], id="no-headers"),
        pytest.param(b"--xyz\r\n\r\n--xyz--", "xyz", [b""], id="empty-part"),
        pytest.param(
            b"--xyz\r\n"
            + CT
            + b"\r\nx--xyz\r\n --xyz\r\n\r\n--xyzz\r\n--xyz-\r\n--xyz\r\n"
            + CT
            + b"\r\nB\r\n--xyz--",
            "xyz",
            [b"x--xyz\r\n --xyz\r\n\r\n--xyzz\r\n--xyz-", b"B"],
            id="boundary-like-bytes",
        ),
        pytest.param(
            b"--xyz\r\n" + CT + b"\r\nends with CR\r\r\n--xyz--", "xyz", [b"ends with CR\r"], id="trailing-cr"
        ),
        pytest.param(
            f"--{B70}\r\n".encode() + CT + f"\r\nA\r\n--{B70}--".encode(), B70, [b"A"], id="70-char-boundary"
        ),
        pytest.param(b"--a b\r\n" + CT + b"\r\nA\r\n--a b--", "a b", [b"A"], id="space-in-boundary"),
        pytest.param(
            f"--{B73}\r\n".encode() + CT + b"Content-Length: 1\r\n\r\nA\r\n" + f"--{B73}--".encode(),
            B73,
            [b"A"],
            id="73-char-boundary-orthanc",
        ),
        pytest.param(
            f"--{B1000}\r\n\r\nA\r\n--{B1000}\r\n\r\nB\r\n--{B1000}--".encode(),
            B1000,
            [b"A", b"B"],
            id="1000-char-boundary",
        ),
        pytest.param(
            b"--**x**\r\n" + CT + b"\r\nA\r\n--**x**--", "**x**", [b"A"], id="boundary-outside-bchars"
        ),
        pytest.param(
            b"--xyz\r\nContent-Type: application/dicom;\r\n\ttransfer-syntax=1.2.840.10008.1.2.1\r\n"
            b"\r\nA\r\n--xyz--",
            "xyz",
            [b"A"],
            id="folded-header",
        ),
        pytest.param(
            b"--xyz\r\nContent-Type : a/b\r\n\r\nA\r\n--xyz--", "xyz", [b"A"], id="space-before-colon"
        ),
    ],
)
def test_split_parts_valid_bodies(body: bytes, boundary: str, expected: list[bytes]) -> None:
    # Given a well-formed (or leniently acceptable) multipart/related body
    # When it is split
    parts = split_parts(body, boundary)
    # Then the part bodies are exact, without the line break before each delimiter
    assert bodies(parts) == expected


def test_split_parts_headers_are_lowercased_and_content_type_parsed() -> None:
    # Given a part with mixed-case headers and an unquoted type parameter
    body = (
        b"--xyz\r\nCONTENT-Type:  multipart/related; type=application/dicom  \r\n"
        b"Content-Location: /studies/1\r\nX-A: 1\r\nx-a: 2\r\n\r\nA\r\n--xyz--"
    )
    # When split
    (part,) = split_parts(body, "xyz")
    # Then header names are lower-cased, values trimmed, repeated list fields joined
    assert dict(part.headers) == {
        "content-type": "multipart/related; type=application/dicom",
        "content-location": "/studies/1",
        "x-a": "1, 2",
    }
    assert part.content_type == MediaType("multipart/related", (("type", "application/dicom"),))


def test_folded_and_spaced_headers_read_as_one_field() -> None:
    # Given part headers folded over lines (RFC 5322 §2.2.3) and with a space before the colon,
    # as MIME libraries and hand-written bodies have them
    body = (
        b"--xyz\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"X-Note : one\r\n\t  two\r\n\r\nA\r\n--xyz--"
    )
    # When split
    (part,) = split_parts(body, "xyz")
    # Then each field is one value, joined with a single space, and parses as a media type
    assert dict(part.headers) == {
        "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        "x-note": "one two",
    }
    assert part.content_type == MediaType("application/dicom", (("transfer-syntax", "1.2.840.10008.1.2.1"),))


def test_part_without_content_type() -> None:
    # Given a part without headers / When split / Then content_type is None
    (part,) = split_parts(b"--xyz\r\n\r\nA\r\n--xyz--", "xyz")
    assert part.content_type is None


def test_split_parts_is_zero_copy_for_bytes_and_memoryviews() -> None:
    # Given a body as bytes and as a partial memoryview of a larger buffer
    body = b"--xyz\r\n" + CT + b"\r\nAAA\r\n--xyz--"
    backing = bytearray(b"junk" + body)
    # When split
    (from_bytes,) = split_parts(body, "xyz")
    (from_view,) = split_parts(memoryview(backing)[4:], "xyz")
    # Then part bodies are views of the caller's buffer, not copies
    assert from_bytes.body.obj is body
    assert from_view.body.obj is backing
    assert bytes(from_view.body) == b"AAA"
    backing[-10] = ord("Z")
    assert bytes(from_view.body) == b"AAZ"


# --- split_parts: invalid bodies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "no boundary delimiter '--xyz'", id="empty"),
        pytest.param(b"no delimiter here --xyz", "no boundary delimiter", id="no-delimiter"),
        pytest.param(b"--xyz--\r\n", "has no parts", id="no-parts"),
        pytest.param(
            b"--xyz\r\n" + CT + b"\r\nAAA", "Part 1 is not followed by a boundary delimiter", id="truncated"
        ),
        pytest.param(
            b"--xyz\r\n" + CT + b"\r\nA\r\n--xyz\r\n" + CT + b"\r\nB\r\n--xyz",
            "Part 2 is not followed by a boundary delimiter: "
            "the body is truncated or the close delimiter '--xyz--' is missing",
            id="missing-close",
        ),
        pytest.param(
            b"--xyz\r\n" + CT + b"A\r\n--xyz--",
            "Part 1: the header section is not followed by an empty line (CRLF CRLF)",
            id="missing-blank-line",
        ),
        pytest.param(
            b"--xyz\r\nContent-Type: a/b\r\n--xyz--",
            "Part 1: the header section is not followed by an empty line",
            id="no-blank-line-no-body",
        ),
        pytest.param(
            b"--xyz\r\nnot a header\r\n\r\nA\r\n--xyz--", "Part 1: header line 1 has no ':'", id="no-colon"
        ),
        pytest.param(b"--xyz\r\nBad Name: x\r\n\r\nA\r\n--xyz--", "invalid field name", id="space-in-name"),
        pytest.param(
            b"--xyz\r\n  folded: x\r\n\r\nA\r\n--xyz--",
            "Part 1: the header section starts with a continuation line",
            id="continuation-first",
        ),
        pytest.param(b"--xyz\r\nA: 1\x00\r\n\r\nA\r\n--xyz--", "control characters", id="nul-in-value"),
        pytest.param(b"--xyz\r\nA: 1\r2\r\n\r\nA\r\n--xyz--", "control characters", id="bare-cr-in-value"),
        pytest.param(
            b"--xyz\r\n" + CT + CT + b"\r\nA\r\n--xyz--",
            "content-type header appears more than once",
            id="dup-ct",
        ),
        pytest.param(
            b"--xyz\r\n" + CT + b"\r\nA\r\n--xyz\r\nX: " + b"v" * 20000 + b"\r\n\r\nB\r\n--xyz--",
            "Part 2: no empty line ends the header section within 16384 bytes",
            id="header-too-big",
        ),
        pytest.param(
            b"--xyz\r\nX: y\r\n" + b"v" * 20000 + b"\r\n--xyz--",
            "Part 1: no empty line ends the header section within 16384 bytes",
            id="unterminated-headers-big-body",
        ),
    ],
)
def test_split_parts_rejects_malformed_bodies(body: bytes, message: str) -> None:
    # Given a malformed multipart/related body
    # When it is split
    with pytest.raises(MultipartError) as raised:
        split_parts(body, "xyz")
    # Then the message says what is wrong and where
    assert message in str(raised.value)


@pytest.mark.parametrize(("value_size", "ok"), [(45, True), (46, False)])
def test_max_header_bytes_is_inclusive(value_size: int, ok: bool) -> None:
    # Given a header section of exactly 50 bytes, or 51
    body = b"--xyz\r\nX: " + b"v" * value_size + b"\r\n\r\nA\r\n--xyz--"
    # When split with max_header_bytes=50
    if ok:
        # Then 50 bytes are accepted
        assert bodies(split_parts(body, "xyz", max_header_bytes=50)) == [b"A"]
        return
    # And 51 bytes are refused, naming the limit
    with pytest.raises(MultipartError, match="Part 1: no empty line ends the header section within 50 bytes"):
        split_parts(body, "xyz", max_header_bytes=50)


def test_split_parts_rejects_invalid_boundary_argument_eagerly() -> None:
    # Given a 1001-character boundary / When iter_parts is called / Then it fails before iteration
    with pytest.raises(MultipartError, match="is 1001 characters long"):
        iter_parts(b"", "b" * 1001)


def test_errors_show_a_long_boundary_cut_short() -> None:
    # Given a body without the 1000-character boundary it names / When split
    with pytest.raises(MultipartError) as raised:
        split_parts(b"--other\r\n\r\nA\r\n--other--", B1000)
    # Then the message names the boundary without repeating all of it
    assert "(1000 characters)" in raised.value.message
    assert len(raised.value.message) < 300


def test_iter_parts_yields_good_parts_before_a_later_error() -> None:
    # Given a body whose second part is truncated
    body = b"--xyz\r\n" + CT + b"\r\nA\r\n--xyz\r\n" + CT + b"\r\nB"
    parts = iter_parts(body, "xyz")
    # When iterated / Then the first part arrives, then the error names part 2
    assert bytes(next(parts).body) == b"A"
    with pytest.raises(MultipartError, match="Part 2 is not followed"):
        next(parts)


def test_too_many_parts_is_rejected_quickly() -> None:
    # Given a 10,000-part body
    body, boundary = encode_multipart([({"Content-Type": "application/dicom"}, b"x" * 10)] * 10_000)
    # When it is split with the default limit of 1000 parts
    started = time.process_time()  # this process's CPU, not a busy machine's wall clock
    with pytest.raises(TooManyParts, match="more than 1000 parts") as raised:
        split_parts(body, boundary)
    # Then it fails fast with 413 (about 6 ms of CPU; the bound only catches runaway work)
    assert time.process_time() - started < 1.0
    assert raised.value.status == 413


def test_max_parts_is_inclusive() -> None:
    # Given a body with exactly max_parts parts / When split / Then all are returned
    body, boundary = encode_multipart([({}, b"p")] * 3)
    assert len(split_parts(body, boundary, max_parts=3)) == 3
    # And one fewer allowed part fails, naming the limit
    with pytest.raises(TooManyParts, match="more than 2 parts"):
        split_parts(body, boundary, max_parts=2)


def test_large_part_body_is_fast() -> None:
    # Given a 50 MB single part full of near-miss delimiters
    payload = b"\r\n--xyq" * (50 * 1024 * 1024 // 7)
    body = b"--xyz\r\n" + CT + b"\r\n" + payload + b"\r\n--xyz--"
    # When split
    started = time.process_time()
    (part,) = split_parts(body, "xyz")
    # Then the body is found intact in bounded time
    assert part.body.nbytes == len(payload)
    assert time.process_time() - started < 2.0


@pytest.mark.parametrize("boundary", ["xyz", B73, B1000], ids=["3", "73", "1000"])
def test_long_boundaries_cost_no_more_than_short_ones(boundary: str) -> None:
    # Given a 10 MiB part (the API's request ceiling) full of near-miss delimiters for this
    # boundary: the delimiter with its last character changed, and the whole delimiter
    # followed by a non-delimiter byte
    dash = b"\r\n--" + boundary.encode()
    near_misses = dash[:-1] + b"#" + dash + b"X"
    payload = near_misses * (10 * 1024 * 1024 // len(near_misses))
    body = dash[2:] + b"\r\n" + CT + b"\r\n" + payload + dash + b"--"
    # When split
    started = time.process_time()
    (part,) = split_parts(body, boundary)
    # Then the body is found intact, in time linear in the body (not in body x boundary)
    assert part.body.nbytes == len(payload)
    assert time.process_time() - started < 2.0


# --- encode_multipart ----------------------------------------------------------------------------


def test_encode_then_split_round_trip() -> None:
    # Given parts with headers and bodies, one with its own Content-Length
    given: list[tuple[dict[str, str], bytes | memoryview]] = [
        ({"Content-Type": "application/dicom"}, b"\x00DICM\r\n--"),
        ({"Content-Type": "application/octet-stream", "Content-Length": "0"}, memoryview(b"")),
    ]
    # When encoded and split again
    body, boundary = encode_multipart(given)
    parts = split_parts(body, boundary)
    # Then bodies and headers survive, and Content-Length is added only when absent
    assert bodies(parts) == [b"\x00DICM\r\n--", b""]
    assert dict(parts[0].headers) == {"content-type": "application/dicom", "content-length": "9"}
    assert dict(parts[1].headers) == {"content-type": "application/octet-stream", "content-length": "0"}
    assert 1 <= len(boundary) <= 70
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())


@pytest.mark.parametrize(
    ("parts", "boundary", "message"),
    [
        ([({"X-Evil": "a\r\nSet-Cookie: x"}, b"")], None, "contains CR, LF"),
        ([({"X-Evil": "a\nb"}, b"")], None, "contains CR, LF"),
        ([({"Bad Name": "a"}, b"")], None, "not an RFC 9110 token"),
        ([({}, b"data --xyz data")], "xyz", "the boundary occurs in part 1"),
        ([({}, b"")], "b" * 71, "71 characters"),
        ([], None, "at least one part"),
    ],
)
def test_encode_multipart_rejects_bad_input(
    parts: list[tuple[dict[str, str], bytes]], boundary: str | None, message: str
) -> None:
    # Given headers with line breaks, a colliding boundary or no parts / When encoded / Then ValueError
    with pytest.raises(ValueError, match=message):
        encode_multipart(parts, boundary=boundary)


def test_multipart_content_type_renders_parameters() -> None:
    # Given a boundary, a part type and an extra parameter
    # When the Content-Type is rendered
    value = multipart_content_type("abc", "application/DICOM", transfer_syntax="1.2.840.10008.1.2.1")
    # Then type is quoted, tokens are not, and it parses back with the same boundary
    assert (
        value
        == 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; boundary=abc'
    )
    assert boundary_of(parse_media_type(value)) == "abc"
    assert (
        multipart_content_type("a b", "application/dicom")
        == 'multipart/related; type="application/dicom"; boundary="a b"'
    )
    with pytest.raises(ValueError, match="twice"):
        multipart_content_type("abc", "application/dicom", type="x")


# --- properties ------------------------------------------------------------------------------------

TRICKY = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--",
    b"--dicomweb-",
    b"\r\n--dicomweb-0123456789abcdef--\r\n",
    b"--xyz",
    b" \t",
]
FRAMING = [*TRICKY, CT, b"A: b", b"x", b"--xyz\r\n", b"\r\n--xyz\r\n", b"\r\n--xyz--", b"\r\n\r\n"]
tricky_bytes = st.lists(st.one_of(st.sampled_from(TRICKY), st.binary(max_size=20)), max_size=8).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(tricky_bytes, min_size=1, max_size=6))
def test_round_trip_is_exact_for_arbitrary_bodies(payloads: list[bytes]) -> None:
    # Given arbitrary part bodies, including bytes that look like delimiters
    # When encoded with a generated boundary and split again
    body, boundary = encode_multipart([({"Content-Type": "application/octet-stream"}, p) for p in payloads])
    parts = split_parts(body, boundary)
    # Then every body comes back byte for byte
    assert bodies(parts) == payloads


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(FRAMING), max_size=30).map(b"".join),
    )
)
def test_split_parts_on_arbitrary_bytes_only_raises_multipart_errors(body: bytes) -> None:
    # Given arbitrary bytes / When split with small limits
    try:
        parts = split_parts(body, "xyz", max_parts=5, max_header_bytes=64)
    except (MultipartError, TooManyParts):
        return  # Then either a multipart error is raised ...
    # ... or parts come back whose bodies are views into the input
    assert 1 <= len(parts) <= 5
    assert all(part.body.obj is body for part in parts)
