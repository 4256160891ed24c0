"""Result objects: the Segmentation (PS3.3 C.8.20) and TID 1500 Comprehensive 3D SR built from
a model's output, re-read from their Part 10 bytes and passed through STOW-RS's own validator."""

from __future__ import annotations

import datetime as dt
import io
import random
from collections.abc import Iterator
from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicomweb_core.config import Limits
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.dicom.uid import is_valid_uid
from dicomweb_core.hooks.inference.model import Code, Measurement, ModelOutputError, ModelResult
from dicomweb_core.hooks.inference.reference import VOLUME, CtBodyMaskModel
from dicomweb_core.hooks.inference.results import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    build_results,
    result_uid,
)
from infra.datasets import synthetic_ct as phantom

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
CREATED = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
MODEL = CtBodyMaskModel()


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return phantom.ct_series()


@pytest.fixture(scope="module")
def result(series: list[Dataset]) -> ModelResult:
    output = MODEL.run(series)
    assert output is not None
    return output


@pytest.fixture(scope="module")
def written(series: list[Dataset], result: ModelResult) -> list[bytes]:
    return [part10(ds) for ds in build_results(series, result, MODEL, series_version="3", created=CREATED)]


@pytest.fixture(scope="module")
def seg(written: list[bytes]) -> Dataset:
    return pydicom.dcmread(io.BytesIO(written[0]))


@pytest.fixture(scope="module")
def sr(written: list[bytes]) -> Dataset:
    return pydicom.dcmread(io.BytesIO(written[1]))


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def content_items(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from content_items(item.get("ContentSequence", []))


def named(sr: Dataset, meaning: str) -> list[Dataset]:
    return [
        item
        for item in content_items(sr.ContentSequence)
        if item.ConceptNameCodeSequence[0].CodeMeaning.lower() == meaning.lower()
    ]


# --- result_uid -----------------------------------------------------------------------------------


def test_result_uid_is_deterministic_and_valid() -> None:
    uid = result_uid(phantom.SERIES_UID, "1", "ct-body-mask", "1.0.0", "seg")
    assert uid == result_uid(phantom.SERIES_UID, "1", "ct-body-mask", "1.0.0", "seg")
    assert uid.startswith("2.25.") and is_valid_uid(uid) and len(uid) <= 64
    assert uid != result_uid(phantom.SERIES_UID, "2", "ct-body-mask", "1.0.0", "seg")
    assert result_uid("a", "b") != result_uid("a.b") != result_uid("ab")
    for seed in range(200):  # no leading zeros, whatever the hash
        assert is_valid_uid(result_uid(str(seed)))
    with pytest.raises(ValueError, match="at least one part"):
        result_uid()


# --- both objects ---------------------------------------------------------------------------------


def test_results_are_a_seg_and_an_sr_in_the_source_study(seg: Dataset, sr: Dataset) -> None:
    assert (seg.SOPClassUID, sr.SOPClassUID) == (SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR)
    for ds, number, kind in (
        (seg, SEG_SERIES_NUMBER, "segmentation"),
        (sr, SR_SERIES_NUMBER, "measurements"),
    ):
        assert ds.StudyInstanceUID == phantom.STUDY_UID
        assert ds.SeriesInstanceUID != phantom.SERIES_UID
        assert ds.SeriesNumber == number
        assert ds.SeriesDescription == f"ct-body-mask 1.0.0 {kind}"
        assert ds.Manufacturer == MANUFACTURER
        assert ds.ManufacturerModelName == "ct-body-mask"
        assert ds.SoftwareVersions == "1.0.0"
        assert ds.DeviceSerialNumber == DEVICE_SERIAL_NUMBER
        assert ds.PatientID == "PHANTOM-1"
        assert (ds.ContentDate, ds.ContentTime) == ("20240506", "070809")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID


def test_results_pass_the_stow_validator(written: list[bytes], seg: Dataset, sr: Dataset) -> None:
    received = [read_instance(data, limits=Limits()) for data in written]
    assert [r.sop_instance_uid for r in received] == [seg.SOPInstanceUID, sr.SOPInstanceUID]
    assert {r.study_instance_uid for r in received} == {phantom.STUDY_UID}
    assert [r.modality for r in received] == ["SEG", "SR"]


def test_uids_are_deterministic(series: list[Dataset], result: ModelResult, written: list[bytes]) -> None:
    again = build_results(series, result, MODEL, series_version="3", created=CREATED)
    assert [part10(ds) for ds in again] == written  # byte-identical: STOW-RS accepts the re-run
    shuffled = list(series)
    random.Random(11).shuffle(shuffled)
    rerun = MODEL.run(shuffled)
    assert rerun is not None
    assert [
        part10(ds) for ds in build_results(shuffled, rerun, MODEL, series_version="3", created=CREATED)
    ] == written
    later = build_results(series, result, MODEL, series_version="3")  # other time: same UIDs
    assert [ds.SOPInstanceUID for ds in later] == [ds.SOPInstanceUID for ds in again]


def test_a_new_series_version_gets_new_uids(
    series: list[Dataset], result: ModelResult, seg: Dataset, sr: Dataset
) -> None:
    new = build_results(series, result, MODEL, series_version="4", created=CREATED)
    old = {seg.SOPInstanceUID, sr.SOPInstanceUID, seg.SeriesInstanceUID, sr.SeriesInstanceUID}
    assert not {uid for ds in new for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID)} & old


