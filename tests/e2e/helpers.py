"""Building STOW-RS requests and reading Store Instances Responses, independently of the server code."""

from __future__ import annotations

import io
import secrets
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from infra.upload.batches import MAX_REQUEST_BYTES

API_LIMIT_BYTES = MAX_REQUEST_BYTES  # raw bytes per STOW-RS request, as the uploader batches
TIMEOUT_S = 60

# Store Instances Response Module (PS3.18 Table 10.5.3-1) and its item attributes, as DICOM JSON keys.
RETRIEVE_URL = "00081190"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

# Failure reasons (PS3.4 Annex B.2.3, PS3.18 §10.5.3).
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC409


# ---------------------------------------------------------------- requests


def multipart_related(
    parts: Sequence[bytes], *, boundary: str | None = None, close: bool = True
) -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body and its Content-Type (RFC 2046 §5.1.1)."""
    boundary = boundary or f"e2e-{secrets.token_hex(12)}"
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), part, b"\r\n"]
    if close:
        chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def stow(
    base_url: str,
    parts: Sequence[bytes],
    *,
    token: str | None,
    study: str | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    """POST /studies[/{study}] with the parts as one multipart/related request."""
    body, content_type = multipart_related(parts)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{base_url}/studies" + (f"/{study}" if study else "")
    return (session or requests).post(url, data=body, headers=headers, timeout=TIMEOUT_S)


# ---------------------------------------------------------------- responses


@dataclass(frozen=True)
class Referenced:
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str


@dataclass(frozen=True)
class Failed:
    sop_instance_uid: str | None
    reason: int


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def referenced(payload: dict[str, Any]) -> list[Referenced]:
    """The ReferencedSOPSequence (0008,1199) items of a DICOM JSON Store Instances Response."""
    return [
        Referenced(
            _value(item, REFERENCED_SOP_CLASS_UID),
            _value(item, REFERENCED_SOP_INSTANCE_UID),
            _value(item, RETRIEVE_URL),
        )
        for item in payload.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    ]


def failed(payload: dict[str, Any], sequence: str = FAILED_SOP_SEQUENCE) -> list[Failed]:
    """The items of FailedSOPSequence (0008,1198) or OtherFailuresSequence (0008,119A)."""
    return [
        Failed(_value(item, REFERENCED_SOP_INSTANCE_UID), int(_value(item, FAILURE_REASON)))
        for item in payload.get(sequence, {}).get("Value", [])
    ]


def all_failures(payload: dict[str, Any]) -> list[Failed]:
    return failed(payload) + failed(payload, OTHER_FAILURES_SEQUENCE)


def instance_url(base_url: str, study: str, series: str, sop: str) -> str:
    return f"{base_url}/studies/{study}/series/{series}/instances/{sop}"


def instance_prefix(study: str, series: str, sop: str) -> str:
    """Where every write of an instance puts its objects (``{prefix}{write}.dcm`` and ``.json``)."""
    return f"studies/{study}/series/{series}/instances/{sop}/"


def zero_preamble(data: bytes) -> bytes:
    return bytes(128) + data[128:]


# ---------------------------------------------------------------- instances


@dataclass(frozen=True)
class Instance:
    """A synthetic Part 10 instance and its UIDs."""

    data: bytes
    study: str
    series: str
    sop: str
    sop_class: str = SecondaryCaptureImageStorage

    @property
    def prefix(self) -> str:
        return instance_prefix(self.study, self.series, self.sop)


def make_dataset(
    *, study: str | None = None, series: str | None = None, sop: str | None = None, pixels: int = 256
) -> Dataset:
    """A small Secondary Capture data set with fresh UIDs (or the given ones) and 8-bit pixels."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "E2E^Test"
    ds.PatientID = "E2E"
    ds.StudyDate = "20240101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 1
    ds.Columns = pixels
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = secrets.token_bytes(pixels)
    return ds


def encode(
    ds: Dataset, *, transfer_syntax: str = ExplicitVRLittleEndian, preamble: bytes | None = None
) -> bytes:
    """Write ``ds`` as a Part 10 file with complete File Meta Information."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = preamble or bytes(128)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def make_instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    pixels: int = 256,
    change: Callable[[Dataset], None] | None = None,
    preamble: bytes | None = None,
) -> Instance:
    ds = make_dataset(study=study, series=series, sop=sop, pixels=pixels)
    if change is not None:
        change(ds)
    data = encode(ds, preamble=preamble)
    return Instance(data, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def deflate_bomb(inflated_mib: int) -> Instance:
    """Deflated Explicit VR Little Endian whose data set inflates to ``inflated_mib`` MiB (PS3.5 §A.5).

    The File Meta Information is valid and names a fresh SOP Instance; the deflated data set is
    zeros, so a few hundred KiB expand past any sane bound.
    """
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    header = encode(ds, transfer_syntax=DeflatedExplicitVRLittleEndian)
    meta_end = 128 + 4 + 12 + int.from_bytes(header[140:144], "little")
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    deflated = b"".join(compressor.compress(zeros) for _ in range(inflated_mib)) + compressor.flush()
    return Instance(header[:meta_end] + deflated, study, series, sop)


def nested_sequences(depth: int) -> Callable[[Dataset], None]:
    """A change that adds a sequence nested ``depth`` levels deep."""

    def change(ds: Dataset) -> None:
        innermost = Dataset()
        innermost.CodeValue = "E2E"
        for _ in range(depth):
            item = Dataset()
            item.ContentSequence = [innermost]
            innermost = item
        ds.ContentSequence = innermost.ContentSequence

    return change
