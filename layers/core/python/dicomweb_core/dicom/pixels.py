"""Pixel data and other bulk data of stored instances: the one module that reads and decodes them.

Retrieval (PS3.18 §10.4.1.1.1 and §10.4.1.1.4: instances and frames in the transfer syntax
negotiated under §8.7.3), the bulk data resource (§10.4.1.1.5), the bundle hook (which
pre-builds the answers too large for one response) and the render service (rendered
images and thumbnails, §10.4.1.1.3, §10.4.4) all read pixels through here:

- :class:`InstancePixels`, one instance's frames: as stored, by byte range from the frame
  index recorded at ingest (frames close together share one ranged GET), else from the
  whole object; decompressed to native bytes (WADO's default Accept, the hook's large
  frames); or decoded to arrays with the attributes that describe them (rendering). A
  compressed frame is decoded from its own fragments alone, so a frame of a multi-frame
  instance costs about that frame's bytes, whatever the number of frames;
- :func:`instance_in_syntax`, whole instances as stored, re-encoded between the native
  syntaxes (big endian byte-swapped, ``endian``), or decompressed;
- :func:`element_value`, one bulk data value.

Native big-endian instances (Explicit VR Big Endian, retired) have no frame index: their
frames come from the whole object, as stored or, for the little-endian syntaxes, with each
sample's bytes swapped (``endian``).

It works on any indexed instance (:class:`StoredInstance`) read through an
:class:`~dicomweb_core.storage.ObjectReader`; it knows nothing of requests. A pixel data
the codecs cannot decode raises :class:`~dicomweb_core.dicom.codecs.CannotDecode` (logged
here); the caller decides what that means (406 for a request, a skipped frame for the hook).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Protocol, TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomweb_core.dicom import codecs, endian
from dicomweb_core.dicom.frames import FrameIndex, coalesce_reads, frame_span
from dicomweb_core.errors import BadRequest, NotFound
from dicomweb_core.observability import logger
from dicomweb_core.storage import ObjectReader, metadata_key

# The native little-endian syntaxes, re-encoded into each other without a codec (PS3.5 §A.1, §A.2).
UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
# Native syntaxes whose data becomes little endian without a codec: big endian is byte-swapped.
NATIVE = UNCOMPRESSED | {ExplicitVRBigEndian}
T = TypeVar("T")


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


class NoPixelData(NotFound):
    """The instance has no pixel data (a report, a presentation state, an encapsulated document)."""

    default_message = "The instance has no pixel data."


class UndecodableFrame(codecs.CannotDecode):
    """Frame ``number`` of a list could not be decoded (the reason is the message)."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(reason)
        self.number = number


def frames_from_object(data: bytes, numbers: Sequence[int], *, little_endian: bool = False) -> list[bytes]:
    """Frames ``numbers`` of an instance without a frame index: the whole object parsed
    (the fallback of PS3.18 §10.4.1.1.4 retrieval); a number past the last frame is 400.

    Native frames are cut at their exact size (``native_frames``); with ``little_endian``,
    those of a big-endian instance have each sample's bytes swapped (``endian``)."""
    dataset = _parse(data)
    count = _frame_count(dataset, numbers)
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
        return [frames[n - 1] for n in numbers]
    value = dataset.PixelData
    if little_endian and endian.is_big_endian(dataset):
        value = endian.swapped(value, endian.unit_of(dataset["PixelData"], dataset))
    return native_frames(dataset, value, count, numbers)


