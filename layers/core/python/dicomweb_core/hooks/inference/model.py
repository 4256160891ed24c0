"""The model plugin interface: what a model sees, what it returns, and how models are configured.

A :class:`Model` decides from a :class:`SeriesDescriptor` (built from a SeriesStable event)
whether it wants a series, then receives the series' datasets and returns a
:class:`ModelResult` or ``None`` to decline. Whatever a model returns is untrusted:
:func:`validate_result` checks it before :mod:`dicomweb_core.hooks.inference.results` turns it into
a Segmentation (PS3.3 C.8.20) and a TID 1500 Measurement Report (PS3.16), and the result
objects then go through the normal STOW-RS ingest path, which validates them again.

:func:`load_models` reads the ``INFERENCE_MODELS``-style specification: a comma-separated list
of registered names (``ct-body-mask``, ``sagemaker``) or ``package.module:attribute`` for a
user plugin. :func:`sort_by_position` and :func:`volume_geometry` are the helpers models use to
treat a series of single-frame images as a volume (PS3.3 C.7.6.2, Image Plane Module).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import numbers
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

MAX_LABEL_LENGTH = 64  # Segment Label (0062,0005) is LO: at most 64 characters
MAX_CODE_VALUE_LENGTH = 64  # Long Code Value (0008,0119) when longer than SH (16)
MAX_CODING_SCHEME_LENGTH = 16  # Coding Scheme Designator (0008,0102) is SH
MAX_CODE_MEANING_LENGTH = 64  # Code Meaning (0008,0104) is LO
MAX_MEASUREMENTS = 100

# Printable ASCII without the backslash (the DICOM value delimiter, PS3.5 §6.2).
_TEXT_RE = re.compile(r"[ -\[\]-~]+")
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 1e-3  # mm: pixel spacings that differ by less are the same
_MIN_SLICE_GAP = 1e-3  # mm: slices closer than this share a position
_IRREGULAR_SPACING = 0.1  # a gap more than 10 % off the median means missing or extra slices


@dataclass(frozen=True)
class SeriesDescriptor:
    """What routing sees of a stable series (from the SeriesStable event detail)."""

    study_uid: str
    series_uid: str
    modality: str
    sop_class_uid: str
    body_part: str | None
    instance_count: int


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 Table 8.8-1): code value, coding scheme designator, code meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Measurement:
    """One numeric measurement (PS3.16 TID 300): concept name, value and UCUM unit.

    ``derivation`` optionally qualifies the name, e.g. SCT 373098007 "Mean" for a mean
    attenuation (PS3.16 CID 7464).
    """

    name: Code
    value: float
    unit: Code
    derivation: Code | None = None


@dataclass(frozen=True, eq=False)
class ModelResult:
    """What a model found in one series (compared by identity: it holds an array).

    ``mask`` is a boolean array of shape (number of images, Rows, Columns) whose first axis
    follows the order of the datasets the model was given, or ``None`` when the model only
    measures. The segment codes follow PS3.16 CID 7150 (category) and CID 7151 (type).
    """

    mask: npt.NDArray[np.bool_] | None
    segment_label: str
    segmented_category: Code
    segmented_type: Code
    measurements: tuple[Measurement, ...] = ()


@runtime_checkable
class Model(Protocol):
    """A model plugin. ``name`` and ``version`` identify the algorithm in the results (PS3.3
    §10.16 Algorithm Identification Macro; PS3.16 TID 4019) and in their UIDs, so a changed
    model must change ``version``. Both should fit a LO value (64 characters).
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def accepts(self, series: SeriesDescriptor) -> bool:
        """Whether this model wants the series (cheap: no pixel data is loaded yet)."""
        ...

    def run(self, datasets: Sequence[Dataset]) -> ModelResult | None:
        """Infer on the series' datasets (any order); ``None`` declines the input (not an error)."""
        ...


class ModelOutputError(ValueError):
    """A model returned something that is not a valid :class:`ModelResult` for its input."""


# --- validation ----------------------------------------------------------------------------------


def validate_result(result: object, datasets: Sequence[Dataset]) -> ModelResult:
    """Check an untrusted model output against its input and return it normalised.

    The mask becomes a C-contiguous ``bool`` array (0/1 integer masks are accepted and
    converted) of exactly (len(datasets), Rows, Columns); measurement values become finite
    Python floats; codes and the label must be short printable ASCII strings that fit their
    DICOM VRs. Raises :class:`ModelOutputError` naming the first problem found.
    """
    if not isinstance(result, ModelResult):
        raise ModelOutputError(f"the model returned {type(result).__name__}, not a ModelResult")
    label = _check_text(result.segment_label, "segment_label", MAX_LABEL_LENGTH)
    category = _check_code(result.segmented_category, "segmented_category")
    segmented_type = _check_code(result.segmented_type, "segmented_type")
    mask = None if result.mask is None else _check_mask(result.mask, datasets)
    measurements = _check_measurements(result.measurements)
    return replace(
        result,
        mask=mask,
        segment_label=label,
        segmented_category=category,
        segmented_type=segmented_type,
        measurements=measurements,
    )


def _check_text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise ModelOutputError(f"{what} must be a str, not {type(value).__name__}")
    if not value or value != value.strip():
        raise ModelOutputError(f"{what} must be non-empty, without leading or trailing spaces")
    if len(value) > max_length:
        raise ModelOutputError(f"{what} is {len(value)} characters long; at most {max_length} are allowed")
    if _TEXT_RE.fullmatch(value) is None:
        raise ModelOutputError(f"{what} must be printable ASCII without backslashes")
    return value


