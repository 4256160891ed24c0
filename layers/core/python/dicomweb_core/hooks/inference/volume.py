"""A series of single-frame images as a volume: slice order, voxel spacing, modality values.

Models that work in 3D use these helpers to put the images of a series in order along the
slice normal, to check that they form one regular volume and to read its voxel spacing
(Image Plane Module, PS3.3 C.7.6.2), and to read pixel values through the Modality LUT
(PS3.3 C.11.1), so that every backend sees the same volume the same way. A series that is
not one regular volume raises :class:`InconsistentGeometry`; a model then declines it
rather than producing a result on misplaced slices.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 1e-3  # mm: pixel spacings that differ by less are the same
_MIN_SLICE_GAP = 1e-3  # mm: slices closer than this share a position
_IRREGULAR_SPACING = 0.1  # a gap more than 10 % off the median means missing or extra slices


class VoxelSpacing(NamedTuple):
    """Voxel spacing in mm: between rows, between columns (PixelSpacing order) and slices."""

    row: float
    column: float
    slice: float

    @property
    def volume_mm3(self) -> float:
        return self.row * self.column * self.slice


class InconsistentGeometry(ValueError):
    """The images do not form one regular volume."""


def sort_by_position(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The datasets in slice order (see :func:`slice_order`)."""
    return [datasets[i] for i in slice_order(datasets)]


def slice_order(datasets: Sequence[Dataset]) -> list[int]:
    """Indices that sort ``datasets`` along the slice normal.

    When every image has an Image Position (Patient) and they share one Image Orientation
    (Patient) (PS3.3 C.7.6.2.1.1), each position is projected on the normal (row direction x
    column direction) and sorted ascending; otherwise the order is Instance Number. Ties are
    broken by Instance Number, then SOP Instance UID, so the order does not depend on the input's.
    """
    normal = _common_normal(datasets)
    positions = [_floats(ds, "ImagePositionPatient", 3) for ds in datasets]
    if normal is not None and all(p is not None for p in positions):
        distances = [float(np.dot(p, normal)) for p in positions if p is not None]
    else:
        distances = [0.0] * len(datasets)
    return sorted(
        range(len(datasets)),
        key=lambda i: (
            distances[i],
            _instance_number(datasets[i]),
            str(datasets[i].get("SOPInstanceUID", "")),
            i,
        ),
    )


def volume_geometry(datasets: Sequence[Dataset]) -> VoxelSpacing | None:
    """The voxel spacing of the volume the datasets form, or ``None`` (see :func:`check_volume_geometry`)."""
    try:
        return check_volume_geometry(datasets)
    except InconsistentGeometry:
        return None


def regular_volume(model_name: str, datasets: Sequence[Dataset]) -> tuple[VoxelSpacing, list[int]] | None:
    """The voxel spacing and slice order of images that form one volume; None (and the
    reason logged) when they do not, so the model declines the series."""
    try:
        spacing = check_volume_geometry(datasets)
    except InconsistentGeometry as exc:
        logging.getLogger(__name__).info("%s declines: %s", model_name, exc)
        return None
    return spacing, slice_order(datasets)


