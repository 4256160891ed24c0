"""Reading one received Part 10 instance: bounded parsing and validation for STOW-RS.

PS3.18 §10.5 lets the origin server refuse an instance it cannot understand; here every
check that protects the store happens before anything is written: the Part 10 header,
the transfer syntax, bounded inflation of deflated data sets, bounded sequence nesting,
no element declaring more bytes than the part holds, and valid required UIDs. The stored
bytes are the received bytes with the 128-byte preamble zeroed (PS3.10 §7.1 allows any
preamble; an executable one turns a DICOM file into a polyglot, so it never survives).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import VR

from dicomweb_core.config import Limits
from dicomweb_core.dicom.failures import FailureReason, InstanceRejected
from dicomweb_core.dicom.frames import FrameIndex, frame_index
from dicomweb_core.dicom.metadata import instance_metadata
from dicomweb_core.dicom.uid import is_valid_uid

PREAMBLE_LENGTH = 128
PART10_PREFIX = b"DICM"
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA_TAG = 0x7FE00010
# Explicit VR elements whose length field is 4 bytes (PS3.5 §7.1.2).
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# The VRs pydicom reads as explicit; any other two bytes make it switch to implicit VR.
_KNOWN_VRS = {vr.value.encode("ascii") for vr in VR if len(vr.value) == 2}
_ELEMENT_HEADER_LENGTH = 8
_EOF_BEFORE_DELIMITER = "End of file reached before delimiter"
_INFLATE_STEP = 1 << 20  # bytes inflated per step: the most one step holds in memory

# Attributes the index keeps per level: what QIDO-RS returns and matches on
# (PS3.18 Tables 10.6.3-3/4/5 and 10.6.1-5) plus a few that viewers list.
STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
)
SERIES_KEYWORDS = (
    "SpecificCharacterSet",
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
INSTANCE_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "ContentDate",
    "ContentTime",
)


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """A validated instance, ready to store: its bytes and what the index needs."""

    data: bytes  # Part 10 bytes as stored (preamble zeroed)
    sha256: str  # hex digest of ``data``
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    study_json: dict[str, Any]
    series_json: dict[str, Any]
    instance_json: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)  # WADO-RS metadata (metadata.py)
    frames: FrameIndex | None = None  # byte ranges of each frame (frames.py)

    @property
    def size(self) -> int:
        return len(self.data)


class InflationBudget:
    """What all deflated parts of one request may inflate to together, so a request of many
    small deflate bombs costs bounded CPU, not one bounded inflation per part."""

    def __init__(self, total: int) -> None:
        self.remaining = total


def read_instance(
    data: bytes | memoryview, *, limits: Limits, budget: InflationBudget | None = None
) -> ReceivedInstance:
    """Validate one Part 10 object and return what STOW-RS stores and indexes.

    Raises :class:`InstanceRejected` with the DICOM failure reason and a message that
    says what is wrong; the original UIDs are attached when they could be read.
    """
    stored = _zero_preamble(data)
    transfer_syntax, meta_end = _read_file_meta(stored)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        _check_inflated_size(stored, meta_end, limits=limits, budget=budget)
    dataset = _parse(stored)
    sop_class = _uid_or_none(dataset, "SOPClassUID")
    sop_instance = _uid_or_none(dataset, "SOPInstanceUID")
    try:
        _check_elements(dataset, depth=0, limits=limits)
        _check_file_meta(dataset, sop_instance)
        uids = {
            keyword: _required_uid(dataset, keyword)
            for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        }
        return ReceivedInstance(
            data=stored,
            sha256=hashlib.sha256(stored).hexdigest(),
            transfer_syntax_uid=transfer_syntax,
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            modality=str(dataset.get("Modality", "") or ""),
            study_json=level_json(dataset, STUDY_KEYWORDS),
            series_json=level_json(dataset, SERIES_KEYWORDS),
            instance_json=level_json(dataset, INSTANCE_KEYWORDS),
            metadata=instance_metadata(
                dataset,
                study=uids["StudyInstanceUID"],
                series=uids["SeriesInstanceUID"],
                sop=uids["SOPInstanceUID"],
            ),
            frames=frame_index(dataset, stored, transfer_syntax),
        )
    except InstanceRejected as exc:
        raise exc.with_uids(sop_class, sop_instance) from None
    except Exception as exc:  # untrusted input: any pydicom failure means "cannot understand"
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            f"the data set could not be decoded ({type(exc).__name__}).",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        ) from exc


def level_json(dataset: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    """The DICOM JSON (PS3.18 Annex F) of the named attributes that are present."""
    subset = Dataset()
    for keyword in keywords:
        if keyword in dataset:
            subset.add(dataset.data_element(keyword))  # type: ignore[arg-type]
    return subset.to_json_dict()


def _zero_preamble(data: bytes | memoryview) -> bytes:
    if len(data) < PREAMBLE_LENGTH + len(PART10_PREFIX) or bytes(data[128:132]) != PART10_PREFIX:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            "not a DICOM Part 10 file: the 'DICM' prefix after the 128-byte preamble is missing "
            "(PS3.10 §7.1); send files with their File Meta Information.",
        )
    return bytes(PREAMBLE_LENGTH) + bytes(data[PREAMBLE_LENGTH:])


def _read_file_meta(data: bytes) -> tuple[str, int]:
    """The Transfer Syntax UID (0002,0010) and the offset where the File Meta Information ends.

    The group is always Explicit VR Little Endian (PS3.10 §7.1). The walk ends where pydicom's
    does (at the first element outside group 0002) and refuses what pydicom would read some
    other way: an unknown VR (pydicom switches to implicit VR), an undefined or overlong
    length, a repeated element (pydicom keeps the last, this walk would see the first).
    Otherwise a crafted header could show these checks one transfer syntax, or one start of
    the deflated stream, and the parser another, and skip the bounded inflation.
    """
    offset = PREAMBLE_LENGTH + len(PART10_PREFIX)
    seen: set[int] = set()
    transfer_syntax: bytes | None = None
    while offset + _ELEMENT_HEADER_LENGTH <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr not in _KNOWN_VRS:
            raise _bad_file_meta(f"element (0002,{element:04X}) has no valid explicit VR")
        if vr in _LONG_LENGTH_VRS:
            if offset + 12 > len(data):
                raise _bad_file_meta("the File Meta Information is truncated")
            (length,) = struct.unpack_from("<I", data, offset + 8)
            value_at = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            value_at = offset + 8
        if length == UNDEFINED_LENGTH or value_at + length > len(data):
            raise _bad_file_meta(f"element (0002,{element:04X}) declares more bytes than the file holds")
        if element in seen:
            raise _bad_file_meta(f"element (0002,{element:04X}) appears more than once")
        seen.add(element)
        if element == 0x0010:
            transfer_syntax = data[value_at : value_at + length]
        offset = value_at + length
    if transfer_syntax is None:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            "the File Meta Information has no readable Transfer Syntax UID (0002,0010).",
        )
    uid = transfer_syntax.rstrip(b"\0 ").decode("ascii", "replace")
    return _supported_transfer_syntax(uid), offset


def _bad_file_meta(problem: str) -> InstanceRejected:
    return InstanceRejected(
        FailureReason.CANNOT_UNDERSTAND, f"the File Meta Information is malformed: {problem} (PS3.10 §7.1)."
    )


def _supported_transfer_syntax(uid: str) -> str:
    if not is_valid_uid(uid):
        raise InstanceRejected(FailureReason.CANNOT_UNDERSTAND, "the Transfer Syntax UID is not a valid UID.")
    if not UID(uid).is_transfer_syntax:
        raise InstanceRejected(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            "the transfer syntax is not one this server can parse; send a standard transfer syntax "
            "(PS3.5 Annex A).",
        )
    return uid


def _check_inflated_size(
    data: bytes, meta_end: int, *, limits: Limits, budget: InflationBudget | None
) -> None:
    """Inflate in bounded steps so a deflate bomb costs bounded memory (PS3.5 §A.5).

    Inflation stops at the end of the deflate stream. Bytes after it are ignored, as
    pydicom's reader ignores them: writers pad an odd-length stream to even length with a
    NUL (pydicom does), and some leave a gzip-style trailer (pydicom's ``image_dfl.dcm``).
    They are never inflated, so they cost nothing. A stream that ends before its final
    block is a truncated file.
    """
    if data[meta_end : meta_end + 2] == b"\0\0":
        # pydicom would first read these bytes as uncompressed Command Set (0000,eeee)
        # elements and inflate only what follows, which this check would not see.
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            "the deflated data set starts with Command Set (0000,eeee) elements.",
        )
    per_request = budget is not None and budget.remaining < limits.max_inflated_bytes
    cap = (
        min(limits.max_inflated_bytes, budget.remaining) if budget is not None else limits.max_inflated_bytes
    )
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = data[meta_end:]
    total = 0
    try:
        # ``unconsumed_tail`` may keep trailing bytes after the end of the stream (CPython
        # leaves them there as well as in ``unused_data``), so ``eof`` decides when to stop.
        while not inflater.eof and total <= cap:
            chunk = inflater.decompress(pending, _INFLATE_STEP)
            total += len(chunk)
            tail = inflater.unconsumed_tail
            if not chunk and len(tail) in (0, len(pending)):
                break  # no input left, or none taken, and no output: the stream is cut short
            pending = tail
    except zlib.error as exc:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, "the deflated data set is not valid deflate data."
        ) from exc
    finally:
        if budget is not None:
            budget.remaining = max(0, budget.remaining - total)
    if total > cap:
        where = (
            "the deflated parts of this request together inflate to"
            if per_request
            else "the deflated data set inflates to"
        )
        raise InstanceRejected(
            FailureReason.OUT_OF_RESOURCES,
            f"{where} more than {_describe_size(limits.max_inflated_bytes)}; refused.",
        )
    if not inflater.eof:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            "the deflated data set is truncated: its deflate stream ends early, before its final block.",
        )


def _describe_size(size: int) -> str:
    mib = 1 << 20
    return f"{size // mib} MiB" if size >= mib and size % mib == 0 else f"{size} bytes"


class _WatchedBytesIO(io.BytesIO):
    """Notices when the parser finds only part of an element header at the end of the data.

    pydicom ends the data set silently when fewer than 8 bytes of an element header remain,
    so a file cut inside a header would otherwise read as a shorter, complete one.
    """

    partial_header = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size == _ELEMENT_HEADER_LENGTH and 0 < len(chunk) < size:
            self.partial_header = True
        return chunk


def _parse(stored: bytes) -> Dataset:
    source = _WatchedBytesIO(stored)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(source, force=False)
    except RecursionError:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, "sequences are nested too deeply to parse."
        ) from None
    except Exception as exc:  # untrusted input: any parser failure means "cannot understand"
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            f"the file could not be parsed as DICOM ({type(exc).__name__}); it may be truncated.",
        ) from exc
    # pydicom only warns (and drops the elements read so far) when an undefined-length value
    # has no delimiter before the end of the data: the file is truncated.
    if source.partial_header or any(_EOF_BEFORE_DELIMITER in str(w.message) for w in caught):
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            "the file is truncated: it ends inside an element "
            + ("header." if source.partial_header else "of undefined length, before its delimiter."),
        )
    return dataset


def _check_elements(dataset: Dataset, *, depth: int, limits: Limits) -> None:
    """Every element's value is complete and sequences nest at most ``max_sequence_depth``."""
    if depth > limits.max_sequence_depth:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            f"sequences are nested more than {limits.max_sequence_depth} levels deep.",
        )
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if isinstance(raw, RawDataElement):
            _check_complete(raw)
            if not _may_be_sequence(raw):
                continue
            _check_item_lengths(raw)
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value:
                _check_elements(item, depth=depth + 1, limits=limits)


