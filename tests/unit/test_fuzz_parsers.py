"""Property-based fuzzing of every parser a request reaches (issue 5: fuzz suite).

Each property feeds generated, mostly hostile input to one parser and checks the
contract the handlers rely on: the parser returns a result or raises one of the
library's own errors with a 4xx status (:class:`DicomWebError`, or
:class:`InstanceRejected` for one instance of a STOW request); never ``IndexError``,
``UnicodeDecodeError``, ``struct.error``, ``RecursionError``... (those become 500s).
What a parser accepts must be safe to use: UIDs that become storage keys are valid, a
parsed URI prints back to itself, error messages carry no control characters.

Every example has a deadline (bounded time per input); runs are derandomized, so CI
sees the same examples every time. Handler-level fuzzing (status codes, headers, S3
keys) is in test_fuzz_handlers.py; one test per known malicious input class is in
test_malicious_inputs.py.
"""

from __future__ import annotations

import base64
import json
import re
import string
import struct
import warnings
import zlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from dicomweb_core.config import DuplicatePolicy, Limits, Settings
from dicomweb_core.dicom.failures import FailureReason, InstanceRejected
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.dicom.uid import is_valid_uid
from dicomweb_core.errors import DicomWebError, MultipartError, TooManyParts
from dicomweb_core.index.normalize import person_name
from dicomweb_core.qido.attributes import Level, matchable_keywords, resolve
from dicomweb_core.qido.matching import matches_value
from dicomweb_core.qido.query import MatchKind, Term, parse_query
from dicomweb_core.storage import instance_key, metadata_key, new_write_id
from dicomweb_core.stow.service import instance_payloads
from dicomweb_core.wado import media
from dicomweb_core.web import reply
from dicomweb_core.web import responses as http
from dicomweb_core.web.mediatype import MediaType, parse_accept, parse_media_type
from dicomweb_core.web.multipart import split_parts
from dicomweb_core.web.negotiation import negotiate
from dicomweb_core.web.uri import DicomWebURI
from infra.datasets.generate import make_dataset, make_phi_rich, to_part10

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BASE = "https://dicom.example.test"
UID_RE = r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*"
KEY_RE = re.compile(rf"studies/{UID_RE}/series/{UID_RE}/instances/{UID_RE}/[0-9a-f]{{24}}\.(?:dcm|json)")
# Any C0 control character or DEL: what must never come back from client input.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Parsers are pure and fast: many examples, a tight deadline.
PARSER = settings(
    max_examples=200,
    deadline=timedelta(milliseconds=500),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Reading a Part 10 file runs pydicom: fewer examples, a wider deadline.
INGEST = settings(PARSER, max_examples=100, deadline=timedelta(seconds=2))


def assert_refused_cleanly(error: BaseException) -> None:
    """A library error with a 4xx status whose message carries no control characters."""
    assert isinstance(error, DicomWebError), f"{type(error).__name__}: {error}"
    assert 400 <= error.status < 500, error.status
    assert not CONTROL_RE.search(error.message), repr(error.message)


def outcome(call: Callable[[], Any]) -> Any:
    """The result of ``call``, or the DicomWebError it raised (any other exception propagates)."""
    try:
        return call()
    except DicomWebError as error:
        assert_refused_cleanly(error)
        return error


# ---------------------------------------------------------------------- strategies
valid_uids = (
    st.lists(
        st.one_of(st.just("0"), st.integers(min_value=1, max_value=10**12).map(str)), min_size=1, max_size=8
    )
    .map(".".join)
    .filter(lambda u: len(u) <= 64)
)

HOSTILE_TEXT = [
    "..",
    ".",
    "../",
    "..%2F",
    "%2e%2e",
    "%2E%2E%2F",
    "%2F",
    "%00",
    "\0",
    "1.2\0",
    "1.2.3\0\0\0\0",
    "\r\n",
    "%0d%0aX-Injected:%201",
    "\r\nSet-Cookie: a=b",
    "\\",
    "..\\..\\",
    "~",
    "*",
    "?",
    "'",
    '"',
    "<script>",
    "%",
    "%%",
    "%zz",
    "\u0661",
    "\uff11",
    "\u00b2",
    "\u200b",
    "\ud7ff",
    "\U0001f600",
    " ",
    "\t",
    "",
    "9" * 70,
    "1." + "2" * 63,
    "0x10",
    "-1",
    "+1",
    "1e9",
]
hostile_text = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=30),
    st.text(alphabet=string.printable, max_size=30),
)