def native_frames(dataset: Dataset, value: bytes, count: int, numbers: Sequence[int]) -> list[bytes]:
    """Frames ``numbers`` of native pixel data ``value`` holding ``count`` frames.

    Each frame is Rows x Columns x Samples per Pixel samples of Bits Allocated bits (PS3.5
    §8.1.1), so the padding byte of an odd-length value is no part of the last frame.
    Bit-packed frames (Bits Allocated 1) need not start on a byte boundary: each is taken
    from its first bit and packed from bit 0 of its own first byte, its last byte padded
    with zero bits, as a single-frame instance would hold it. Without the attributes, or
    when they describe more than the value holds, frames are equal shares of the value.
    """
    try:
        samples = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1)
        bits = int(dataset.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        samples, bits = 0, 0
    if samples <= 0 or (bits != 1 and bits % 8) or (samples * bits * count + 7) // 8 > len(value):
        size = len(value) // count
        return [value[(n - 1) * size : n * size] for n in numbers]
    if bits % 8 == 0:
        size = samples * bits // 8
        return [value[(n - 1) * size : n * size] for n in numbers]
    return [_bit_frame(value, (n - 1) * samples, samples) for n in numbers]


def _bit_frame(value: bytes, first: int, length: int) -> bytes:
    """Bits ``first`` to ``first + length`` of a bit-packed value (pixel k at bit k % 8 of
    byte k // 8, PS3.5 §8.1.1), re-packed from bit 0."""
    if first % 8 == 0 and length % 8 == 0:
        return value[first // 8 : (first + length) // 8]
    chunk = value[first // 8 : (first + length + 7) // 8]
    bits = (int.from_bytes(chunk, "little") >> (first % 8)) & ((1 << length) - 1)
    return bits.to_bytes((length + 7) // 8, "little")


def _parse(data: bytes) -> Dataset:
    """A whole instance parsed; one without pixel data is :class:`NoPixelData` (404)."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in dataset:
        raise NoPixelData()
    return dataset


def _frame_count(dataset: Dataset, numbers: Sequence[int]) -> int:
    """The instance's number of frames, after checking that ``numbers`` are among them."""
    count = int(dataset.get("NumberOfFrames") or 1)
    _check_numbers(numbers, count)
    return count


def _check_numbers(numbers: Sequence[int], count: int) -> None:
    """A frame number past the last frame is 400, with the number of frames."""
    for number in numbers:
        if number > count:
            raise BadRequest(f"Frame {number} does not exist: the instance has {count} frame(s).")


@dataclass(frozen=True, slots=True)
class FrameImage:
    """One frame decoded for display, with what describes it.

    ``array`` is what ``pixel_array(ds, index=...)`` gives (YBR as RGB, samples
    interleaved, signedness corrected); ``properties`` is pydicom's description of that
    array (its photometric interpretation, bits, samples); ``dataset`` holds the
    instance's attributes without its pixel data (the LUTs, windows, functional groups)."""

    number: int
    array: Any  # numpy.ndarray (numpy is in the imaging layer)
    properties: dict[str, Any]
    dataset: Dataset


class InstancePixels:
    """The frames of one stored instance, read as little as each use needs.

    The frame index recorded at ingest (``frames.FrameIndex``) gives each frame's byte
    ranges, so frames are read by range, several close together in one GET
    (``frames.coalesce_reads``). An instance without one (deflated, big endian,
    bit-packed, unassignable fragments) is read whole. The instance's metadata document
    is read once, when decompression needs its pixel description.
    """

    # Frames decoded to arrays per batch of reads: memory stays near this many frames.
    IMAGE_BATCH = 16

    def __init__(self, reader: ObjectReader, item: StoredInstance) -> None:
        self.reader = reader
        self.item = item
        self.index = FrameIndex.from_document(item.frame_index)

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """The instance's metadata document (DICOM JSON, built at ingest)."""
        return metadata_of(self.reader, self.item)

    def _whole(self) -> bytes:
        return self.reader.read(self.item.s3_key, version_id=self.item.s3_version_id)

    # ------------------------------------------------------------------ as stored
    def stored(self, numbers: Sequence[int], *, little_endian: bool = False) -> list[bytes]:
        """Frames ``numbers`` as stored: by range from the frame index, else from the whole
        object; a number past the last frame is 400. With ``little_endian``, the native
        frames of a big-endian instance come byte-swapped (Explicit VR Little Endian frames)."""
        if self.index is None:
            return frames_from_object(self._whole(), numbers, little_endian=little_endian)
        _check_numbers(numbers, len(self.index))
        return read_frames(self.reader, self.item, [self.index.frames[n - 1] for n in numbers])

    # ------------------------------------------------------------------ decompressed
    def decoded_size(self) -> int:
        """Bytes of one decompressed frame (as :meth:`decoded` gives it), 0 when unknown."""
        return codecs.decoded_frame_length(self.metadata)

    def decoded(self, numbers: Sequence[int], frames: Sequence[bytes]) -> list[bytes]:
        """The compressed ``frames`` (numbered ``numbers``) as native pixel bytes, what
        ``pixel_array(ds, index=..., raw=True)`` holds. Raises :class:`UndecodableFrame`
        naming the first frame the codecs cannot decode."""
        stored = self.item.transfer_syntax_uid
        return [
            self._guarded(number, partial(codecs.decode_frame, frame, stored, self.metadata))
            for number, frame in zip(numbers, frames, strict=True)
        ]

    # ------------------------------------------------------------------ for display
    def images(self, numbers: Sequence[int]) -> Iterator[FrameImage]:
        """Frames ``numbers`` decoded for display, in the order given (see :class:`FrameImage`).

        With a frame index, the attributes before the pixel data are read by range (in the
        same GET as the first frames when they are close) and each frame from its own
        bytes; batches of frames are read and decoded in turn. A number past the last
        frame is 400; an instance without pixel data is :class:`NoPixelData`; a frame the
        codecs cannot decode raises :class:`UndecodableFrame`.
        """
        if self.index is None:
            dataset = _parse(self._whole())
            _frame_count(dataset, numbers)
            for number in numbers:
                decoded = self._guarded(number, partial(codecs.dataset_frame_array, dataset, number - 1))
                yield FrameImage(number, *decoded, dataset)
            return
        index = self.index
        _check_numbers(numbers, len(index))
        header_span: tuple[tuple[int, int], ...] = ((0, index.frames[0][0][0]),)
        header: Dataset | None = None
        for start in range(0, len(numbers), self.IMAGE_BATCH):
            batch = numbers[start : start + self.IMAGE_BATCH]
            wanted = [index.frames[n - 1] for n in batch]
            if header is None:  # the attributes ride along with the first frames when near
                raw_header, *frames = read_frames(self.reader, self.item, [header_span, *wanted])
                header = self._guarded(batch[0], partial(_parse_header, raw_header))
            else:
                frames = read_frames(self.reader, self.item, wanted)
            syntax = self.item.transfer_syntax_uid
            for number, frame in zip(batch, frames, strict=True):
                decoded = self._guarded(number, partial(codecs.frame_array, frame, syntax, header))
                yield FrameImage(number, *decoded, header)

    def _guarded(self, number: int, decode: Callable[[], T]) -> T:
        """``decode()`` for frame ``number``; a frame the codecs cannot decode is logged and
        raised as :class:`UndecodableFrame`."""
        syntax = self.item.transfer_syntax_uid
        try:
            return decode()
        except codecs.CannotDecode as error:
            details = {"transfer_syntax": syntax, "frame": number, "reason": str(error)}
            logger.warning("frame cannot be decoded", extra=details)
            raise UndecodableFrame(number, str(error)) from error


def _parse_header(data: bytes) -> Dataset:
    """The attributes before the pixel data, read by range; unreadable ones are :class:`CannotDecode`."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as error:  # pydicom raises InvalidDicomError, ValueError, EOFError, ...
        raise codecs.CannotDecode(f"the attributes before the pixel data cannot be read: {error}") from error


# ------------------------------------------------------------------- whole instances
def instance_in_syntax(reader: ObjectReader, item: StoredInstance, syntax: str) -> bytes:
    """The instance's Part 10 bytes in transfer syntax ``syntax`` (a UID): as stored,
    re-encoded from a native syntax into a little-endian one (big endian byte-swapped), or
    decompressed to Explicit VR Little Endian.

    Raises :class:`~dicomweb_core.dicom.codecs.CannotDecode` when the codecs cannot
    decompress its pixel data.
    """
    data = reader.read(item.s3_key, version_id=item.s3_version_id)
    if syntax == item.transfer_syntax_uid:
        return data
    if item.transfer_syntax_uid in NATIVE:
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
    """Re-encode a native data set in a native little-endian transfer syntax (``UNCOMPRESSED``).

    A big-endian data set has its binary values byte-swapped first (``endian``): pydicom
    re-encodes numbers in the new byte order but copies OB/OW/OF/... values as they are.
    """
    if syntax not in UNCOMPRESSED:
        raise ValueError(f"{syntax} is not a native little-endian transfer syntax")
    dataset = pydicom.dcmread(io.BytesIO(data))
    if endian.is_big_endian(dataset):
        endian.to_little_endian(dataset)
    dataset.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    # dcmwrite, not save_as: save_as refuses to change the byte order, which was done above.
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def syntax_name(uid: str) -> str:
    """A transfer syntax for a person: its name and UID, or the UID alone when unknown."""
    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


# ------------------------------------------------------------------- bulk data values
def element_value(data: bytes, element_path: str, *, little_endian: bool = False) -> bytes:
    """The binary value at a BulkDataURI path (PS3.18 §10.4.1.1.5): tags and item numbers
    joined by dots, as the metadata's BulkDataURIs write them; anything else is 404.

    With ``little_endian``, the value of a big-endian instance is byte-swapped by its VR
    (Pixel Data by its samples, ``endian.unit_of``), as a little-endian syntax holds it."""
    parts = element_path.split(".")
    if len(parts) % 2 != 1 or not all(len(p) == 8 for p in parts[::2]):
        raise NotFound("No such bulk data.")
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        owner: Any = dataset
        element: Any = None
        for position, part in enumerate(parts):
            # Even positions are tags (an element), odd ones item numbers (a data set).
            if position % 2 == 0:
                element = owner[int(part, 16)]
            else:
                owner = element.value[int(part)]
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        raise NotFound("No such bulk data.") from None
    value = element.value
    if not isinstance(value, bytes | bytearray):
        raise NotFound("No such bulk data (the element is not binary).")
    if little_endian and endian.is_big_endian(dataset):
        return endian.swapped(bytes(value), endian.unit_of(element, owner))
    return bytes(value)