# --- the Segmentation -----------------------------------------------------------------------------


def test_seg_describes_one_automatic_segment(seg: Dataset) -> None:
    assert seg.SegmentationType == "BINARY"
    (segment,) = seg.SegmentSequence
    assert segment.SegmentNumber == 1
    assert segment.SegmentLabel == "Body"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "38266002"
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("ct-body-mask", "1.0.0")
    family = algorithm.AlgorithmFamilyCodeSequence[0]
    assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")  # CID 7162


def test_seg_references_the_source_instances(seg: Dataset, series: list[Dataset]) -> None:
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == phantom.SERIES_UID
    referenced = {item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in series}
    body_slices = {ds.SOPInstanceUID for ds in series if phantom.spatial_index(ds) in phantom.BODY_SLICES}
    sources = {
        source.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert sources == body_slices  # empty frames are omitted
    assert seg.NumberOfFrames == len(phantom.BODY_SLICES)


def test_seg_pixels_decode_to_the_mask(
    written: list[bytes], series: list[Dataset], result: ModelResult
) -> None:
    segmentation = hd.seg.segread(io.BytesIO(written[0]))
    pixels = segmentation.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series], segment_numbers=[1], combine_segments=False
    )
    assert result.mask is not None
    assert np.array_equal(pixels[..., 0].astype(np.bool_), result.mask)
    volume = segmentation.get_volume()
    assert volume is not None and int(volume.array.sum()) == int(result.mask.sum())


# --- the SR ---------------------------------------------------------------------------------------


def test_sr_is_a_tid_1500_measurement_report(sr: Dataset) -> None:
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    (group,) = named(sr, "Measurement Group")
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1411"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_sr_measurements_equal_the_models(sr: Dataset, result: ModelResult) -> None:
    numbers = [item for item in content_items(sr.ContentSequence) if item.ValueType == "NUM"]
    assert len(numbers) == len(result.measurements)
    for item, expected in zip(numbers, result.measurements, strict=True):
        name = item.ConceptNameCodeSequence[0]
        (value,) = item.MeasuredValueSequence
        unit = value.MeasurementUnitsCodeSequence[0]
        assert (name.CodeValue, name.CodingSchemeDesignator) == (expected.name.value, expected.name.scheme)
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == (expected.unit.value, expected.unit.scheme)
        assert float(value.NumericValue) == pytest.approx(expected.value, rel=1e-9, abs=1e-9)
    # the local "99SDW" code for the slice count is declared (PS3.3 C.12.1.1.2)
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == ["99SDW"]


def test_sr_names_the_algorithm(sr: Dataset) -> None:
    names = {item.TextValue for item in named(sr, "Algorithm Name")}
    versions = {item.TextValue for item in named(sr, "Algorithm Version")}
    assert (names, versions) == ({"ct-body-mask"}, {"1.0.0"})
    (device,) = named(sr, "Device Observer Name")
    assert device.TextValue == "ct-body-mask"


