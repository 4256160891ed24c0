"""WADO-RS content negotiation (PS3.18 §8.7): which media type and transfer syntax to send.

The Accept header (or the ``accept`` query parameter) is read range by range, highest
``q`` first; the first range this server can produce wins, else 406 with what is
available. The default transfer syntax is Explicit VR Little Endian. This server
produces a transfer syntax when it is ``*`` (as stored), the stored one, a native
little-endian one when the stored data is native (Explicit VR Big Endian byte-swapped,
``dicom.endian``), or Explicit VR Little Endian when a codec of the imaging layer can
decompress it (otherwise 406). The matrix per stored syntax is in docs/conformance.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dicomweb_core.dicom.codecs import can_decode
from dicomweb_core.dicom.pixels import NATIVE, UNCOMPRESSED
from dicomweb_core.dicom.uid import is_valid_uid
from dicomweb_core.errors import BadRequest, NotAcceptable
from dicomweb_core.web.mediatype import MediaRange, parse_accept

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
AS_STORED = "*"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"

# Media types of compressed pixel data, by transfer syntax (PS3.18 Table 8.7.3-5).
PIXEL_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# The transfer syntax a pixel media type means when none is given (PS3.18 Table 8.7.3-5).
DEFAULT_SYNTAX_OF = {
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
    DICOM: EXPLICIT_VR_LITTLE_ENDIAN,
}
_RENDERED = ("image/png", "image/gif")


@dataclass(frozen=True, slots=True)
class Choice:
    """What to send: multipart or single part, the part media type, the transfer syntax."""

    multipart: bool
    part_type: str
    transfer_syntax: str  # a UID, or "*" for as stored


def actual_syntax(requested: str, stored: str) -> str:
    """The transfer syntax sent for an instance stored in ``stored``: that one for ``*``."""
    return stored if requested == AS_STORED else requested


def can_produce(requested: str, stored: str) -> bool:
    """As stored, re-encoded from a native syntax into a little-endian one, or decompressed
    by a codec."""
    if requested in (AS_STORED, stored):
        return True
    if requested not in UNCOMPRESSED:
        return False
    return stored in NATIVE or (requested == EXPLICIT_VR_LITTLE_ENDIAN and can_decode(stored))


def _ranges(accept: str | None, query: Mapping[str, str] | None) -> list[MediaRange] | None:
    """The acceptable (q > 0) ranges; None without an Accept (anything goes)."""
    header = (query or {}).get("accept") or accept
    parsed = parse_accept(header) if header and header.strip() else []
    if not parsed:
        return None
    ranges = [r for r in parsed if r.q > 0]  # empty when every range is refused (q=0): 406
    rendered = [r for r in ranges if r.type.startswith("image/") and r.type in (*_RENDERED, "image/jpeg")]
    dicom = [r for r in ranges if r.type in (DICOM, "multipart/related") or r.param("type") == DICOM]
    if rendered and dicom:
        raise BadRequest("Accept mixes DICOM and rendered media types; ask for one kind (PS3.18 §8.7.4).")
    return ranges


def choose(
    accept: str | None,
    *,
    part_types: Callable[[str], bool],
    default_part: str,
    single_part: bool,
    producible: Callable[[str], bool],
    query: Mapping[str, str] | None = None,
    default_syntax: str | None = None,
) -> Choice:
    """The first acceptable range (by q) that can be produced.

    ``part_types`` says which part media types the resource has; ``single_part`` whether
    a bare (non-multipart) response is allowed (one instance, PS3.18 §8.7.3.5);
    ``default_syntax`` the resource's transfer syntax for a range that names neither a part
    type nor a transfer syntax (none, ``*/*``, ``multipart/related; type="*/*"``) when it
    is not the part type's default (bulk data: as stored).
    """
    default = f"multipart/related; type={default_part}"
    if default_syntax is not None:
        default += f"; transfer-syntax={default_syntax}"
    ranges = _ranges(accept, query)
    if ranges is None:
        ranges = [MediaRange(parse_accept(default)[0].media_type)]
    for media_range in ranges:
        if default_syntax is not None and _names_nothing(media_range):
            media_range = MediaRange(parse_accept(default)[0].media_type, media_range.q)  # noqa: PLW2901
        choice = _choice(media_range, part_types, default_part, single_part)
        if choice is not None and producible(choice.transfer_syntax):
            return choice
    raise NotAcceptable(
        f"None of the acceptable media types can be produced; available: multipart/related; "
        f'type="{default_part}" with transfer-syntax=* (as stored) or the stored transfer syntax'
        + ("; or single-part " + default_part if single_part else "")
        + "."
    )


def _names_nothing(media_range: MediaRange) -> bool:
    """``*/*`` or multipart of any part type, without a transfer syntax: the resource's default."""
    if media_range.param("transfer-syntax") is not None:
        return False
    if media_range.type == "*/*":
        return True
    part = media_range.param("type")
    return media_range.type in ("multipart/*", "multipart/related") and (part is None or part == "*/*")


def _choice(
    media_range: MediaRange, part_types: Callable[[str], bool], default_part: str, single_part: bool
) -> Choice | None:
    syntax = media_range.param("transfer-syntax")
    if syntax is not None and syntax != AS_STORED and not is_valid_uid(syntax):
        return None
    if media_range.type in ("*/*", "multipart/*", "multipart/related"):
        part = (media_range.param("type") or default_part).lower()
        if part != "*/*" and not part_types(part):
            return None
        part = default_part if part == "*/*" else part
        return Choice(True, part, syntax or DEFAULT_SYNTAX_OF.get(part, EXPLICIT_VR_LITTLE_ENDIAN))
    if single_part and part_types(media_range.type):
        return Choice(
            False,
            media_range.type,
            syntax or DEFAULT_SYNTAX_OF.get(media_range.type, EXPLICIT_VR_LITTLE_ENDIAN),
        )
    return None