def _is_incomplete(raw: RawDataElement) -> bool:
    return raw.length != UNDEFINED_LENGTH and raw.value is not None and len(raw.value) < raw.length


def _check_complete(raw: RawDataElement) -> None:
    if _is_incomplete(raw):
        present = len(raw.value or b"")
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            f"element {BaseTag(raw.tag)} declares {raw.length} bytes but only {present} follow: "
            "the file is truncated or its lengths are corrupt.",
        )


_ITEM = (0xFFFE, 0xE000)


def _check_item_lengths(raw: RawDataElement) -> None:
    """No item of a defined-length sequence declares more bytes than the sequence holds.

    pydicom keeps no item lengths, so a lie there would survive parsing and be passed on to
    clients that retrieve the object as stored. Only item headers are read; undefined-length
    items end at their delimiter, inside the sequence's own bound. (Item headers of the
    retired big-endian syntax do not match and are not checked.)"""
    value = raw.value
    if raw.length == UNDEFINED_LENGTH or not isinstance(value, bytes | bytearray):
        return
    position = 0
    while position + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHI", value, position)
        if (group, element) != _ITEM or length == UNDEFINED_LENGTH:
            return
        position += 8
        if length > len(value) - position:
            raise InstanceRejected(
                FailureReason.CANNOT_UNDERSTAND,
                f"an item of sequence {BaseTag(raw.tag)} declares {length} bytes but only "
                f"{len(value) - position} remain in the sequence: its lengths are corrupt.",
            )
        position += length