def test_sr_references_the_segment_and_the_sources(sr: Dataset, seg: Dataset, series: list[Dataset]) -> None:
    (segment,) = named(sr, "Referenced Segment")
    (reference,) = segment.ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert reference.ReferencedSegmentNumber == 1
    sources = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in named(sr, "Source image for segmentation")
    }
    assert sources == {ds.SOPInstanceUID for ds in series if phantom.spatial_index(ds) in phantom.BODY_SLICES}
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    evidence_uids = {
        item.ReferencedSOPInstanceUID
        for s in evidence.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert evidence_uids == {ds.SOPInstanceUID for ds in series} | {seg.SOPInstanceUID}


# --- partial results ------------------------------------------------------------------------------


def test_nothing_to_store(series: list[Dataset], result: ModelResult) -> None:
    empty = np.zeros_like(result.mask)
    assert (
        build_results(series, replace(result, mask=empty, measurements=()), MODEL, series_version="1") == []
    )
    assert build_results(series, replace(result, mask=None, measurements=()), MODEL, series_version="1") == []


def test_mask_without_measurements_is_only_a_seg(series: list[Dataset], result: ModelResult) -> None:
    (only,) = build_results(series, replace(result, measurements=()), MODEL, series_version="1")
    assert only.SOPClassUID == SEGMENTATION_STORAGE


def test_measurements_without_mask_reference_the_images(series: list[Dataset], result: ModelResult) -> None:
    (only,) = build_results(series, replace(result, mask=None), MODEL, series_version="1", created=CREATED)
    report = pydicom.dcmread(io.BytesIO(part10(only)))
    assert report.SOPClassUID == COMPREHENSIVE_3D_SR
    (group,) = named(report, "Measurement Group")
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    sources = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in content_items(group.ContentSequence)
        if item.ValueType == "IMAGE"
    }
    assert sources == {ds.SOPInstanceUID for ds in series}
    read_instance(part10(only), limits=Limits())


def test_untrusted_results_are_checked_again(series: list[Dataset], result: ModelResult) -> None:
    wrong = replace(
        result, measurements=(Measurement(VOLUME, float("nan"), Code("mL", "UCUM", "milliliter")),)
    )
    with pytest.raises(ModelOutputError, match="finite"):
        build_results(series, wrong, MODEL, series_version="1")


def test_sources_must_be_one_series(series: list[Dataset], result: ModelResult) -> None:
    mixed = [*series[:-1], phantom.ct_series(series_uid=f"{phantom.ROOT}.9")[0]]
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        build_results(mixed, result, MODEL, series_version="1")
    with pytest.raises(ValueError, match="source datasets"):
        build_results([], result, MODEL, series_version="1")


class LongNamedModel:
    """A SageMaker-style name longer than a LO value (64 characters) and a local code."""

    name = "sagemaker:" + "e" * 63
    version = "2024.06.01-" + "r" * 60

    def accepts(self, series: object) -> bool:
        return True

    def run(self, datasets: object) -> None:
        return None


def test_long_names_are_cut_to_fit_and_local_schemes_declared(
    series: list[Dataset], result: ModelResult
) -> None:
    local = replace(result, segmented_type=Code("BODY1", "99ACME", "Whole body"))
    model = LongNamedModel()
    seg, report = build_results(series, local, model, series_version="1", created=CREATED)
    for ds in (seg, report):
        assert ds.ManufacturerModelName == model.name[:64]
        assert ds.SoftwareVersions == model.version[:64]
        read_instance(part10(ds), limits=Limits())
    assert [item.CodingSchemeDesignator for item in seg.CodingSchemeIdentificationSequence] == ["99ACME"]
    assert [item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence] == [
        "99ACME",
        "99SDW",
    ]


def test_sources_without_type_2_patient_and_study_attributes_still_get_results(result: ModelResult) -> None:
    # Given a series as real modalities send it: Type 2 attributes simply left out
    sources = phantom.ct_series()
    for ds in sources:
        for keyword in (
            "PatientBirthDate",
            "PatientSex",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
        ):
            if keyword in ds:
                delattr(ds, keyword)

    # When the results are built
    built = build_results(sources, result, MODEL, series_version="3", created=CREATED)

    # Then the SEG and SR carry those attributes empty (Type 2), and pass the STOW validator
    assert [ds.Modality for ds in built] == ["SEG", "SR"]
    for ds in built:
        assert ds.PatientBirthDate == "" and ds.PatientSex == ""
        read_instance(memoryview(part10(ds)), limits=Limits())
