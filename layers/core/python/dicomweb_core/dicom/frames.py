"""Where each frame's bytes are in a stored Part 10 file, recorded at ingest.

WADO-RS frame retrieval (PS3.18 §10.4.1.1.4) then reads exactly those byte ranges from
S3 instead of the whole object. Native pixel data: frame *k* is a fixed-size slice.
Encapsulated pixel data (PS3.5 A.4): fragments are located once; frames map to
fragments through the Basic Offset Table, one fragment per frame, or all fragments for a
single frame. Anything else (deflated data sets, bit-packed frames, fragments that
cannot be assigned) has no index and is served by reading the whole object.

A list of frames is read in as few ranged GETs as the layout allows (:func:`coalesce_reads`):
frames close together in the object share one read, within bounds on the bytes read
between them and on the size of one read, so memory stays bounded.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.uid import UID

PIXEL_DATA = 0x7FE00010
ITEM_TAG = b"\xfe\xff\x00\xe0"
UNDEFINED = 0xFFFFFFFF
Range = tuple[int, int]  # (offset in the object, length)

# Reading through a gap of this many bytes between two frames is cheaper than a second GET:
# an S3 request costs tens of milliseconds before its first byte, 256 KiB a few milliseconds
# of transfer.
MAX_READ_GAP = 256 * 1024
# All gaps read through in one request together: the most memory spent on bytes nobody
# asked for (a list of frames spread thinly over a large object gets more GETs instead).
MAX_READ_WASTE = 1024 * 1024
# One read joining several frames holds at most this many bytes (a whole response is about
# 4.4 MB); a single frame larger than this is still read whole, on its own.
MAX_READ_SPAN = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FrameIndex:
    """Byte ranges of every frame: one range (native) or the frame's fragments."""

    frames: tuple[tuple[Range, ...], ...]
    encapsulated: bool

    def __len__(self) -> int:
        return len(self.frames)

    def to_json(self) -> list[list[list[int]]]:
        return [[list(r) for r in frame] for frame in self.frames]

    @classmethod
    def from_json(cls, frames: list[list[list[int]]], *, encapsulated: bool) -> FrameIndex:
        return cls(tuple(tuple((int(o), int(n)) for o, n in frame) for frame in frames), encapsulated)

    @classmethod
    def from_document(cls, text: str | None) -> FrameIndex | None:
        """The index as the index item stores it (``InstanceItem.frame_index``), if any."""
        if not text:
            return None
        document = json.loads(text)
        return cls.from_json(document["frames"], encapsulated=bool(document["encapsulated"]))

    def frame_size(self, number: int) -> int:
        """Bytes of frame ``number`` (1-based) as stored."""
        return sum(length for _, length in self.frames[number - 1])


def frame_span(fragments: Sequence[Range]) -> Range:
    """The bytes from a frame's first fragment to the end of its last (item headers between)."""
    start = fragments[0][0]
    end = fragments[-1][0] + fragments[-1][1]
    return start, end - start


def coalesce_reads(
    spans: Sequence[Range],
    *,
    max_gap: int = MAX_READ_GAP,
    max_waste: int = MAX_READ_WASTE,
    max_span: int = MAX_READ_SPAN,
) -> list[tuple[Range, tuple[int, ...]]]:
    """Ranged reads covering ``spans``, each with the positions (in ``spans``) of those it holds.

    In offset order, a span joins the previous read when the bytes between them are at most
    ``max_gap``, the gaps read through so far stay within ``max_waste``, and the joined read
    stays within ``max_span``; otherwise it starts a read of its own. Each span lies wholly
    in the one read it is assigned to.
    """
    order = sorted(range(len(spans)), key=lambda k: spans[k])
    reads: list[tuple[int, int, list[int]]] = []  # (start, end, members)
    wasted = 0
    for k in order:
        offset, length = spans[k]
        end = offset + length
        if reads:
            start, last_end, members = reads[-1]
            gap = max(0, offset - last_end)
            joined_end = max(last_end, end)
            if offset - last_end <= max_gap and wasted + gap <= max_waste and joined_end - start <= max_span:
                wasted += gap
                members.append(k)
                reads[-1] = (start, joined_end, members)
                continue
        reads.append((offset, end, [k]))
    return [((start, end - start), tuple(members)) for start, end, members in reads]


def frame_index(dataset: Dataset, data: bytes, transfer_syntax_uid: str) -> FrameIndex | None:
    """The frames of ``dataset`` as parsed from ``data``, or None when not indexable."""
    if not UID(transfer_syntax_uid).is_little_endian or UID(transfer_syntax_uid).is_deflated:
        return None
    located = _pixel_data_position(dataset.get_item(PIXEL_DATA))
    if located is None:
        return None
    value_at, length = located
    try:
        count = int(dataset.get("NumberOfFrames") or 1)
        if count < 1:
            return None
        if length != UNDEFINED:
            return _native(dataset, value_at, length, count)
        return _encapsulated(data, value_at, count)
    except (ValueError, TypeError, AttributeError, struct.error):
        return None  # attributes the frame geometry depends on are missing or malformed


def _pixel_data_position(element: object) -> tuple[int, int] | None:
    """(offset of the value in the file, value length or UNDEFINED), as read from the file.

    The element may still be raw or already converted (building the metadata document
    converts every element); both remember where the value starts.
    """
    if isinstance(element, RawDataElement):
        if element.value_tell is None:
            return None
        return element.value_tell, element.length
    if isinstance(element, DataElement) and element.file_tell is not None:
        if element.is_undefined_length:
            return element.file_tell, UNDEFINED
        if isinstance(element.value, bytes | bytearray):
            return element.file_tell, len(element.value)
    return None


def _native(dataset: Dataset, start: int, length: int, count: int) -> FrameIndex | None:
    bits = int(dataset.get("BitsAllocated") or 0)
    if bits == 0 or bits % 8:
        return None  # bit-packed frames do not start on byte boundaries
    size = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1) * bits // 8
    if size <= 0 or size * count > length:
        return None
    return FrameIndex(tuple(((start + k * size, size),) for k in range(count)), encapsulated=False)


def _encapsulated(data: bytes, value_at: int, count: int) -> FrameIndex | None:
    if data[value_at : value_at + 4] != ITEM_TAG:
        return None
    (bot_length,) = struct.unpack_from("<I", data, value_at + 4)
    first_fragment = value_at + 8 + bot_length
    offsets = list(struct.unpack_from(f"<{bot_length // 4}I", data, value_at + 8)) if bot_length else []
    stream = io.BytesIO(data)
    stream.seek(first_fragment)
    try:
        _, positions = parse_fragments(stream)
    except (ValueError, struct.error):
        return None
    fragments = []
    for at in positions:  # absolute offsets of each fragment's item tag
        (length,) = struct.unpack_from("<I", data, at + 4)
        fragments.append((at - first_fragment, (at + 8, length)))
    if not fragments:
        return None
    if count == 1:
        groups = [[f for _, f in fragments]]
    elif len(offsets) == count:
        bounds = [*offsets, 1 << 62]
        groups = [[f for p, f in fragments if bounds[k] <= p < bounds[k + 1]] for k in range(count)]
    elif len(fragments) == count:
        groups = [[f] for _, f in fragments]
    else:
        return None
    if any(not group for group in groups):
        return None
    return FrameIndex(tuple(tuple(group) for group in groups), encapsulated=True)