SEGMENTS = [
    "studies",
    "series",
    "instances",
    "frames",
    "metadata",
    "rendered",
    "thumbnail",
    "bulkdata",
    "1",
    "1,2",
    "0",
    "deid",
    "1.2.840.10008.1.2.1",
]
path_segment = st.one_of(st.sampled_from(SEGMENTS), valid_uids, hostile_text)


@st.composite
def dicomweb_paths(draw: st.DrawFn) -> str:
    """Paths shaped like DICOMweb resources, with hostile segments anywhere."""
    segments = draw(st.lists(path_segment, max_size=10))
    if draw(st.booleans()):  # the resource skeleton with some values replaced
        skeleton = ["studies", "S", "series", "S", "instances", "S", "frames", "F"]
        cut = draw(st.integers(min_value=2, max_value=len(skeleton)))
        segments = [draw(path_segment) if s in "SF" else s for s in skeleton[:cut]] + segments[:1]
    path = "/" + draw(st.sampled_from(["/", "//"])).join(segments)
    if draw(st.booleans()):
        path = quote(path, safe=draw(st.sampled_from(["/", "/.", "", "/%"])))
    return path


# ---------------------------------------------------------------------- the URI parser
@PARSER
@given(dicomweb_paths())
@example("/studies/../../etc/passwd")
@example("/studies/%2e%2e/series/%2e%2e/instances/%2e%2e")
@example("/studies/1.2%2F..%2F..%2Fetc/series/1/instances/1")
@example("/studies/1.2.3%00/series/1.2/instances/1.3")
@example("/studies/1.2/series/1.3/instances/1.4/frames/1,99999999999")
def test_uri_parser_returns_a_valid_resource_or_a_4xx(path: str) -> None:
    # Given any path / When it is parsed
    result = outcome(lambda: DicomWebURI.from_path(BASE, path))
    if isinstance(result, DicomWebError):
        return  # Then it is refused with a clean 4xx ...
    # ... or every UID in it is valid and it prints back to itself
    uids = [u for u in (result.study, result.series, result.instance) if u is not None]
    assert all(is_valid_uid(u) for u in uids)
    assert DicomWebURI.from_path(BASE, result.path) == result
    assert result.url == BASE + result.path
    assert ".." not in result.path and "%" not in result.path and "\0" not in result.path
    if result.instance is not None:
        # And the keys it can become stay under studies/<valid uid>/
        key = instance_key(*uids, new_write_id())
        assert KEY_RE.fullmatch(key)
        assert KEY_RE.fullmatch(metadata_key(key))


# ---------------------------------------------------------------------- QIDO query parsing
QUERY_KEYS = [
    *matchable_keywords(),
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
    "accept",
    "charset",
    "00100010",
    "0020000D",
    "00091010",
    "FFFFFFFF",
    "PatientAge",
    "RequestAttributesSequence.ScheduledProcedureStepID",
    "RequestAttributesSequence.Nope",
    "a.b.c.d",
    "",
    "Limit",
    "patientname",
]
QUERY_VALUES = [
    "",
    "*",
    "?",
    "**",
    "Doe*",
    "*^J?n*",
    "20240101",
    "20240101-",
    "-20240101",
    "20240101-20241231",
    "20241231-20240101",
    "20230229",
    "2300-0100",
    "12",
    "1200",
    "120000.123456",
    "12:00:00",
    "25",
    "1.2.3",
    "1.2.3,1.2.4",
    "1.02",
    "CT",
    "CT,MR",
    ",",
    "-",
    "--",
    "true",
    "TRUE",
    "all",
    "0",
    "1000",
    "1001",
    "999999999",
    "1234567890",
    "\u00b2",
    "\u0661\u0662",
    "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661",
    "x" * 300,
]
query_pair = st.tuples(
    st.one_of(st.sampled_from(QUERY_KEYS), hostile_text),
    st.one_of(st.sampled_from(QUERY_VALUES), hostile_text, valid_uids),
)


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    """Query strings as clients send them: encoded, raw, or mangled."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(st.text(max_size=200))
    pairs = draw(st.lists(query_pair, max_size=8))
    encode = draw(st.sampled_from(["quote", "raw", "plus"]))
    rendered = []
    for key, value in pairs:
        if encode == "quote":
            rendered.append(f"{quote(key, safe='')}={quote(value, safe='')}")
        elif encode == "plus":
            rendered.append(f"{quote(key, safe='')}={quote(value, safe=',*').replace('%20', '+')}")
        else:
            rendered.append(f"{key}={value}")
    return draw(st.sampled_from(["&", ";", "&&"])).join(rendered)


@PARSER
@given(st.sampled_from(list(Level)), query_strings(), st.one_of(st.none(), valid_uids))
@example(Level.STUDY, "limit=%C2%B2", None)
@example(Level.STUDY, "offset=%D9%A1", None)
@example(Level.STUDY, "StudyDate=" + "%D9%A2" * 8, None)
@example(Level.SERIES, "SeriesNumber=%D9%A2", None)
@example(Level.STUDY, "StudyTime=%D9%A1%D9%A2", None)
@example(Level.STUDY, "PatientName=%0D%0AX-Injected:%201", None)
@example(Level.STUDY, "includefield=" + ".".join(["00081140"] * 1000), None)
def test_qido_query_parser_returns_a_query_or_a_400(level: Level, raw: str, study: str | None) -> None:
    # Given any query string / When it is parsed
    result = outcome(lambda: parse_query(level, raw, study=study))
    if isinstance(result, DicomWebError):
        return  # Then it is refused with a clean 400 ...
    # ... or the parsed query is within its bounds
    assert 0 <= result.limit <= 999_999_999
    assert 0 <= result.offset <= 999_999_999
    for term in result.terms:
        assert term.attribute.level is not None and term.attribute.level <= level
        if term.attribute.vr == "UI" and term.kind in (MatchKind.SINGLE, MatchKind.LIST):
            assert all(is_valid_uid(v) for v in term.values)  # UIDs that can become keys
        if term.attribute.vr in ("DA", "TM", "IS") and term.kind is MatchKind.SINGLE:
            assert term.value.isascii(), term  # DICOM numbers, dates and times are ASCII digits


# Wildcard matching (PS3.4 C.2.2.2.4) must stay polynomial (pattern x text steps): a pattern
# of many '*' must not backtrack exponentially. The oracle is a plain dynamic programme.
def _wildcard_oracle(pattern: str, text: str) -> bool:
    matched = [True] + [False] * len(text)  # matched[j]: the pattern so far matches text[:j]
    for ch in pattern:
        if ch == "*":
            for j in range(1, len(text) + 1):
                matched[j] = matched[j] or matched[j - 1]
        else:
            matched = [False] + [matched[j] and ch in ("?", text[j]) for j in range(len(text))]
    return matched[-1]


wildcard_alphabet = st.sampled_from("ab*?^ ")


@PARSER
@given(
    st.text(alphabet=wildcard_alphabet, min_size=1, max_size=40).filter(lambda p: "*" in p or "?" in p),
    st.text(alphabet="ab^ ", max_size=60),
    st.sampled_from(["StudyDescription", "AccessionNumber", "PatientName"]),
)
@example("*a" * 30 + "b", "a" * 60, "StudyDescription")
@example("*?" * 40, "ab" * 30, "StudyDescription")
@example("*a" * 30 + "b", "a" * 60, "PatientName")
def test_wildcard_matching_is_correct_and_fast(pattern: str, text: str, keyword: str) -> None:
    # Given a wildcard key and a stored value
    term = Term(resolve(keyword), MatchKind.WILDCARD, (pattern,))
    value: Any = {"Alphabetic": text} if keyword == "PatientName" else text
    # When it is matched (under the deadline: no exponential backtracking)
    got = matches_value(term, value)
    # Then the answer is the wildcard semantics of PS3.4 C.2.2.2.4 (names compared folded)
    if not text:
        assert got is False
    elif keyword == "PatientName":
        assert got == _wildcard_oracle(person_name(pattern), person_name(text))
    else:
        assert got == _wildcard_oracle(pattern, text)


# ---------------------------------------------------------------------- media types and Accept
MEDIA_PIECES = [
    "multipart/related",
    "application/dicom",
    "application/dicom+json",
    "application/json",
    "*/*",
    "image/*",
    ";",
    "; ",
    ",",
    "=",
    '"',
    "\\",
    " type=application/dicom",
    'type="application/dicom"',
    "transfer-syntax=*",
    "transfer-syntax=1.2.840.10008.1.2.1",
    "boundary=xyz",
    'boundary="a b"',
    "q=0.5",
    "q=1.0001",
    "q=",
    "\r\n",
    "\rX-Injected: 1",
    "\0",
    "\u00e9",
    "\u2028",
]
header_values = st.one_of(
    st.lists(st.one_of(st.sampled_from(MEDIA_PIECES), st.text(max_size=8)), max_size=12).map("".join),
    st.text(max_size=100),
)


@PARSER
@given(header_values)
def test_content_type_parser_returns_a_media_type_or_a_4xx(value: str) -> None:
    # Given any Content-Type value / When parsed
    result = outcome(lambda: parse_media_type(value))
    if isinstance(result, DicomWebError):
        return
    # Then a parsed media type renders to a header value that parses back to itself
    rendered = str(result)
    assert not re.search(r"[\r\n\0]", rendered)
    assert parse_media_type(rendered) == result


@PARSER
@given(header_values)
def test_accept_parser_and_negotiation_return_an_offer_or_a_4xx(value: str) -> None:
    # Given any Accept value / When parsed and negotiated against the QIDO offers
    result = outcome(lambda: parse_accept(value))
    offers = [MediaType("application/dicom+json"), MediaType("application/json")]
    chosen = outcome(lambda: negotiate(value, offers))
    # Then the answer is ranges sorted by q, and an offer or 406/400
    if not isinstance(result, DicomWebError):
        assert [r.q for r in result] == sorted((r.q for r in result), reverse=True)
    assert chosen in offers or isinstance(chosen, DicomWebError)
    # And WADO's negotiation (instances, frames, bulk data) also answers cleanly
    for part in (media.DICOM, media.OCTET_STREAM):
        outcome(
            lambda part=part: media.choose(
                value,
                part_types=lambda t, part=part: t == part,
                default_part=part,
                single_part=True,
                producible=lambda ts: media.can_produce(ts, ExplicitVRLittleEndian),
            )
        )


# ---------------------------------------------------------------------- multipart and STOW bodies
CT = b"Content-Type: application/dicom\r\n"
FRAMING = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--",
    b" \t",
    CT,
    b"Content-Type: application/dicom+json\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Location: http://169.254.169.254/latest/meta-data/\r\n",
    b"A: \x00\r\n",
    b" folded\r\n",
    b"x",
    b"\xff\xfe",
    b"--B\r\n",
    b"\r\n--B\r\n",
    b"\r\n--B--",
    b"--B--\r\n",
    b"\r\n\r\n",
    b"DICM",
]
boundaries = st.one_of(
    st.sampled_from(["B", "xyz", "a b", "=_-'()+,./:?", "b" * 70, "b" * 73, "{*#}", "z" * 1000, "z" * 1001]),
    st.text(max_size=72),
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(boundaries)
    try:
        token = boundary.encode("latin-1")
    except UnicodeEncodeError:
        token = b"B"
    pieces = [p.replace(b"--B", b"--" + token) for p in FRAMING]
    body = draw(
        st.one_of(
            st.lists(st.one_of(st.sampled_from(pieces), st.binary(max_size=16)), max_size=40).map(b"".join),
            st.binary(max_size=200),
        )
    )
    return body, boundary


@PARSER
@given(multipart_bodies(), st.sampled_from(["bytes", "view", "partial"]))
def test_multipart_parser_with_any_boundary_only_raises_multipart_errors(
    case: tuple[bytes, str], kind: str
) -> None:
    # Given any body and any boundary, as bytes, a whole memoryview or a partial one
    body, boundary = case
    backing = b"junk" + body
    data: bytes | memoryview = {
        "bytes": body,
        "view": memoryview(body),
        "partial": memoryview(backing)[4:],
    }[kind]
    # When it is split with small limits
    try:
        parts = split_parts(data, boundary, max_parts=5, max_header_bytes=128)
    except (MultipartError, TooManyParts) as error:
        assert_refused_cleanly(error)  # Then it is refused with a 4xx ...
        return
    # ... or the parts are the same whichever buffer type held the body
    assert 1 <= len(parts) <= 5
    again = split_parts(body, boundary, max_parts=5, max_header_bytes=128)
    assert [bytes(p.body) for p in parts] == [bytes(p.body) for p in again]
    assert [dict(p.headers) for p in parts] == [dict(p.headers) for p in again]
    for part in parts:  # header values never carry CR, LF or other controls (a tab is allowed)
        assert not any(re.search(r"[\x00-\x08\x0a-\x1f\x7f]", v) for v in part.headers.values())


#: Boundaries the parser accepts beyond RFC 2046: printable US-ASCII, up to 1000 characters.
received_boundaries = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=1000
)


@PARSER
@given(
    received_boundaries,
    st.lists(st.binary(max_size=64), min_size=1, max_size=5),
    st.sampled_from([b"\r\n", b"\n"]),
    st.booleans(),
)
def test_any_accepted_boundary_frames_parts_exactly(
    boundary: str, payloads: list[bytes], eol: bytes, folded: bool
) -> None:
    # Given payloads framed by hand (the encoder writes only RFC 2046 boundaries) with any
    # boundary the parser accepts, CRLF or LF line ends, and a folded header or not
    dash = b"--" + boundary.encode()
    assume(not any(dash in payload for payload in payloads))
    assume(eol == b"\r\n" or not any(payload.endswith(b"\r") for payload in payloads))
    head = (
        b"Content-Type: application/dicom;" + eol + b"\ttransfer-syntax=1.2"
        if folded
        else b"Content-Type: a/b"
    )
    body = b"".join(dash + eol + head + eol + eol + payload + eol for payload in payloads) + dash + b"--"
    # When split
    parts = split_parts(body, boundary, max_parts=5, max_header_bytes=128)
    # Then every payload comes back exactly, with its header read as one field
    assert [bytes(part.body) for part in parts] == payloads
    assert all(part.content_type is not None for part in parts)


STOW_TYPES = [
    'multipart/related; type="application/dicom"; boundary=B',
    "multipart/related; type=application/dicom; boundary=B",
    "multipart/related; boundary=B",
    'multipart/related; type="application/dicom+json"; boundary=B',
    'multipart/related; type="application/dicom+xml"; boundary=B',
    "multipart/related; type=application/dicom",
    "multipart/related; type=application/dicom; boundary=",
    "multipart/mixed; boundary=B",
    "application/dicom",
    "application/dicom+json",
    "application/json",
    "message/external-body; access-type=URL; URL=http://169.254.169.254/",
    "*/*",
    "",
]


@PARSER
@given(
    st.one_of(st.sampled_from(STOW_TYPES), header_values),
    st.lists(st.one_of(st.sampled_from(FRAMING), st.binary(max_size=16)), max_size=30).map(b"".join),
)
def test_stow_body_splitting_returns_payloads_or_a_4xx(content_type: str, body: bytes) -> None:
    # Given any Content-Type and body of a STOW-RS request
    settings_ = Settings("t", "b", "e", BASE, DuplicatePolicy.REJECT, Limits(max_parts=5))
    # When the body is split into instance payloads
    result = outcome(lambda: instance_payloads(content_type, body, settings=settings_))
    # Then it is refused with a 4xx, or gives Part 10 payloads (only application/dicom parts)
    if not isinstance(result, DicomWebError):
        assert 1 <= len(result) <= 5
        assert all(isinstance(p, memoryview) for p in result)


@PARSER
@given(st.one_of(st.text(max_size=60), st.binary(max_size=45).map(lambda b: base64.b64encode(b).decode())))
def test_base64_request_bodies_decode_or_400(body: str) -> None:
    # Given any body flagged as base64 / When decoded / Then bytes or a 400
    result = outcome(lambda: http.request_body({"body": body, "isBase64Encoded": True}))  # type: ignore[arg-type]
    assert isinstance(result, bytes | DicomWebError)


@PARSER
@given(st.text(max_size=300))
def test_warning_header_values_never_carry_control_characters(text: str) -> None:
    # Given any text a Warning could be built from / When rendered
    value = reply.warning_value(text)
    # Then it is one printable ASCII line of bounded length in the PS3.18 §8.3.4.3 form
    assert re.fullmatch(r'299 dicomweb "[\x20\x21\x23-\x7e]{0,200}"', value), repr(value)


# ---------------------------------------------------------------------- DICOM ingest
def _sequence_instance() -> bytes:
    return to_part10(make_phi_rich())


def _encapsulated_instance() -> bytes:
    ds = make_dataset(rows=2, columns=2)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(40) + b"\xff\xd9"] * 2)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = 2
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return to_part10(ds)


def _with_syntax(syntax: str) -> bytes:
    ds = make_dataset(rows=2, columns=2)
    ds.file_meta.TransferSyntaxUID = syntax
    return to_part10(ds)


SYNTAXES = {
    syntax: _with_syntax(syntax)
    for syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    )
}
BASES = [*SYNTAXES.values(), _sequence_instance(), _encapsulated_instance()]
INTERESTING_LENGTHS = [0, 1, 2, 3, 4, 8, 0xFF, 0xFFFF, 0xFFFE, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF]
INTERESTING_TAGS = [
    0x00020010,
    0x00020000,
    0x00080018,
    0x0020000D,
    0x00081140,  # ReferencedImageSequence (SQ)
    0x0040A730,  # ContentSequence (SQ)
    0x7FE00010,
    0xFFFEE000,  # Item
    0xFFFEE00D,  # Item Delimitation
    0xFFFEE0DD,  # Sequence Delimitation
    0x00091010,  # private
    0x00000000,
    0xFFFFFFFF,
]
VRS = [b"SQ", b"OB", b"UN", b"UI", b"LO", b"UL", b"US", b"UT", b"ZZ", b"\0\0", b"  "]


@st.composite
def raw_element(draw: st.DrawFn) -> bytes:
    tag = draw(st.one_of(st.sampled_from(INTERESTING_TAGS), st.integers(0, 0xFFFFFFFF)))
    vr = draw(st.sampled_from(VRS))
    length = draw(st.one_of(st.sampled_from(INTERESTING_LENGTHS), st.integers(0, 0xFFFFFFFF)))
    value = draw(st.binary(max_size=24))
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if draw(st.booleans()):  # explicit VR, long or short length
        head += vr + (
            b"\0\0" + struct.pack("<I", length)
            if vr in (b"SQ", b"OB", b"UN", b"UT")
            else struct.pack("<H", length & 0xFFFF)
        )
    else:  # implicit VR
        head += struct.pack("<I", length)
    return head + value


@st.composite
def mutated_part10(draw: st.DrawFn) -> bytes:
    """A valid instance with a few byte-level mutations: flips, cuts, lengths, splices."""
    data = bytearray(draw(st.sampled_from(BASES)))
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]  # after the (0002,0000) group length
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        size = len(data)
        # Mostly in the data set, sometimes in the File Meta (never 'DICM': test_instance.py has those)
        start = 132 if draw(st.integers(0, 4)) == 0 else meta_end
        pos = start + size * draw(st.integers(min_value=0, max_value=1000)) // 1000 % max(1, size - start + 1)
        kind = draw(st.sampled_from(["flip", "cut", "length16", "length32", "insert", "repeat", "delete"]))
        if kind == "flip" and pos < size:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "length16" and pos + 2 <= size:
            data[pos : pos + 2] = struct.pack("<H", draw(st.sampled_from(INTERESTING_LENGTHS)) & 0xFFFF)
        elif kind == "length32" and pos + 4 <= size:
            data[pos : pos + 4] = struct.pack("<I", draw(st.sampled_from(INTERESTING_LENGTHS)))
        elif kind == "insert":
            data[pos:pos] = draw(raw_element())
        elif kind == "repeat":
            span = draw(st.integers(min_value=1, max_value=64))
            data[pos:pos] = data[pos : pos + span] * draw(st.integers(min_value=1, max_value=50))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=16))]
    return bytes(data)


def _assert_ingest_contract(data: bytes) -> None:
    """read_instance either accepts safely or rejects with a failure reason, nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            received = read_instance(data, limits=Limits(max_inflated_bytes=1 << 20))
        except InstanceRejected as rejected:
            assert isinstance(rejected.failure.reason, FailureReason)
            assert rejected.failure.message
            for uid in (rejected.failure.sop_class_uid, rejected.failure.sop_instance_uid):
                assert uid is None or is_valid_uid(uid)  # only valid UIDs are echoed back
            return
    # An accepted instance: preamble zeroed, everything else kept, valid UIDs and keys,
    # and index/metadata documents that can be stored as JSON.
    assert received.data[:128] == bytes(128)
    assert received.data[128:] == data[128:]
    uids = (received.study_instance_uid, received.series_instance_uid, received.sop_instance_uid)
    assert all(is_valid_uid(u) for u in (*uids, received.sop_class_uid))
    assert KEY_RE.fullmatch(instance_key(*uids, new_write_id()))
    json.dumps([received.study_json, received.series_json, received.instance_json, received.metadata])