def _may_be_sequence(raw: RawDataElement) -> bool:
    if raw.VR == "SQ":
        return True
    if raw.VR not in (None, "UN") or raw.tag == PIXEL_DATA_TAG:
        return False
    try:
        return dictionary_VR(raw.tag) == "SQ"
    except KeyError:
        return raw.length == UNDEFINED_LENGTH


def _check_file_meta(dataset: Dataset, sop_instance: str | None) -> None:
    meta_instance = getattr(dataset, "file_meta", Dataset()).get("MediaStorageSOPInstanceUID")
    if meta_instance is not None and sop_instance is not None and str(meta_instance) != sop_instance:
        raise InstanceRejected(
            FailureReason.DATASET_DOES_NOT_MATCH,
            "MediaStorageSOPInstanceUID (0002,0003) differs from SOPInstanceUID (0008,0018).",
        )


def _uid_or_none(dataset: Dataset, keyword: str) -> str | None:
    try:
        raw = dataset.get_item(keyword)
        if isinstance(raw, RawDataElement) and _is_incomplete(raw):
            return None  # leave it raw: the full check reports it as truncated
        value = dataset.get(keyword)
    except Exception:  # an undecodable element is reported by the full check later
        return None
    return str(value) if is_valid_uid(str(value) if value is not None else None) else None


def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    text = str(value) if value is not None else ""
    if not text:
        raise InstanceRejected(FailureReason.DATASET_DOES_NOT_MATCH, f"the required {keyword} is missing.")
    if not is_valid_uid(text):
        raise InstanceRejected(
            FailureReason.DATASET_DOES_NOT_MATCH,
            f"{keyword} is not a valid UID (1 to 64 digits and dots, no leading zeros; PS3.5 §9.1).",
        )
    return text
