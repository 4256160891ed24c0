"""Bounded ``multipart/related`` parsing and writing for DICOMweb (PS3.18 §8.6).

STOW-RS requests and WADO-RS responses carry DICOM objects, metadata and bulk data as
``multipart/related`` bodies (RFC 2387) framed as in RFC 2046 §5.1.1::

    [preamble CRLF] --boundary *padding CRLF part *(CRLF --boundary *padding CRLF part)
    CRLF --boundary-- [*padding CRLF epilogue]

The parser is zero-copy (part bodies are ``memoryview`` slices of the input), does its
searching with C-speed ``bytes.find`` (or a compiled regular expression when the input is a
partial ``memoryview``) and is bounded: it stops as soon as a body has more parts than
allowed or a part's header section is too large.

It reads what real senders write (docs/conformance.md, STOW-RS "Tolerances"): boundaries
longer than RFC 2046's 70 characters (Orthanc's DICOMweb client sends 73) and with
characters outside its ``bchars``, bare LF line endings, folded part header lines and
whitespace before a header's colon (RFC 5322 §2.2.3, §4.5). Part-level ``Content-Length``
headers are returned but not used for framing. What it writes stays within RFC 2046.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from dicomweb_core.errors import MultipartError, TooManyParts, UnsupportedMediaType
from dicomweb_core.web.mediatype import MediaType, parse_media_type

__all__ = [
    "MAX_BOUNDARY_CHARS",
    "RFC2046_BOUNDARY_CHARS",
    "Part",
    "boundary_of",
    "encode_multipart",
    "iter_parts",
    "multipart_content_type",
    "split_parts",
]

#: RFC 2046 §5.1.1: a boundary is 1 to 70 characters; every boundary this module writes fits.
RFC2046_BOUNDARY_CHARS = 70

#: The longest boundary a received body may use. Real senders exceed RFC 2046's 70 (Orthanc's
#: DICOMweb client: 73). The bound is a sanity limit, not a cost control: finding delimiters is
#: linear in the body whatever the boundary's length (measured in tests/unit/test_multipart.py),
#: and the boundary already lives in a Content-Type header capped at 8192 characters.
MAX_BOUNDARY_CHARS = 1000

_BCHARS = r"0-9A-Za-z'()+_,\-./:=?"
_BOUNDARY_RE = re.compile(rf"[{_BCHARS} ]*[{_BCHARS}]")
# Received boundaries: printable US-ASCII, not ending with a space (it would be indistinguishable
# from transport padding). The boundary is matched as bytes, so any such character is unambiguous.
_RECEIVED_BOUNDARY_RE = re.compile(r"[\x20-\x7e]*[\x21-\x7e]")
_SHOWN_BOUNDARY_CHARS = 60
_WSP = " \t"
_PADDING_EOL_RE = re.compile(rb"[ \t]*\r?\n")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+")
_BAD_FIELD_CHAR_RE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_CR = 0x0D
_LF = 0x0A
_SINGLETON_HEADERS = frozenset(
    {"content-type", "content-length", "content-location", "content-id", "content-transfer-encoding"}
)


def _boundary_problem(boundary: str) -> str | None:
    """Describe why ``boundary`` breaks RFC 2046 §5.1.1, or return None: what this module writes."""
    if not boundary:
        return "is empty; RFC 2046 §5.1.1 needs 1 to 70 characters"
    if len(boundary) > RFC2046_BOUNDARY_CHARS:
        return f"is {len(boundary)} characters long; RFC 2046 §5.1.1 allows at most {RFC2046_BOUNDARY_CHARS}"
    if boundary.endswith(" "):
        return "ends with a space, which RFC 2046 §5.1.1 forbids"
    if not _BOUNDARY_RE.fullmatch(boundary):
        return "has characters RFC 2046 §5.1.1 does not allow; use letters, digits, space and '()+_,-./:=?"
    return None


def _received_boundary_problem(boundary: str) -> str | None:
    """Describe why a received ``boundary`` cannot frame a body, or return None when it can.

    Wider than RFC 2046 §5.1.1 (up to :data:`MAX_BOUNDARY_CHARS` printable US-ASCII characters)
    because real senders are; still no control or non-ASCII character, and no trailing space.
    """
    if not boundary:
        return "is empty; give 1 to 70 characters (RFC 2046 §5.1.1)"
    if len(boundary) > MAX_BOUNDARY_CHARS:
        return (
            f"is {len(boundary)} characters long; this server accepts at most {MAX_BOUNDARY_CHARS} "
            f"(RFC 2046 §5.1.1 recommends at most {RFC2046_BOUNDARY_CHARS})"
        )
    if boundary.endswith(" "):
        return "ends with a space, which RFC 2046 §5.1.1 forbids (it reads as transport padding)"
    if not _RECEIVED_BOUNDARY_RE.fullmatch(boundary):
        return (
            "has a control or non-ASCII character; use letters, digits and '()+_,-./:=? "
            "as RFC 2046 §5.1.1 recommends"
        )
    return None


def _shown(boundary: str) -> str:
    """``boundary`` for an error message: long ones are cut short."""
    if len(boundary) <= _SHOWN_BOUNDARY_CHARS:
        return boundary
    return f"{boundary[:_SHOWN_BOUNDARY_CHARS]}...({len(boundary)} characters)"


def boundary_of(media_type: MediaType, *, body: bytes | memoryview | None = None) -> str:
    """The validated ``boundary`` parameter of a multipart media type (RFC 2046 §5.1.1).

    Boundaries are accepted as :func:`iter_parts` accepts them. A value in single quotes
    (``boundary='abc'``, as hand-written ``curl -H`` lines have it) is RFC 2046-valid as it
    stands, since ``'`` is a boundary character; when ``body`` is given and has no delimiter
    with the quotes but one without, the unquoted value is the boundary. The body decides,
    so the choice is never a guess.

    Raises :class:`UnsupportedMediaType` if the media type is not ``multipart/*`` and
    :class:`MultipartError` if the boundary is missing or invalid.
    """
    if media_type.maintype != "multipart":
        raise UnsupportedMediaType(
            f"Expected a multipart/related body (PS3.18 §8.6.1.2), not {media_type.type}."
        )
    boundary = media_type.param("boundary")
    if boundary is None:
        raise MultipartError(
            "The multipart Content-Type has no boundary parameter; expected for example "
            'multipart/related; type="application/dicom"; boundary=example-boundary.'
        )
    problem = _received_boundary_problem(boundary)
    if problem:
        raise MultipartError(f"The multipart boundary {problem}.")
    if body is not None and len(boundary) > 2 and boundary[0] == boundary[-1] == "'":
        buf = _Buffer(body)
        unquoted = boundary[1:-1]
        if _find_delimiter(buf, _dash(boundary), 0) is None and _find_delimiter(buf, _dash(unquoted), 0):
            return unquoted
    return boundary


def _dash(boundary: str) -> bytes:
    """The delimiter ``--boundary`` as bytes (RFC 2046 §5.1.1)."""
    return b"--" + boundary.encode("ascii")


@dataclass(frozen=True)
class Part:
    """One body part of a multipart/related body (RFC 2046 §5.1, PS3.18 §8.6.1.2).

    ``headers`` maps lower-cased field names to values; ``body`` is a zero-copy slice of the
    parsed input without the line break that precedes the next delimiter.
    """

    headers: Mapping[str, str]
    body: memoryview

    @property
    def content_type(self) -> MediaType | None:
        """The part's parsed ``Content-Type`` (PS3.18 §8.6.1.2), or None when it has none."""
        value = self.headers.get("content-type")
        return None if value is None else parse_media_type(value, header="part Content-Type")


class _Buffer:
    """A read-only byte buffer with C-speed search and zero-copy slicing."""

    __slots__ = ("_data", "_patterns", "view")

    def __init__(self, body: bytes | memoryview) -> None:
        view = memoryview(body)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self.view = view
        owner = view.obj
        self._data: bytes | memoryview = view
        if isinstance(owner, bytes) and len(owner) == view.nbytes:
            self._data = owner  # a whole bytes object: search it with bytes.find
        self._patterns: dict[bytes, re.Pattern[bytes]] = {}

    def __len__(self) -> int:
        return self.view.nbytes

    def byte(self, index: int) -> int:
        """The byte at ``index``."""
        return self.view[index]

    def startswith(self, prefix: bytes, pos: int) -> bool:
        """Whether ``prefix`` occurs at ``pos``."""
        return self.view[pos : pos + len(prefix)] == prefix

    def find(self, needle: bytes, start: int, end: int) -> int:
        """The first index of ``needle`` in ``[start, end)``, or -1."""
        if isinstance(self._data, bytes):
            return self._data.find(needle, start, end)
        pattern = self._patterns.get(needle)
        if pattern is None:
            pattern = self._patterns[needle] = re.compile(re.escape(needle))
        found = pattern.search(self._data, start, end)
        return -1 if found is None else found.start()

    def end_of_padding_line(self, pos: int) -> int | None:
        """After transport padding and a line break at ``pos`` (RFC 2046 §5.1.1), or None."""
        found = _PADDING_EOL_RE.match(self._data, pos)
        return None if found is None else found.end()


class _Delimiter(NamedTuple):
    """A boundary delimiter line: where the preceding part ends and where the next begins."""

    part_end: int
    after: int
    close: bool


def _delimiter_at(buf: _Buffer, dash: bytes, pos: int, part_end: int) -> _Delimiter | None:
    """Classify ``--boundary`` at ``pos`` as a delimiter, a close delimiter, or neither."""
    after = pos + len(dash)
    if buf.startswith(b"--", after):
        return _Delimiter(part_end, after + 2, close=True)
    line_end = buf.end_of_padding_line(after)
    return None if line_end is None else _Delimiter(part_end, line_end, close=False)


def _find_delimiter(buf: _Buffer, dash: bytes, start: int) -> _Delimiter | None:
    """The next delimiter at or after ``start``: at the very start of the body or after a line break."""
    if start == 0 and buf.startswith(dash, 0):
        found = _delimiter_at(buf, dash, 0, 0)
        if found:
            return found
    needle = b"\n" + dash
    index = buf.find(needle, start, len(buf))
    while index != -1:
        part_end = index - 1 if index > start and buf.byte(index - 1) == _CR else index
        found = _delimiter_at(buf, dash, index + 1, part_end)
        if found:
            return found
        index = buf.find(needle, index + 1, len(buf))
    return None


def _header_extent(buf: _Buffer, start: int, end: int, number: int, max_header_bytes: int) -> tuple[int, int]:
    """Return (end of header section, start of body) for the part in ``[start, end)``."""
    if start == end:
        return start, start
    if buf.byte(start) == _LF:
        return start, start + 1
    if buf.startswith(b"\r\n", start) and start + 1 < end:
        return start, start + 2
    limit = min(end, start + max_header_bytes + 2)
    blank = [
        (found, len(term)) for term in (b"\n\n", b"\n\r\n") if (found := buf.find(term, start, limit)) != -1
    ]
    if blank:
        found, size = min(blank)
        _check_header_size(found + 1 - start, number, max_header_bytes)
        return found + 1, found + size
    if end - start > max_header_bytes:
        raise MultipartError(
            f"Part {number}: no empty line ends the header section within {max_header_bytes} bytes; "
            "the headers are too large or the empty line (CRLF CRLF) before the body is missing."
        )
    if buf.byte(end - 1) == _LF:
        return end, end  # headers only: the delimiter's own line break ends them (RFC 2046 §5.1.1)
    raise MultipartError(
        f"Part {number}: the header section is not followed by an empty line (CRLF CRLF) "
        "before the body (RFC 2046 §5.1.1)."
    )


def _check_header_size(size: int, number: int, max_header_bytes: int) -> None:
    """Refuse a header section larger than ``max_header_bytes``."""
    if size > max_header_bytes:
        raise MultipartError(f"Part {number}: the header section is larger than {max_header_bytes} bytes.")


def _parse_header_line(line: str, number: int, index: int) -> tuple[str, str]:
    """Parse ``Name: value`` (RFC 9110 §5.1, §5.5) into (lower-cased name, trimmed value).

    Whitespace between the name and the colon is tolerated: a part header is MIME (RFC 5322
    §4.5 allows it as obsolete syntax), and only this parser reads it, so there is no second
    reader to disagree with (the request smuggling reason RFC 9110 §5.1 refuses it for).
    """
    name, colon, value = line.partition(":")
    if not colon:
        raise MultipartError(f"Part {number}: header line {index} has no ':'; expected 'Name: value'.")
    name = name.rstrip(" \t")
    if not _TOKEN_RE.fullmatch(name):
        raise MultipartError(
            f"Part {number}: header line {index} has an invalid field name; expected a token such as "
            "Content-Type followed by ':'."
        )
    value = value.strip(" \t")
    if _BAD_FIELD_CHAR_RE.search(value):
        raise MultipartError(f"Part {number}: the {name} header contains control characters.")
    return name.lower(), value


def _unfolded_lines(raw: memoryview, number: int) -> list[str]:
    """The header section's lines with folded continuations joined (RFC 5322 §2.2.3).

    A line starting with a space or tab continues the previous one; MIME writers (Python's
    ``email`` among them) fold long header lines this way. The section is already bounded by
    ``max_header_bytes``, so joining costs no more than reading it.
    """
    lines = bytes(raw).decode("latin-1").split("\n")
    joined: list[str] = []
    for raw_line in lines[:-1] if lines[-1] == "" else lines:
        line = raw_line.removesuffix("\r")
        if not line or line[0] not in _WSP:
            joined.append(line)
        elif joined:
            joined[-1] = joined[-1].rstrip(_WSP) + " " + line.strip(_WSP)
        else:
            raise MultipartError(
                f"Part {number}: the header section starts with a continuation line (whitespace "
                "before the first header); expected 'Name: value'."
            )
    return joined


def _parse_headers(raw: memoryview, number: int) -> dict[str, str]:
    """Parse a part's header section; repeated fields are joined with ', ' unless single-valued."""
    headers: dict[str, str] = {}
    for index, line in enumerate(_unfolded_lines(raw, number), start=1):
        name, value = _parse_header_line(line, number, index)
        if name in headers and name in _SINGLETON_HEADERS:
            raise MultipartError(f"Part {number}: the {name} header appears more than once.")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _parse_part(buf: _Buffer, start: int, end: int, *, number: int, max_header_bytes: int) -> Part:
    """Build the :class:`Part` occupying ``[start, end)``."""
    header_end, body_start = _header_extent(buf, start, end, number, max_header_bytes)
    headers = _parse_headers(buf.view[start:header_end], number)
    return Part(MappingProxyType(headers), buf.view[body_start:end])


def _check_limits(boundary: str, max_parts: int, max_header_bytes: int) -> None:
    """Validate the arguments of :func:`iter_parts` before any parsing."""
    problem = _received_boundary_problem(boundary)
    if problem:
        raise MultipartError(f"The multipart boundary {problem}.")
    if max_parts < 1 or max_header_bytes < 0:
        raise ValueError("max_parts must be at least 1 and max_header_bytes at least 0")


def _generate_parts(
    body: bytes | memoryview, boundary: str, max_parts: int, max_header_bytes: int
) -> Iterator[Part]:
    """The parsing loop behind :func:`iter_parts`."""
    buf = _Buffer(body)
    dash = _dash(boundary)
    delimiter = _find_delimiter(buf, dash, 0)
    if delimiter is None:
        raise MultipartError(
            f"The multipart body has no boundary delimiter '--{_shown(boundary)}' at the start of a "
            "line; check that the boundary parameter of the Content-Type matches the body."
        )
    if delimiter.close:
        raise MultipartError("The multipart body has no parts; PS3.18 §8.6.1.2 needs at least one.")
    number = 0
    while not delimiter.close:
        if number == max_parts:
            raise TooManyParts(f"The multipart body has more than {max_parts} parts; send fewer per request.")
        number += 1
        following = _find_delimiter(buf, dash, delimiter.after)
        if following is None:
            raise MultipartError(
                f"Part {number} is not followed by a boundary delimiter: the body is truncated or "
                f"the close delimiter '--{_shown(boundary)}--' is missing."
            )
        yield _parse_part(
            buf, delimiter.after, following.part_end, number=number, max_header_bytes=max_header_bytes
        )
        delimiter = following


def iter_parts(
    body: bytes | memoryview, boundary: str, *, max_parts: int = 1000, max_header_bytes: int = 16384
) -> Iterator[Part]:
    """Yield the parts of a multipart/related body one by one (RFC 2046 §5.1.1, PS3.18 §8.6.1.2).

    ``boundary`` may be up to :data:`MAX_BOUNDARY_CHARS` printable US-ASCII characters. The
    preamble and epilogue are ignored. Framing errors raise :class:`MultipartError` (naming
    the part number) when reached, and :class:`TooManyParts` is raised as soon as part
    ``max_parts + 1`` starts. The boundary is checked before the first part is produced.
    """
    _check_limits(boundary, max_parts, max_header_bytes)
    return _generate_parts(body, boundary, max_parts, max_header_bytes)


def split_parts(
    body: bytes | memoryview, boundary: str, *, max_parts: int = 1000, max_header_bytes: int = 16384
) -> list[Part]:
    """Parse all framing of a multipart/related body before returning any part (PS3.18 §8.6.1.2).

    Same rules and errors as :func:`iter_parts`; use it to reject a bad body before doing work.
    """
    return list(iter_parts(body, boundary, max_parts=max_parts, max_header_bytes=max_header_bytes))


def _encode_headers(headers: Mapping[str, str], size: int, number: int) -> bytes:
    """Render a part's header section, adding ``Content-Length`` when absent."""
    lines: list[str] = []
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"part {number}: header name {name!r} is not an RFC 9110 token")
        if _BAD_FIELD_CHAR_RE.search(value):
            raise ValueError(
                f"part {number}: the {name} header value contains CR, LF, another control character "
                "or a character outside ISO-8859-1"
            )
        lines.append(f"{name}: {value}\r\n")
    if not any(name.lower() == "content-length" for name in headers):
        lines.append(f"Content-Length: {size}\r\n")
    return "".join(lines).encode("latin-1")


def _contains(data: bytes | memoryview, needle: bytes) -> bool:
    """Whether ``needle`` occurs anywhere in ``data``, without copying it."""
    buf = _Buffer(data)
    return buf.find(needle, 0, len(buf)) != -1


def _first_part_containing(parts: list[tuple[bytes, memoryview]], boundary: str) -> int | None:
    """The 1-based number of the first part whose headers or body contain ``--boundary``."""
    dash = _dash(boundary)
    for number, (head, body) in enumerate(parts, start=1):
        if dash in head or _contains(body, dash):
            return number
    return None


def _choose_boundary(boundary: str | None, parts: list[tuple[bytes, memoryview]]) -> str:
    """Validate the caller's boundary, or pick a random one that no part contains (RFC 2046 §5.1.1)."""
    if boundary is not None:
        problem = _boundary_problem(boundary)
        if problem:
            raise ValueError(f"the boundary {problem}")
        number = _first_part_containing(parts, boundary)
        if number is not None:
            raise ValueError(f"the boundary occurs in part {number}; choose another or let one be generated")
        return boundary
    while True:
        candidate = new_boundary()
        if _first_part_containing(parts, candidate) is None:
            return candidate


def encode_multipart(
    parts: Iterable[tuple[Mapping[str, str], bytes | memoryview]], *, boundary: str | None = None
) -> tuple[bytes, str]:
    """Write a multipart/related body (RFC 2046 §5.1.1, PS3.18 §8.6.1.2); return (body, boundary).

    Each part is ``(headers, body)``; the caller supplies ``Content-Type`` and
    ``Content-Length`` is added when absent. Header values must not contain CR, LF or other
    control characters (``ValueError``). Without ``boundary`` a random one is generated
    that occurs in no part.
    """
    encoded: list[tuple[bytes, memoryview]] = []
    for number, (headers, body) in enumerate(parts, start=1):
        view = memoryview(body)
        encoded.append((_encode_headers(headers, view.nbytes, number), view))
    if not encoded:
        raise ValueError("a multipart body needs at least one part (RFC 2046 §5.1.1)")
    chosen = _choose_boundary(boundary, encoded)
    chunks: list[bytes | memoryview] = []
    for head, view in encoded:
        chunks += (_opening(chosen, head), view, b"\r\n")
    chunks.append(closing_delimiter(chosen))
    return b"".join(chunks), chosen


def part_opening(boundary: str, headers: Mapping[str, str], size: int, number: int) -> bytes:
    """What precedes a part's body: its delimiter and header section (RFC 2046 §5.1.1).

    For bodies written piece by piece (pre-built responses too large to hold): each part
    is ``part_opening(...)``, the body, then ``b"\\r\\n"``; the whole ends with
    :func:`closing_delimiter`. The caller's boundary must be one no body contains (a
    random 128-bit one, as :func:`new_boundary` gives, when the bodies cannot be searched)."""
    return _opening(boundary, _encode_headers(headers, size, number))


def closing_delimiter(boundary: str) -> bytes:
    return b"--" + boundary.encode("ascii") + b"--\r\n"


def new_boundary() -> str:
    return f"dicomweb-{secrets.token_hex(16)}"


def _opening(boundary: str, head: bytes) -> bytes:
    return b"--" + boundary.encode("ascii") + b"\r\n" + head + b"\r\n"


def multipart_content_type(boundary: str, part_type: str, /, **params: str) -> str:
    """Render ``multipart/related; type="<part_type>"; ...; boundary=<boundary>`` (RFC 2387 §3.1).

    Extra keyword parameters come between ``type`` and ``boundary``; ``_`` in their names
    becomes ``-`` (``transfer_syntax=...`` gives ``transfer-syntax=...``, PS3.18 §8.7.3.5).
    """
    problem = _boundary_problem(boundary)
    if problem:
        raise ValueError(f"the boundary {problem}")
    extra = [(name.replace("_", "-"), value) for name, value in params.items()]
    media = MediaType(
        "multipart/related", (("type", MediaType(part_type).type), *extra, ("boundary", boundary))
    )
    return str(media)
