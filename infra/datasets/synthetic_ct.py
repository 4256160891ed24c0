"""A synthetic CT series with a known answer, for the inference tests.

Twenty 64x64 axial slices (Pixel Spacing 2 mm, slice spacing 2.5 mm, Rescale Intercept
-1024) of air at -1000 HU with noise; an elliptic cylinder of water (0 HU) on slices 2-17 -
the "body" - holding an air "lung" on slices 5-12; and a +200 HU "table" bar below it that
never touches the body. The slices are returned shuffled.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.8.498.77"
STUDY_UID = f"{ROOT}.1"
SERIES_UID = f"{ROOT}.2"
FRAME_OF_REFERENCE_UID = f"{ROOT}.3"

SLICES = 20
ROWS = COLUMNS = 64
PIXEL_SPACING = 2.0  # mm
SLICE_SPACING = 2.5  # mm
INTERCEPT = -1024.0

BODY_SLICES = range(2, 18)
BODY_CENTRE = (30.0, 32.0)  # row, column
BODY_SEMI_AXES = (18.0, 24.0)  # rows, columns (pixels)
LUNG_SLICES = range(5, 13)
LUNG_CENTRE = (28.0, 24.0)
LUNG_SEMI_AXES = (6.0, 5.0)
TABLE_ROWS = slice(56, 59)
TABLE_COLUMNS = slice(6, 58)


def _ellipse(centre: tuple[float, float], axes: tuple[float, float]) -> npt.NDArray[np.bool_]:
    rows, columns = np.mgrid[0:ROWS, 0:COLUMNS]
    inside: npt.NDArray[np.bool_] = ((rows - centre[0]) / axes[0]) ** 2 + (
        (columns - centre[1]) / axes[1]
    ) ** 2 <= 1.0
    return inside


def expected_body() -> npt.NDArray[np.bool_]:
    """The body mask in slice (spatial) order: the cylinder, lung included, table excluded."""
    body = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.bool_)
    body[list(BODY_SLICES)] = _ellipse(BODY_CENTRE, BODY_SEMI_AXES)
    return body


def analytic_body_volume_ml() -> float:
    area = math.pi * BODY_SEMI_AXES[0] * PIXEL_SPACING * BODY_SEMI_AXES[1] * PIXEL_SPACING
    return area * len(BODY_SLICES) * SLICE_SPACING / 1000.0


def hu_volume(seed: int = 7) -> npt.NDArray[np.float64]:
    """The phantom in HU, in slice order."""
    rng = np.random.default_rng(seed)
    volume = -1000.0 + rng.normal(0.0, 20.0, size=(SLICES, ROWS, COLUMNS))
    body = _ellipse(BODY_CENTRE, BODY_SEMI_AXES)
    lung = _ellipse(LUNG_CENTRE, LUNG_SEMI_AXES)
    for index in BODY_SLICES:
        volume[index][body] = rng.normal(0.0, 20.0, size=int(body.sum()))
    for index in LUNG_SLICES:
        volume[index][lung] = -1000.0 + rng.normal(0.0, 20.0, size=int(lung.sum()))
    volume[:, TABLE_ROWS, TABLE_COLUMNS] = 200.0
    return np.clip(volume, -1024.0, 3000.0)


def ct_slice(index: int, hu: npt.NDArray[np.float64], *, series_uid: str = SERIES_UID) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{series_uid}.{index + 1}")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = f"{series_uid}.{index + 1}"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    ds.PatientName = "Phantom^Body"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.Manufacturer = "Synthetic"
    ds.SeriesNumber = 3
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-63.0, -63.0, -20.0 + index * SLICE_SPACING]
    ds.SliceThickness = SLICE_SPACING
    ds.PixelSpacing = [PIXEL_SPACING, PIXEL_SPACING]
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.PixelData = np.round(hu[index] - INTERCEPT).astype(np.uint16).tobytes()
    return ds


def ct_series(*, seed: int = 7, shuffle: bool = True, series_uid: str = SERIES_UID) -> list[Dataset]:
    hu = hu_volume(seed)
    datasets = [ct_slice(index, hu, series_uid=series_uid) for index in range(SLICES)]
    if shuffle:
        random.Random(seed).shuffle(datasets)  # noqa: S311 (a reproducible order, not a secret)
    return datasets


def spatial_index(ds: Dataset) -> int:
    """The slice's index in the phantom (its InstanceNumber - 1)."""
    return int(ds.InstanceNumber) - 1


def in_input_order(volume: npt.NDArray[np.bool_], datasets: Sequence[Dataset]) -> npt.NDArray[np.bool_]:
    """A slice-ordered volume rearranged to follow ``datasets``."""
    return np.stack([volume[spatial_index(ds)] for ds in datasets])
