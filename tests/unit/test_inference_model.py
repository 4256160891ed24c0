"""The model plugin interface, the volume helpers and the reference CT body mask model.

The reference model is checked against a synthetic phantom with a known answer
(infra/datasets/synthetic_ct.py): an elliptic water cylinder holding an air "lung", next to a
+200 HU "table" that never touches it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pytest
from pydicom import Dataset

from dicomweb_core.hooks.inference import loading
from dicomweb_core.hooks.inference.loading import load_models
from dicomweb_core.hooks.inference.model import (
    Code,
    Measurement,
    Model,
    ModelOutputError,
    ModelResult,
    SeriesDescriptor,
    validate_result,
)
from dicomweb_core.hooks.inference.reference import (
    ATTENUATION,
    BODY_CATEGORY,
    BODY_TYPE,
    MILLILITER,
    SLICES_WITH_BODY,
    VOLUME,
    CtBodyMaskModel,
)
from dicomweb_core.hooks.inference.sagemaker import SageMakerModel
from dicomweb_core.hooks.inference.volume import (
    InconsistentGeometry,
    check_volume_geometry,
    slice_order,
    sort_by_position,
    volume_geometry,
)
from infra.datasets import synthetic_ct as phantom

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CATEGORY = Code("91723000", "SCT", "Anatomical Structure")
TYPE = Code("38266002", "SCT", "Entire body")


# --- a user plugin, loaded by load_models("tests.unit.test_inference_model:TinyModel") -----------


class TinyModel:
    """A plugin: marks the first pixel of every image."""

    name = "tiny"
    version = "0.1"

    def accepts(self, series: SeriesDescriptor) -> bool:
        return series.modality == "OT"

    def run(self, datasets: Sequence[Dataset]) -> ModelResult | None:
        mask = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.bool_)
        mask[:, 0, 0] = True
        return ModelResult(mask, "Corner", CATEGORY, TYPE)


def tiny_factory() -> TinyModel:
    return TinyModel()


NOT_A_MODEL = object


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return phantom.ct_series()


@pytest.fixture(scope="module")
def body_result(series: list[Dataset]) -> ModelResult:
    result = CtBodyMaskModel().run(series)
    assert result is not None
    return result


def descriptor(modality: str = "CT", sop_class: str = phantom.CT_IMAGE_STORAGE) -> SeriesDescriptor:
    return SeriesDescriptor(
        study_uid=phantom.STUDY_UID,
        series_uid=phantom.SERIES_UID,
        modality=modality,
        sop_class_uid=sop_class,
        body_part="CHEST",
        instance_count=phantom.SLICES,
    )


def measurement(result: ModelResult, name: Code) -> float:
    (value,) = [m.value for m in result.measurements if m.name == name]
    return value


# --- the reference model --------------------------------------------------------------------------


def test_body_mask_is_the_cylinder_with_its_lung_and_without_the_table(
    series: list[Dataset], body_result: ModelResult
) -> None:
    expected = phantom.in_input_order(phantom.expected_body(), series)
    assert body_result.mask is not None
    assert body_result.mask.dtype == np.bool_
    assert body_result.mask.shape == (phantom.SLICES, phantom.ROWS, phantom.COLUMNS)
    mismatched = int(np.count_nonzero(body_result.mask != expected))
    assert mismatched <= expected.size * 1e-4
    by_position = {
        phantom.spatial_index(ds): plane for ds, plane in zip(series, body_result.mask, strict=True)
    }
    lung = (phantom.LUNG_CENTRE[0], phantom.LUNG_CENTRE[1])
    assert by_position[8][int(lung[0]), int(lung[1])]  # the air inside the body is filled
    assert not by_position[8][phantom.TABLE_ROWS, phantom.TABLE_COLUMNS].any()  # no table
    assert not by_position[0].any()  # above the body


def test_body_measurements(body_result: ModelResult) -> None:
    volume = measurement(body_result, VOLUME)
    assert volume == pytest.approx(phantom.analytic_body_volume_ml(), rel=0.02)
    voxels = int(phantom.expected_body().sum())
    assert volume == pytest.approx(voxels * 2.0 * 2.0 * 2.5 / 1000.0)
    hu = phantom.hu_volume()
    assert measurement(body_result, ATTENUATION) == pytest.approx(
        float(hu[phantom.expected_body()].mean()), abs=0.5
    )
    assert measurement(body_result, SLICES_WITH_BODY) == len(phantom.BODY_SLICES)
    (volume_item,) = [m for m in body_result.measurements if m.name == VOLUME]
    assert volume_item.unit == MILLILITER
    assert (body_result.segment_label, body_result.segmented_category, body_result.segmented_type) == (
        "Body",
        BODY_CATEGORY,
        BODY_TYPE,
    )
    checked = validate_result(body_result, phantom.ct_series())
    assert checked.mask is not None and body_result.mask is not None
    assert np.array_equal(checked.mask, body_result.mask)
    assert checked.measurements == body_result.measurements


def test_body_mask_follows_the_input_order(series: list[Dataset], body_result: ModelResult) -> None:
    reordered = list(reversed(series))
    result = CtBodyMaskModel().run(reordered)
    assert result is not None and result.mask is not None and body_result.mask is not None
    assert np.array_equal(result.mask, body_result.mask[::-1])
    assert result.measurements == body_result.measurements


def test_slice_thickness_is_the_fallback_without_positions(body_result: ModelResult) -> None:
    datasets = phantom.ct_series()
    for ds in datasets:
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
    result = CtBodyMaskModel().run(datasets)
    assert result is not None
    assert measurement(result, VOLUME) == pytest.approx(measurement(body_result, VOLUME))


def test_accepts_only_ct_image_storage() -> None:
    model = CtBodyMaskModel()
    assert (model.name, model.version) == ("ct-body-mask", "1.0.0")
    assert isinstance(model, Model)
    assert model.accepts(descriptor())
    assert model.accepts(descriptor(modality="ct"))
    assert not model.accepts(descriptor(modality="MR", sop_class=MR_IMAGE_STORAGE))
    assert not model.accepts(descriptor(sop_class=ENHANCED_CT))


def _mutated(change: str) -> list[Dataset]:
    datasets = [copy.deepcopy(ds) for ds in phantom.ct_series()]
    target = datasets[3]
    if change == "mr":
        for ds in datasets:
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.Modality = "MR"
    elif change == "multiframe":
        target.NumberOfFrames = 2
    elif change == "pixel spacing":
        target.PixelSpacing = [1.0, 1.0]
    elif change == "no pixel spacing":
        del target.PixelSpacing
    elif change == "orientation":
        target.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    elif change == "duplicate position":
        target.ImagePositionPatient = datasets[4].ImagePositionPatient
    elif change == "missing slice":
        datasets = sort_by_position(datasets)
        del datasets[10]
    elif change == "size":
        target.Rows = 32
    elif change == "colour":
        for ds in datasets:
            ds.SamplesPerPixel = 3
    return datasets


@pytest.mark.parametrize(
    "change",
    [
        "mr",
        "multiframe",
        "pixel spacing",
        "no pixel spacing",
        "orientation",
        "duplicate position",
        "missing slice",
        "size",
        "colour",
    ],
)
def test_declines_what_is_not_one_ct_volume(change: str) -> None:
    assert CtBodyMaskModel().run(_mutated(change)) is None


def test_declines_empty_input_and_pure_air() -> None:
    assert CtBodyMaskModel().run([]) is None
    air = np.full((phantom.SLICES, phantom.ROWS, phantom.COLUMNS), -1000.0)
    assert CtBodyMaskModel().run([phantom.ct_slice(i, air) for i in range(3)]) is None


def test_single_slice_uses_slice_thickness() -> None:
    (one,) = [ds for ds in phantom.ct_series() if phantom.spatial_index(ds) == 8]
    result = CtBodyMaskModel().run([one])
    assert result is not None and result.mask is not None
    assert measurement(result, VOLUME) == pytest.approx(int(result.mask.sum()) * 10.0 / 1000.0)
    assert measurement(result, SLICES_WITH_BODY) == 1


# --- volume helpers -------------------------------------------------------------------------------


def test_sort_by_position_uses_the_slice_normal(series: list[Dataset]) -> None:
    ordered = sort_by_position(series)
    assert [phantom.spatial_index(ds) for ds in ordered] == list(range(phantom.SLICES))
    # A normal pointing the other way sorts the other way (feet-first is not assumed).
    flipped = [copy.deepcopy(ds) for ds in series]
    for ds in flipped:
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    assert [phantom.spatial_index(ds) for ds in sort_by_position(flipped)] == list(
        reversed(range(phantom.SLICES))
    )


def test_sort_falls_back_to_instance_number(series: list[Dataset]) -> None:
    stripped = [copy.deepcopy(ds) for ds in series]
    for ds in stripped:
        del ds.ImagePositionPatient
    assert [int(ds.InstanceNumber) for ds in sort_by_position(stripped)] == list(range(1, phantom.SLICES + 1))
    assert sorted(slice_order(stripped)) == list(range(phantom.SLICES))


def test_volume_geometry(series: list[Dataset]) -> None:
    spacing = volume_geometry(series)
    assert spacing == (2.0, 2.0, 2.5)
    assert spacing is not None and spacing.volume_mm3 == pytest.approx(10.0)
    assert volume_geometry([]) is None
    assert volume_geometry(_mutated("pixel spacing")) is None
    with pytest.raises(InconsistentGeometry, match="irregular"):
        check_volume_geometry(_mutated("missing slice"))
    with pytest.raises(InconsistentGeometry, match="same position"):
        check_volume_geometry(_mutated("duplicate position"))


# --- validate_result ------------------------------------------------------------------------------


def _result(**changes: object) -> ModelResult:
    fields: dict[str, object] = {
        "mask": np.zeros((phantom.SLICES, phantom.ROWS, phantom.COLUMNS), dtype=np.bool_),
        "segment_label": "Body",
        "segmented_category": CATEGORY,
        "segmented_type": TYPE,
        "measurements": (Measurement(VOLUME, 1.5, MILLILITER),),
    }
    fields.update(changes)
    return ModelResult(**fields)  # type: ignore[arg-type]


def test_validate_result_accepts_and_normalises(series: list[Dataset]) -> None:
    assert validate_result(_result(), series).mask is not None
    integer = np.zeros((phantom.SLICES, phantom.ROWS, phantom.COLUMNS), dtype=np.uint8)
    integer[0, 0, 0] = 1
    checked = validate_result(
        _result(mask=integer, measurements=[Measurement(VOLUME, 2, MILLILITER)]), series
    )
    assert checked.mask is not None and checked.mask.dtype == np.bool_ and checked.mask[0, 0, 0]
    assert checked.measurements == (Measurement(VOLUME, 2.0, MILLILITER),)
    assert isinstance(checked.measurements[0].value, float)
    assert validate_result(_result(mask=None), series).mask is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mask": np.zeros((phantom.SLICES, 64, 63), dtype=np.bool_)}, "shape"),
        ({"mask": np.zeros((phantom.SLICES - 1, 64, 64), dtype=np.bool_)}, "shape"),
        ({"mask": np.zeros((phantom.SLICES, 64, 64), dtype=np.float32)}, "dtype"),
        ({"mask": np.full((phantom.SLICES, 64, 64), 2, dtype=np.int64)}, "0 and 1"),
        ({"mask": [[[True]]]}, "numpy array"),
        ({"measurements": (Measurement(VOLUME, math.nan, MILLILITER),)}, "finite"),
        ({"measurements": (Measurement(VOLUME, math.inf, MILLILITER),)}, "finite"),
        ({"measurements": (Measurement(VOLUME, True, MILLILITER),)}, "number"),
        ({"measurements": (Measurement(VOLUME, "1", MILLILITER),)}, "number"),  # type: ignore[arg-type]
        ({"measurements": ("volume",)}, "Measurement"),
        ({"measurements": (Measurement(VOLUME, 1.0, Code("", "UCUM", "x")),)}, "unit.value"),
        ({"measurements": (Measurement(VOLUME, 1.0, MILLILITER),) * 101}, "at most"),
        ({"segment_label": "x" * 65}, "65 characters"),
        ({"segment_label": ""}, "non-empty"),
        ({"segment_label": "Kör\u00f6"}, "ASCII"),
        ({"segment_label": "a\\b"}, "backslash"),
        ({"segment_label": 7}, "str"),
        ({"segmented_category": ("91723000", "SCT", "x")}, "Code"),
        ({"segmented_type": Code("1", "S" * 17, "x")}, "scheme"),
        ({"segmented_type": Code("1", "SCT", "m" * 65)}, "meaning"),
    ],
)
def test_validate_result_rejects(series: list[Dataset], changes: dict[str, object], message: str) -> None:
    with pytest.raises(ModelOutputError, match=message):
        validate_result(_result(**changes), series)


def test_validate_result_rejects_other_objects(series: list[Dataset]) -> None:
    with pytest.raises(ModelOutputError, match="not a ModelResult"):
        validate_result({"mask": None}, series)


def test_validate_result_needs_same_sized_images_for_a_mask(series: list[Dataset]) -> None:
    with pytest.raises(ModelOutputError, match="same Rows"):
        validate_result(_result(), _mutated("size"))


# --- load_models ----------------------------------------------------------------------------------


def test_no_models() -> None:
    assert load_models("", {}) == []
    assert load_models(" none ", {}) == []
    assert load_models("NONE", {}) == []


def test_registered_models() -> None:
    environ = {
        "SAGEMAKER_ENDPOINT_NAME": "liver-seg",
        "SAGEMAKER_MODALITIES": "ct, mr",
        "SAGEMAKER_MODEL_VERSION": "7",
    }
    reference, sagemaker = load_models("ct-body-mask, sagemaker", environ)
    assert isinstance(reference, CtBodyMaskModel)
    assert isinstance(sagemaker, SageMakerModel)
    assert (sagemaker.name, sagemaker.version) == ("sagemaker:liver-seg", "7")
    assert sagemaker.accepts(descriptor(modality="MR"))
    assert not sagemaker.accepts(descriptor(modality="PT"))


def test_sagemaker_defaults_and_requirements() -> None:
    (model,) = load_models("sagemaker", {"SAGEMAKER_ENDPOINT_NAME": "e"})
    assert isinstance(model, SageMakerModel)
    assert (model.version, model.modalities) == ("1", frozenset({"CT"}))
    with pytest.raises(ValueError, match="SAGEMAKER_ENDPOINT_NAME"):
        load_models("sagemaker", {})
    with pytest.raises(ValueError, match="SAGEMAKER_MAX_PAYLOAD_BYTES"):
        load_models("sagemaker", {"SAGEMAKER_ENDPOINT_NAME": "e", "SAGEMAKER_MAX_PAYLOAD_BYTES": "lots"})


def test_user_plugins() -> None:
    (plugin,) = load_models("tests.unit.test_inference_model:TinyModel", {})
    assert isinstance(plugin, TinyModel)
    (made,) = load_models("tests.unit.test_inference_model:tiny_factory", {})
    assert isinstance(made, TinyModel)
    datasets = phantom.ct_series()
    result = validate_result(plugin.run(datasets), datasets)
    assert result.mask is not None and int(result.mask.sum()) == phantom.SLICES


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet", "unknown inference model 'resnet'; known models: ct-body-mask, sagemaker"),
        ("no_such_module_xyz:Model", "cannot be imported"),
        ("tests.unit.test_inference_model:Missing", "no attribute"),
        ("tests.unit.test_inference_model:NOT_A_MODEL", "did not produce a Model"),
        ("tests.unit.test_inference_model:CATEGORY", "not a class or factory"),
        (":TinyModel", "package.module:attribute"),
        ("ct-body-mask,ct-body-mask", "configured twice"),
    ],
)
def test_bad_specifications(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_models(spec, {})


def test_known_models_are_listed() -> None:
    assert loading.KNOWN_MODELS == ("ct-body-mask", "sagemaker")