def check_volume_geometry(datasets: Sequence[Dataset]) -> VoxelSpacing:
    """The voxel spacing (row, column, slice) in mm of single-frame images forming one volume.

    Requires at least one image; every image single-frame, one sample per pixel, with the same
    Rows, Columns, Pixel Spacing and Image Orientation (Patient). The slice spacing is the median
    distance between consecutive Image Positions (Patient) projected on the slice normal; it
    must be regular (every gap within 10 % of the median, no two slices at one position).
    Without positions (or with one image) it is Slice Thickness. Raises
    :class:`InconsistentGeometry` otherwise.
    """
    if not datasets:
        raise InconsistentGeometry("there are no images")
    for ds in datasets:
        if is_multiframe(ds):
            raise InconsistentGeometry("a multi-frame image is not a slice of a volume")
    sizes = {(ds.get("Rows"), ds.get("Columns")) for ds in datasets}
    if len(sizes) != 1:
        raise InconsistentGeometry("the images have different Rows or Columns")
    rows, columns = sizes.pop()
    if not (isinstance(rows, int) and isinstance(columns, int) and rows > 0 and columns > 0):
        raise InconsistentGeometry("the images have no valid Rows and Columns")
    if any(ds.get("SamplesPerPixel", 1) != 1 for ds in datasets):
        raise InconsistentGeometry("colour images are not slices of a grey-level volume")
    spacings = [_floats(ds, "PixelSpacing", 2) for ds in datasets]
    first = spacings[0]
    if first is None or any(s is None for s in spacings) or min(first) <= 0:
        raise InconsistentGeometry("an image has no valid Pixel Spacing")
    if any(s is not None and not np.allclose(s, first, atol=_SPACING_TOLERANCE, rtol=0) for s in spacings):
        raise InconsistentGeometry("the images have different Pixel Spacing")
    orientations = [_floats(ds, "ImageOrientationPatient", 6) for ds in datasets]
    if any(o is not None for o in orientations) and _common_normal(datasets) is None:
        raise InconsistentGeometry("the images have different or invalid Image Orientation (Patient)")
    return VoxelSpacing(float(first[0]), float(first[1]), _slice_spacing(datasets))


def _slice_spacing(datasets: Sequence[Dataset]) -> float:
    normal = _common_normal(datasets)
    positions = [_floats(ds, "ImagePositionPatient", 3) for ds in datasets]
    if len(datasets) > 1 and normal is not None and all(p is not None for p in positions):
        distances = sorted(float(np.dot(p, normal)) for p in positions if p is not None)
        gaps = [b - a for a, b in itertools.pairwise(distances)]
        if min(gaps) < _MIN_SLICE_GAP:
            raise InconsistentGeometry("two images are at the same position")
        median = statistics.median(gaps)
        if any(abs(gap - median) > _IRREGULAR_SPACING * median for gap in gaps):
            raise InconsistentGeometry("the slice spacing is irregular (missing or extra slices)")
        return median
    thickness = _floats(datasets[0], "SliceThickness", 1)
    if thickness is None or thickness[0] <= 0:
        raise InconsistentGeometry("the slice spacing is unknown: no positions and no Slice Thickness")
    return float(thickness[0])


def _common_normal(datasets: Sequence[Dataset]) -> npt.NDArray[np.float64] | None:
    """The unit slice normal shared by all images, or None if any lacks or differs in orientation."""
    orientations = [_floats(ds, "ImageOrientationPatient", 6) for ds in datasets]
    first = orientations[0] if orientations else None
    if first is None:
        return None
    for orientation in orientations:
        if orientation is None or not np.allclose(orientation, first, atol=_ORIENTATION_TOLERANCE, rtol=0):
            return None
    normal = np.cross(first[:3], first[3:])
    length = float(np.linalg.norm(normal))
    if not math.isfinite(length) or length < 0.5:  # row and column directions must not be parallel
        return None
    return normal / length


def _floats(ds: Dataset, keyword: str, count: int) -> npt.NDArray[np.float64] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if count > 1 and not isinstance(value, str | bytes) else [value]
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.shape != (count,) or not np.isfinite(array).all():
        return None
    return array


def _instance_number(ds: Dataset) -> float:
    try:
        return float(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return math.inf


def modality_values(ds: Dataset) -> npt.NDArray[np.float32]:
    """One image's stored values through the Modality LUT's rescale (PS3.3 C.11.1): HU for CT."""
    slope = _floats(ds, "RescaleSlope", 1)
    intercept = _floats(ds, "RescaleIntercept", 1)
    pixels = np.array(ds.pixel_array, dtype=np.float32)  # a copy: pydicom caches pixel_array
    if slope is not None:
        pixels *= np.float32(slope[0])
    if intercept is not None:
        pixels += np.float32(intercept[0])
    return pixels


def is_multiframe(ds: Dataset) -> bool:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1) > 1
    except (TypeError, ValueError):
        return True
