"""Generated studies: small, valid Part 10 instances with chosen UIDs and attributes."""

from __future__ import annotations

import io
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "2.25."


def new_uid() -> str:
    return generate_uid(prefix=None)


def make_dataset(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    rows: int = 4,
    columns: int = 4,
    **attributes: Any,
) -> Dataset:
    """A minimal image instance with tiny pixel data; keywords override attributes."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or new_uid()
    ds.StudyInstanceUID = study or new_uid()
    ds.SeriesInstanceUID = series or new_uid()
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC-1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256))[: rows * columns * 2].ljust(rows * columns * 2, b"\0")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def to_part10(ds: Dataset, *, preamble: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if preamble is not None:
        data = preamble.ljust(128, b"\0")[:128] + data[128:]
    return data


def make_instance(**kwargs: Any) -> bytes:
    return to_part10(make_dataset(**kwargs))


PHI_VALUES = (
    "Doe^Jane",
    "PID-12345",
    "ACC-998877",
    "St. Elsewhere",
    "221B Baker Street",
    "Smith^Referring",
    "Jones^Operator",
    "Secret^Perf",
)


def make_phi_rich(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    modality: str = "CT",
    referenced: str | None = None,
    **attributes: Any,
) -> Dataset:
    """An instance with PHI (PHI_VALUES) at the top level, in nested sequences, in a private
    tag and in an Original Attributes Sequence, plus a reference to another instance."""
    ds = make_dataset(
        study=study, series=series, sop=sop, modality=modality, PatientName="Doe^Jane", PatientID="PID-12345"
    )
    ds.AccessionNumber = "ACC-998877"
    ds.InstitutionName = "St. Elsewhere"
    ds.InstitutionAddress = "221B Baker Street"
    ds.ReferringPhysicianName = "Smith^Referring"
    ds.OperatorsName = "Jones^Operator"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20240115"
    ds.SeriesDate = "20240120"
    ds.StudyDescription = "Head CT for Doe^Jane"
    ds.add_new(0x00091010, "LO", "private PHI PID-12345")
    reference = Dataset()
    reference.ReferencedSOPClassUID = CTImageStorage
    reference.ReferencedSOPInstanceUID = referenced or new_uid()
    ds.ReferencedImageSequence = [reference]
    step = Dataset()
    step.PerformingPhysicianName = "Secret^Perf"
    step.RequestAttributesSequence = [Dataset()]
    step.RequestAttributesSequence[0].AccessionNumber = "ACC-998877"
    ds.ProcedureCodeSequence = [step]
    original = Dataset()
    original.PatientName = "Doe^Jane"
    ds.OriginalAttributesSequence = [original]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds
