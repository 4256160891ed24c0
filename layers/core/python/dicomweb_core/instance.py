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
import zlib
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicomweb_core.config import Limits
from dicomweb_core.failures import FailureReason, InstanceRejected
from dicomweb_core.uid import is_valid_uid

PREAMBLE_LENGTH = 128
PART10_PREFIX = b"DICM"
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA_TAG = 0x7FE00010
# Explicit VR elements whose length field is 4 bytes (PS3.5 §7.1.2).
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

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

    @property
    def size(self) -> int:
        return len(self.data)


def read_instance(data: bytes | memoryview, *, limits: Limits) -> ReceivedInstance:
    """Validate one Part 10 object and return what STOW-RS stores and indexes.

    Raises :class:`InstanceRejected` with the DICOM failure reason and a message that
    says what is wrong; the original UIDs are attached when they could be read.
    """
    stored = _zero_preamble(data)
    transfer_syntax = _transfer_syntax_of(stored)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        _check_inflated_size(stored, limits=limits)
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


def _transfer_syntax_of(data: bytes) -> str:
    """Read (0002,0010) from the File Meta Information (always Explicit VR Little Endian)."""
    offset = PREAMBLE_LENGTH + len(PART10_PREFIX)
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            if offset + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, offset + 8)
            value_at = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            value_at = offset + 8
        if length == UNDEFINED_LENGTH or value_at + length > len(data):
            break
        if element == 0x0010:
            uid = data[value_at : value_at + length].rstrip(b"\0 ").decode("ascii", "replace")
            return _supported_transfer_syntax(uid)
        offset = value_at + length
    raise InstanceRejected(
        FailureReason.CANNOT_UNDERSTAND,
        "the File Meta Information has no readable Transfer Syntax UID (0002,0010).",
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


def _check_inflated_size(data: bytes, *, limits: Limits) -> None:
    """Inflate in bounded steps so a deflate bomb costs bounded memory (PS3.5 §A.5)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    meta_end = _file_meta_end(data)
    budget = limits.max_inflated_bytes
    pending = data[meta_end:]
    total = 0
    try:
        while pending and total <= budget:
            chunk = inflater.decompress(pending, 1 << 20)
            total += len(chunk)
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, "the deflated data set is not valid deflate data."
        ) from exc
    if total > budget:
        raise InstanceRejected(
            FailureReason.OUT_OF_RESOURCES,
            f"the deflated data set inflates to more than {budget // (1 << 20)} MiB; refused.",
        )


def _file_meta_end(data: bytes) -> int:
    """Offset of the first byte after the File Meta Information group."""
    offset = PREAMBLE_LENGTH + len(PART10_PREFIX)
    # (0002,0000) UL group length is required (PS3.10 §7.1) and comes first.
    if data[offset : offset + 6] != b"\x02\x00\x00\x00UL":
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, "the File Meta Information Group Length (0002,0000) is missing."
        )
    (group_length,) = struct.unpack_from("<I", data, offset + 8)
    return offset + 12 + int(group_length)


def _parse(stored: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(stored), force=False)
    except RecursionError:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND, "sequences are nested too deeply to parse."
        ) from None
    except Exception as exc:  # untrusted input: any parser failure means "cannot understand"
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            f"the file could not be parsed as DICOM ({type(exc).__name__}); it may be truncated.",
        ) from exc


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
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value:
                _check_elements(item, depth=depth + 1, limits=limits)


def _check_complete(raw: RawDataElement) -> None:
    if raw.length == UNDEFINED_LENGTH or raw.value is None:
        return
    if len(raw.value) < raw.length:
        raise InstanceRejected(
            FailureReason.CANNOT_UNDERSTAND,
            f"element {BaseTag(raw.tag)} declares {raw.length} bytes but only {len(raw.value)} follow: "
            "the file is truncated or its lengths are corrupt.",
        )


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