def _check_code(code: object, what: str) -> Code:
    if not isinstance(code, Code):
        raise ModelOutputError(f"{what} must be a Code, not {type(code).__name__}")
    return Code(
        value=_check_text(code.value, f"{what}.value", MAX_CODE_VALUE_LENGTH),
        scheme=_check_text(code.scheme, f"{what}.scheme", MAX_CODING_SCHEME_LENGTH),
        meaning=_check_text(code.meaning, f"{what}.meaning", MAX_CODE_MEANING_LENGTH),
    )


def _check_mask(mask: object, datasets: Sequence[Dataset]) -> npt.NDArray[np.bool_]:
    if not isinstance(mask, np.ndarray):
        raise ModelOutputError(f"mask must be a numpy array or None, not {type(mask).__name__}")
    sizes = {(_int_attribute(ds, "Rows"), _int_attribute(ds, "Columns")) for ds in datasets}
    if len(sizes) != 1:
        raise ModelOutputError("a mask needs source images that all have the same Rows and Columns")
    rows, columns = sizes.pop()
    expected = (len(datasets), rows, columns)
    if mask.shape != expected:
        raise ModelOutputError(
            f"mask has shape {mask.shape}; the input needs {expected} (images, rows, columns)"
        )
    if mask.dtype == np.bool_:
        return np.ascontiguousarray(mask)
    if mask.dtype.kind in "iu":
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ModelOutputError("an integer mask may only hold 0 and 1")
        return np.ascontiguousarray(mask.astype(np.bool_))
    raise ModelOutputError(f"mask has dtype {mask.dtype}; it must be bool (or integer 0/1)")


def _int_attribute(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    if not isinstance(value, int) or value <= 0:
        raise ModelOutputError(f"a source image has no valid {keyword}")
    return value


def _check_measurements(measurements: object) -> tuple[Measurement, ...]:
    if not isinstance(measurements, tuple | list):
        raise ModelOutputError(f"measurements must be a tuple, not {type(measurements).__name__}")
    if len(measurements) > MAX_MEASUREMENTS:
        raise ModelOutputError(f"{len(measurements)} measurements; at most {MAX_MEASUREMENTS} are allowed")
    checked: list[Measurement] = []
    for index, item in enumerate(measurements):
        what = f"measurements[{index}]"
        if not isinstance(item, Measurement):
            raise ModelOutputError(f"{what} must be a Measurement, not {type(item).__name__}")
        value = item.value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ModelOutputError(f"{what}.value must be a number, not {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise ModelOutputError(f"{what}.value is not finite ({number})")
        checked.append(
            Measurement(
                name=_check_code(item.name, f"{what}.name"),
                value=number,
                unit=_check_code(item.unit, f"{what}.unit"),
                derivation=None
                if item.derivation is None
                else _check_code(item.derivation, f"{what}.derivation"),
            )
        )
    return tuple(checked)


# --- configuration -------------------------------------------------------------------------------

REFERENCE_MODEL = "ct-body-mask"
SAGEMAKER_MODEL = "sagemaker"
KNOWN_MODELS = (REFERENCE_MODEL, SAGEMAKER_MODEL)


def load_models(spec: str, environ: Mapping[str, str]) -> list[Model]:
    """The models named in ``spec``, a comma-separated list; empty or ``none`` means no models.

    ``ct-body-mask`` is the reference model (:mod:`.reference`); ``sagemaker`` is a
    SageMaker real-time endpoint configured from ``environ`` (``SAGEMAKER_ENDPOINT_NAME``
    required; ``SAGEMAKER_MODALITIES``, default ``CT``; ``SAGEMAKER_MODEL_VERSION``, default
    ``1``; ``SAGEMAKER_MAX_PAYLOAD_BYTES``); ``package.module:attribute`` imports a user plugin,
    a class or factory called with no arguments. Raises ``ValueError`` for an unknown name, a
    plugin that cannot be loaded or is not a :class:`Model`, or two models with the same name.
    """
    models: list[Model] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name or name.lower() == "none":
            continue
        if name == REFERENCE_MODEL:
            from dicomweb_core.hooks.inference.reference import CtBodyMaskModel  # noqa: PLC0415

            model: Model = CtBodyMaskModel()
        elif name == SAGEMAKER_MODEL:
            from dicomweb_core.hooks.inference.sagemaker import SageMakerModel  # noqa: PLC0415

            model = SageMakerModel.from_environ(environ)
        elif ":" in name:
            model = _load_plugin(name)
        else:
            known = ", ".join(KNOWN_MODELS)
            raise ValueError(
                f"unknown inference model {name!r}; known models: {known}, "
                "or 'package.module:attribute' for a plugin"
            )
        if any(existing.name == model.name for existing in models):
            raise ValueError(f"the inference model {model.name!r} is configured twice")
        models.append(model)
    return models


def _load_plugin(reference: str) -> Model:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"plugin {reference!r} must be written 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"plugin module {module_name!r} cannot be imported: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"plugin {reference!r}: {module_name} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"plugin {reference!r} is not a class or factory")
    model = target()
    if not isinstance(model, Model):
        raise ValueError(f"plugin {reference!r} did not produce a Model (name, version, accepts, run)")
    for field_name in ("name", "version"):
        value = getattr(model, field_name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_CODE_MEANING_LENGTH:
            raise ValueError(
                f"plugin {reference!r}: {field_name} must be a non-empty str of at most 64 chars"
            )
    return model


# --- volume helpers ------------------------------------------------------------------------------


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
