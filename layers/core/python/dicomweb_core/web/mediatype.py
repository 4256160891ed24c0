"""Media types and Accept media ranges for DICOMweb.

PS3.18 §8.6 frames request and response bodies as ``multipart/related`` (RFC 2387) whose
``type`` parameter names the media type of the parts, and PS3.18 §8.7 negotiates
representations with ``Accept`` media ranges whose parameters (``type``, ``transfer-syntax``,
``charset``) matter. This module parses both header forms following RFC 9110 §8.3.1 (media
types), §5.6.2 (tokens), §5.6.4 (quoted strings), §5.6.6 (parameters) and §12.5.1 (Accept).

It is lenient where real clients deviate from the grammar without ambiguity: whitespace
around ``=`` is allowed, and a parameter value may be an unquoted run of visible characters
such as ``type=application/dicom`` (dicomweb-client for JavaScript, which OHIF's upload
uses, sent this before version 0.7, although ``/`` is not a token character). Everything
else is rejected with a message that says what was expected. What STOW-RS tolerates beyond
this is in docs/conformance.md ("Tolerances").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dicomweb_core.errors import BadRequest, UnsupportedMediaType

__all__ = [
    "MAX_HEADER_VALUE_CHARS",
    "MediaRange",
    "MediaType",
    "parse_accept",
    "parse_media_type",
]

#: Header values longer than this are rejected before parsing (bounded work per request).
MAX_HEADER_VALUE_CHARS = 8192

_TCHAR = r"!#$%&'*+.^_`|~0-9A-Za-z\-"
_TOKEN_RE = re.compile(rf"[{_TCHAR}]+")
_TYPE_RE = re.compile(rf"[ \t]*([{_TCHAR}]+)/([{_TCHAR}]+)")
_MEDIA_TYPE_RE = re.compile(rf"[{_TCHAR}]+/[{_TCHAR}]+")
_SEMICOLON_RE = re.compile(r"[ \t]*;[ \t]*")
_NAME_RE = re.compile(rf"([{_TCHAR}]+)[ \t]*")
_EQUALS_RE = re.compile(r"=[ \t]*")
_OWS_RE = re.compile(r"[ \t]*")
_LIST_GAP_RE = re.compile(r"[ \t,]*")
# RFC 9110 §5.6.4: qdtext and quoted-pair; obs-text is %x80-FF.
_QUOTED_RE = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# Lenient unquoted values: visible characters except DQUOTE, ";" and "\" (and "," inside lists).
_BARE_RE = re.compile(r"[\x21\x23-\x3a\x3c-\x5b\x5d-\x7e\x80-\xff]+")
_BARE_IN_LIST_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e\x80-\xff]+")
_FIELD_TEXT_RE = re.compile(r"[\t \x21-\x7e\x80-\xff]*")
# RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE_RE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")

_EXAMPLE = 'multipart/related; type="application/dicom"'
_CASE_INSENSITIVE_VALUES = frozenset({"type", "charset"})

_Params = tuple[tuple[str, str], ...]


def _render_value(value: str) -> str:
    """Render a parameter value as a token, or as a quoted-string when it is not one (RFC 9110 §5.6.6)."""
    if _TOKEN_RE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _normalise_params(params: Iterable[tuple[str, str]]) -> _Params:
    """Lower-case parameter names and check that names are tokens, values printable and names unique."""
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in params:
        key = name.lower()
        if not _TOKEN_RE.fullmatch(key):
            raise ValueError(f"media type parameter name {name!r} is not an RFC 9110 token")
        if not _FIELD_TEXT_RE.fullmatch(value):
            raise ValueError(f"media type parameter {key!r} has a control or non-Latin-1 character")
        if key in seen:
            raise ValueError(f"media type parameter {key!r} is given twice")
        seen.add(key)
        result.append((key, value))
    return tuple(result)


@dataclass(frozen=True, slots=True)
class MediaType:
    """An immutable media type ``type/subtype`` with ordered parameters (RFC 9110 §8.3.1).

    ``type`` is lower-cased; ``params`` holds ``(lower-cased name, unquoted value)`` pairs in
    the order given. ``str()`` renders a header value, quoting values only when they are not
    tokens. Wildcards (``*/*``, ``type/*``) are representable so that media ranges can reuse
    this class, but :func:`parse_media_type` refuses them for a ``Content-Type``.
    """

    type: str
    params: _Params = ()

    def __post_init__(self) -> None:
        kind = self.type.lower()
        if not _MEDIA_TYPE_RE.fullmatch(kind):
            raise ValueError(f"media type {self.type!r} is not of the form type/subtype")
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "params", _normalise_params(self.params))

    @property
    def maintype(self) -> str:
        """The part before ``/``, for example ``multipart``."""
        return self.type.partition("/")[0]

    @property
    def subtype(self) -> str:
        """The part after ``/``, for example ``related``."""
        return self.type.partition("/")[2]

    @property
    def is_wildcard(self) -> bool:
        """True for media ranges such as ``*/*`` and ``image/*`` (RFC 9110 §12.5.1)."""
        return self.maintype == "*" or self.subtype == "*"

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (case-insensitive), or None when absent."""
        key = name.lower()
        for param_name, value in self.params:
            if param_name == key:
                return value
        return None

    def with_params(
        self, params: Mapping[str, str] | Iterable[tuple[str, str]] = (), /, **named: str
    ) -> MediaType:
        """A copy with parameters set: same-named ones are replaced in place, new ones appended.

        Keyword names use ``_`` for ``-``, so ``transfer_syntax=...`` sets ``transfer-syntax``.
        """
        pairs = list(params.items() if isinstance(params, Mapping) else params)
        pairs += [(name.replace("_", "-"), value) for name, value in named.items()]
        updates = {name.lower(): value for name, value in pairs}
        merged = [(name, updates.pop(name, value)) for name, value in self.params]
        merged += list(updates.items())
        return MediaType(self.type, tuple(merged))

    def __str__(self) -> str:
        rendered = [self.type, *(f"{name}={_render_value(value)}" for name, value in self.params)]
        return "; ".join(rendered)


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an ``Accept`` header: a media range and its weight (RFC 9110 §12.5.1).

    ``q`` is 0..1; ``q == 0`` means "not acceptable" and is kept so that callers can exclude
    a representation (PS3.18 §8.7.3). Parameters other than ``q`` (such as ``type`` and
    ``transfer-syntax``) stay on :attr:`media_type`.
    """

    media_type: MediaType
    q: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"q must be between 0 and 1, not {self.q}")

    @property
    def type(self) -> str:
        """The lower-cased range, for example ``multipart/related`` or ``*/*``."""
        return self.media_type.type

    @property
    def params(self) -> _Params:
        """The parameters other than ``q``."""
        return self.media_type.params

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (case-insensitive), or None when absent."""
        return self.media_type.param(name)

    def matches(self, candidate: MediaType) -> bool:
        """Whether ``candidate`` falls in this range (RFC 9110 §12.5.1, PS3.18 §8.7.3).

        Wildcards match any main type or subtype. Every parameter of the range must be present
        on the candidate with the same value; ``*`` matches any value (PS3.18 uses
        ``transfer-syntax=*``), and ``type`` and ``charset`` compare case-insensitively.
        """
        main, _, sub = self.type.partition("/")
        if main not in ("*", candidate.maintype) or sub not in ("*", candidate.subtype):
            return False
        return all(_param_matches(name, value, candidate.param(name)) for name, value in self.params)

    def __str__(self) -> str:
        text = str(self.media_type)
        return text if self.q == 1.0 else f"{text}; q={self.q:g}"


def _param_matches(name: str, wanted: str, actual: str | None) -> bool:
    """Compare one media range parameter with the candidate's value."""
    if actual is None:
        return False
    if wanted == "*":
        return True
    if name in _CASE_INSENSITIVE_VALUES:
        return wanted.lower() == actual.lower()
    return wanted == actual


def _near(text: str, pos: int) -> str:
    """A short, ASCII-safe excerpt of ``text`` at ``pos`` for error messages."""
    if pos >= len(text):
        return "the end of the value"
    excerpt = text[pos : pos + 20]
    return ascii(excerpt) + ("..." if len(text) > pos + 20 else "")


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """The position after whatever ``pattern`` matches at ``pos`` (``pos`` itself if nothing)."""
    found = pattern.match(text, pos)
    return found.end() if found else pos


def _check_length(value: str, header: str) -> None:
    """Refuse over-long header values before doing any parsing work."""
    if len(value) > MAX_HEADER_VALUE_CHARS:
        raise BadRequest(
            f"The {header} header is {len(value)} characters long; at most "
            f"{MAX_HEADER_VALUE_CHARS} characters are accepted."
        )


def _parse_value(text: str, pos: int, *, header: str, name: str, in_list: bool) -> tuple[str, int]:
    """Parse a token, quoted-string or lenient bare value at ``pos``; return (value, end)."""
    quoted = _QUOTED_RE.match(text, pos)
    if quoted:
        return _QUOTED_PAIR_RE.sub(r"\1", quoted.group(1)), quoted.end()
    bare = (_BARE_IN_LIST_RE if in_list else _BARE_RE).match(text, pos)
    if bare:
        return bare.group(0), bare.end()
    raise BadRequest(
        f"The {header} header parameter '{name}' has a malformed value at character {pos + 1} "
        f"(found {_near(text, pos)}): expected a token or a double-quoted string, "
        f'for example type="application/dicom".'
    )


def _parse_params(text: str, pos: int, *, header: str, in_list: bool) -> tuple[_Params, int]:
    """Parse ``*( OWS ";" OWS [ parameter ] )`` (RFC 9110 §5.6.6); return (params, end)."""
    params: list[tuple[str, str]] = []
    while semicolon := _SEMICOLON_RE.match(text, pos):
        pos = semicolon.end()
        if pos == len(text) or text[pos] == ";" or (in_list and text[pos] == ","):
            continue  # an empty parameter, which RFC 9110 §5.6.6 allows
        named = _NAME_RE.match(text, pos)
        if not named:
            raise BadRequest(
                f"The {header} header has a malformed parameter at character {pos + 1} "
                f"(found {_near(text, pos)}): expected name=value after ';'."
            )
        name = named.group(1).lower()
        equals = _EQUALS_RE.match(text, named.end())
        if not equals:
            raise BadRequest(
                f"The {header} header parameter '{name}' has no value: expected {name}=value, "
                f'for example type="application/dicom".'
            )
        value, pos = _parse_value(text, equals.end(), header=header, name=name, in_list=in_list)
        if any(existing == name for existing, _ in params):
            raise BadRequest(f"The {header} header repeats the parameter '{name}'; give it once.")
        params.append((name, value))
    return tuple(params), _skip(_OWS_RE, text, pos)


def _parse_one(text: str, pos: int, *, header: str, in_list: bool) -> tuple[MediaType, int]:
    """Parse ``type "/" subtype parameters`` at ``pos``; return (media type, end)."""
    kind = _TYPE_RE.match(text, pos)
    if not kind:
        raise BadRequest(
            f"The {header} header is not a media type: expected type/subtype (for example "
            f"{_EXAMPLE}) at character {pos + 1}, found {_near(text, pos)}."
        )
    params, end = _parse_params(text, kind.end(), header=header, in_list=in_list)
    return MediaType(f"{kind.group(1)}/{kind.group(2)}", params), end


def parse_media_type(value: str, *, header: str = "Content-Type") -> MediaType:
    """Parse a ``Content-Type`` style value into a concrete :class:`MediaType` (RFC 9110 §8.3.1).

    Raises :class:`UnsupportedMediaType` for an empty value or a wildcard range, and
    :class:`BadRequest` for anything that is not ``type/subtype *(; name=value)``. ``header``
    names the header in error messages.
    """
    _check_length(value, header)
    if not value.strip(" \t"):
        raise UnsupportedMediaType(
            f"The {header} header is missing or empty; expected a media type such as {_EXAMPLE}."
        )
    media, end = _parse_one(value, 0, header=header, in_list=False)
    if end != len(value):
        raise BadRequest(
            f"The {header} header has unexpected text at character {end + 1} ({_near(value, end)}); "
            f"expected ';' and a parameter, as in {_EXAMPLE}."
        )
    if media.is_wildcard:
        raise UnsupportedMediaType(
            f"The {header} header names the media range {media.type}; a body needs a concrete "
            f"media type such as application/dicom or {_EXAMPLE}."
        )
    return media


def _to_range(media: MediaType) -> MediaRange:
    """Split the ``q`` weight off a parsed media range and check the wildcard form."""
    if media.maintype == "*" and media.subtype != "*":
        raise BadRequest(f"The Accept header media range {media.type} is invalid; use */* or type/*.")
    weight = media.param("q")
    if weight is None:
        return MediaRange(media)
    if not _QVALUE_RE.fullmatch(weight):
        raise BadRequest(
            f"The Accept header has q={ascii(weight)[1:-1][:20]}; a q-value must be a number "
            f"from 0 to 1 with at most three decimals, such as q=0.5."
        )
    rest = tuple((name, value) for name, value in media.params if name != "q")
    return MediaRange(MediaType(media.type, rest), float(weight))


def parse_accept(value: str) -> list[MediaRange]:
    """Parse an ``Accept`` header into media ranges sorted by ``q``, highest first (RFC 9110 §12.5.1).

    The sort is stable, so ranges of equal weight keep the client's order. Ranges with
    ``q=0`` are kept (they mark media types as not acceptable, PS3.18 §8.7.3). Commas inside
    quoted parameter values do not split ranges. An empty value gives an empty list, which
    callers treat like an absent header (any media type).
    """
    _check_length(value, "Accept")
    ranges: list[MediaRange] = []
    pos = _skip(_LIST_GAP_RE, value, 0)
    while pos < len(value):
        media, pos = _parse_one(value, pos, header="Accept", in_list=True)
        ranges.append(_to_range(media))
        if pos < len(value) and value[pos] != ",":
            raise BadRequest(
                f"The Accept header has unexpected text at character {pos + 1} ({_near(value, pos)}); "
                f"expected ';' and a parameter, or ',' and another media range."
            )
        pos = _skip(_LIST_GAP_RE, value, pos)
    return sorted(ranges, key=lambda media_range: -media_range.q)
