"""The model plugin contract: what a model sees, what it must return, and the check of what it did.

A :class:`Model` decides from a :class:`SeriesDescriptor` (built from a SeriesStable event)
whether it wants a series, then receives the series' datasets and returns a
:class:`ModelResult` or ``None`` to decline. Whatever a model returns is untrusted:
:func:`validate_result` checks it against its input and the DICOM value representations it
will be written in, before :mod:`dicomweb_core.hooks.inference.results` turns it into a
Segmentation (PS3.3 C.8.20) and a TID 1500 Measurement Report (PS3.16); the result objects
then go through the normal STOW-RS ingest path, which validates them again.

This module is the bottom of the inference package: backends (:mod:`.reference`,
:mod:`.sagemaker`), the result builders and the pipeline import it, and it imports none of
them. Which models run is decided in :mod:`.loading`; the volume helpers models use are in
:mod:`.volume`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

MAX_LABEL_LENGTH = 64  # Segment Label (0062,0005) is LO: at most 64 characters
MAX_CODE_VALUE_LENGTH = 64  # Long Code Value (0008,0119) when longer than SH (16)
MAX_CODING_SCHEME_LENGTH = 16  # Coding Scheme Designator (0008,0102) is SH
MAX_CODE_MEANING_LENGTH = 64  # Code Meaning (0008,0104) is LO
MAX_MEASUREMENTS = 100

# Printable ASCII without the backslash (the DICOM value delimiter, PS3.5 §6.2).
_TEXT_RE = re.compile(r"[ -\[\]-~]+")


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