@INGEST
@given(mutated_part10())
def test_mutated_part10_files_are_stored_safely_or_rejected(data: bytes) -> None:
    _assert_ingest_contract(data)


@INGEST
@given(st.binary(max_size=600), st.sampled_from([b"", bytes(128) + b"DICM"]))
def test_arbitrary_bytes_are_rejected_with_a_failure_reason(tail: bytes, head: bytes) -> None:
    _assert_ingest_contract(head + tail)


@INGEST
@given(
    st.lists(raw_element(), min_size=1, max_size=6).map(b"".join),
    st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]),
)
def test_a_valid_header_followed_by_crafted_elements_is_stored_safely_or_rejected(
    elements: bytes, syntax: str
) -> None:
    # Given a valid instance with crafted elements appended to its data set
    _assert_ingest_contract(SYNTAXES[syntax] + elements)


@INGEST
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=3))
def test_deflated_data_sets_with_any_stream_are_stored_safely_or_rejected(stream: bytes, mode: int) -> None:
    # Given a Deflated Explicit VR file whose deflate stream is random, or valid deflate of random bytes
    base = SYNTAXES[DeflatedExplicitVRLittleEndian]
    (group_length,) = struct.unpack_from("<I", base, 140)  # (0002,0000) UL follows 'DICM'
    meta_end = 144 + group_length
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = stream if mode == 0 else compressor.compress(stream) + compressor.flush()
    _assert_ingest_contract(base[:meta_end] + body)


def test_mutation_corpus_starts_from_accepted_instances() -> None:
    # Given the instances the mutations start from / When read / Then each is accepted
    for data in BASES:
        assert is_valid_uid(read_instance(data, limits=Limits()).sop_instance_uid)
