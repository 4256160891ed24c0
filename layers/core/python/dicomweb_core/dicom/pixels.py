"""Pixel data and other bulk data of stored instances: what retrieval and the hooks send.

One module for reading frames by byte range, decompressing them, and re-encoding or
decompressing whole instances, shared by the retrieve service (PS3.18 §10.4.1.1.1 and
§10.4.1.1.4: instances and frames in the transfer syntax negotiated under §8.7.3), the
bulk data resource (§10.4.1.1.5) and the bundle hook, which pre-builds the answers too
large for one response. It works on any indexed instance (:class:`StoredInstance`) read
through an :class:`~dicomweb_core.storage.ObjectReader`; it knows nothing of requests.

A pixel data the codecs cannot decode raises :class:`~dicomweb_core.dicom.codecs.CannotDecode`
(logged here); the caller decides what that means (406 for a request, a skipped frame for
the hook).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, Protocol

import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomweb_core.dicom import codecs
from dicomweb_core.dicom.frames import FrameIndex, coalesce_reads, frame_span
from dicomweb_core.errors import BadRequest, NotFound
from dicomweb_core.observability import logger
from dicomweb_core.storage import ObjectReader, metadata_key

# The native syntaxes re-encoded into each other without a codec (PS3.5 §A.1, §A.2).
UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class StoredInstance(Protocol):
    """What this module needs of an indexed instance (``index.models.InstanceItem``)."""

    @property
    def sop_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def s3_key(self) -> str: ...
    @property
    def s3_version_id(self) -> str | None: ...
    @property
    def frame_index(self) -> str | None: ...


def metadata_of(reader: ObjectReader, item: StoredInstance) -> dict[str, Any]:
    """The instance's metadata document (DICOM JSON, built at ingest): its pixel description."""
    document: dict[str, Any] = json.loads(reader.read(metadata_key(item.s3_key)))
    return document


# ------------------------------------------------------------------- frames by range
def read_frame(reader: ObjectReader, item: StoredInstance, fragments: Sequence[tuple[int, int]]) -> bytes:
    """One frame: one ranged GET from its first fragment to its last, item headers sliced out."""
    (frame,) = read_frames(reader, item, [fragments])
    return frame


def read_frames(
    reader: ObjectReader, item: StoredInstance, frames: Sequence[Sequence[tuple[int, int]]]
) -> list[bytes]:
    """Each frame's bytes (its fragments joined), from as few ranged GETs as the layout allows.

    Frames close together share one GET (``frames.coalesce_reads``); each GET's bytes are
    dropped once its frames are sliced out, so memory stays near the frames' own size.
    """
    found = [b""] * len(frames)
    for (start, length), members in coalesce_reads([frame_span(f) for f in frames]):
        span = reader.read(item.s3_key, version_id=item.s3_version_id, byte_range=(start, length))
        for k in members:
            found[k] = b"".join(span[offset - start : offset - start + size] for offset, size in frames[k])
    return found


def frames_from_object(data: bytes, numbers: list[int]) -> list[bytes]:
    """Frames ``numbers`` of an instance without a frame index: the whole object parsed
    (the fallback of PS3.18 §10.4.1.1.4 retrieval); a number past the last frame is 400."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in dataset:
        raise NotFound("The instance has no pixel data.")
    count = int(dataset.get("NumberOfFrames") or 1)
    for number in numbers:
        if number > count:
            raise BadRequest(f"Frame {number} does not exist: the instance has {count} frame(s).")
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
    else:
        size = len(dataset.PixelData) // count
        frames = [dataset.PixelData[k * size : (k + 1) * size] for k in range(count)]
    return [frames[n - 1] for n in numbers]


class StoredFrameDecoder:
    """Decompresses single frames read by range (the bundle hook's large frames).

    The hook asks for an instance's decoded size and then for each of its frames: the
    instance's metadata document (the pixel description) and frame index are read once."""

    def __init__(self, reader: ObjectReader) -> None:
        self.reader = reader
        self._current: tuple[str, dict[str, Any], FrameIndex | None] | None = None

    def _described(self, item: StoredInstance) -> tuple[dict[str, Any], FrameIndex | None]:
        if self._current is None or self._current[0] != item.sop_uid:
            self._current = (
                item.sop_uid,
                metadata_of(self.reader, item),
                FrameIndex.from_document(item.frame_index),
            )
        return self._current[1], self._current[2]

    def decoded_size(self, item: StoredInstance) -> int:
        """Bytes of one decompressed frame of the instance (0 when unknown)."""
        return codecs.decoded_frame_length(self._described(item)[0])

    def decode(self, item: StoredInstance, number: int) -> bytes | None:
        """Frame ``number`` decompressed, or None when the codecs cannot decode it."""
        metadata, index = self._described(item)
        assert index is not None
        codestream = read_frame(self.reader, item, index.frames[number - 1])
        try:
            return codecs.decode_frame(codestream, item.transfer_syntax_uid, metadata)
        except codecs.CannotDecode:
            logger.warning("a large frame cannot be decoded", extra={"frame": number})
            return None


# ------------------------------------------------------------------- whole instances
def instance_in_syntax(reader: ObjectReader, item: StoredInstance, syntax: str) -> bytes:
    """The instance's Part 10 bytes in transfer syntax ``syntax`` (a UID): as stored,
    re-encoded between the native syntaxes, or decompressed to Explicit VR Little Endian.

    Raises :class:`~dicomweb_core.dicom.codecs.CannotDecode` when the codecs cannot
    decompress its pixel data.
    """
    data = reader.read(item.s3_key, version_id=item.s3_version_id)
    if syntax == item.transfer_syntax_uid:
        return data
    if item.transfer_syntax_uid in UNCOMPRESSED:
        return transcode(data, syntax)
    try:
        return codecs.decompress_instance(data)
    except codecs.CannotDecode as error:
        logger.warning(
            "instance cannot be decoded",
            extra={"transfer_syntax": item.transfer_syntax_uid, "reason": str(error)},
        )
        raise


def transcode(data: bytes, syntax: str) -> bytes:
    """Re-encode an uncompressed data set in another uncompressed transfer syntax."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def syntax_name(uid: str) -> str:
    """A transfer syntax for a person: its name and UID, or the UID alone when unknown."""
    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


# ------------------------------------------------------------------- bulk data values
def element_value(data: bytes, element_path: str) -> bytes:
    """The binary value at a BulkDataURI path (PS3.18 §10.4.1.1.5): tags and item numbers
    joined by dots, as the metadata's BulkDataURIs write them; anything else is 404."""
    parts = element_path.split(".")
    if len(parts) % 2 != 1 or not all(len(p) == 8 for p in parts[::2]):
        raise NotFound("No such bulk data.")
    try:
        target: Any = pydicom.dcmread(io.BytesIO(data))
        for position, part in enumerate(parts):
            # Even positions are tags (an element's value), odd ones item numbers.
            target = target[int(part, 16)].value if position % 2 == 0 else target[int(part)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise NotFound("No such bulk data.") from None
    if not isinstance(target, bytes | bytearray):
        raise NotFound("No such bulk data (the element is not binary).")
    return bytes(target)
