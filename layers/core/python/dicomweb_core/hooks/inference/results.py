"""DICOM result objects for a model's output, built with highdicom.

A non-empty mask becomes a binary Segmentation (PS3.3 A.51, C.8.20 Segmentation IOD) with one
segment whose Algorithm Identification (PS3.3 Table 10-19, family from PS3.16 CID 7162
"Artificial Intelligence") names the model. Measurements become a Comprehensive 3D SR (PS3.3
A.35.13) holding a TID 1500 Measurement Report with one measurement group: a TID 1411
Volumetric ROI group that references the segment (PS3.16 TID 1411, "Referenced Segment") when
a Segmentation is made, or a TID 1501 group referencing the source images when there is no
mask. Both objects go into the source study, each in a new series.

Every UID is derived from (series UID, series version, model name, model version, role), so
running the same model version on the same version of a series again yields the same SOP
Instance UIDs, and STOW-RS duplicate detection makes inference idempotent. Content and series
dates come from ``created``; pass a stable value (the SeriesStable event time) and a re-run
produces byte-identical objects, which STOW-RS accepts as already stored.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicomweb_core.hooks.inference.model import Code, Model, ModelResult, validate_result
from dicomweb_core.hooks.inference.volume import slice_order

SEG_SERIES_NUMBER = 9001
SR_SERIES_NUMBER = 9002
MANUFACTURER = "serverless-dicomweb"
DEVICE_SERIAL_NUMBER = "serverless-dicomweb-inference"
SEGMENT_NUMBER = 1
_MAX_LO = 64
# Fixed namespace for the name-based (version 5) UUIDs under the 2.25 root (PS3.5 B.2).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:serverless-dicomweb:inference-results")
# Concept for the procedure reported (PS3.16 CID 100) by modality of the source series.
_PROCEDURES = {
    "CT": codes.cid100.CTUnspecifiedBodyRegion,
    "MR": codes.cid100.MRIUnspecifiedBodyRegion,
    "PT": codes.cid100.PETUnspecifiedBodyRegion,
    "NM": codes.cid100.NMUnspecifiedBodyRegion,
}


def result_uid(*parts: str) -> str:
    """A deterministic UID ``2.25.<decimal UUID>`` (PS3.5 B.2) for the given parts.

    The UUID is a name-based version 5 UUID of the JSON array of ``parts`` (so ``("a", "b")``
    and ``("a.b",)`` differ) in a fixed namespace. The result has at most 44 characters, only
    digits and dots, and no leading zeros (PS3.5 §9.1).
    """
    if not parts:
        raise ValueError("result_uid needs at least one part")
    name = json.dumps([str(part) for part in parts], separators=(",", ":"))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def build_results(
    datasets: Sequence[Dataset],
    result: ModelResult,
    model: Model,
    *,
    series_version: str,
    created: dt.datetime | None = None,
) -> list[Dataset]:
    """The Segmentation and/or SR for ``result``, computed by ``model`` on ``datasets``.

    ``datasets`` are the source images in the order the model received them (the mask's first
    axis follows it); they must belong to one study and series. The objects list them in slice
    order (:func:`~dicomweb_core.hooks.inference.volume.slice_order`), so the input order does not
    matter. ``result`` is validated again here.

    Returns the SEG (when the mask has any voxel set) followed by the SR (when there are
    measurements); an empty list when there is neither. Each has File Meta Information and
    can be written with ``dcmwrite(..., enforce_file_format=True)``. ``created`` (default: now,
    UTC) sets the Content and Series Date/Time.
    """
    if not datasets:
        raise ValueError("build_results needs the source datasets")
    result = validate_result(result, datasets)
    # Spatial order, whatever order the images were loaded in: viewers expect it, and the
    # objects are then the same bytes however the pipeline listed the series.
    order = slice_order(datasets)
    datasets = [datasets[i] for i in order]
    if result.mask is not None:
        result = replace(result, mask=result.mask[order])
    _single_value(datasets, "StudyInstanceUID")  # highdicom copies it from the source images
    for ds in datasets:
        _present_type_2(ds)
    series_uid = _single_value(datasets, "SeriesInstanceUID")
    when = created or dt.datetime.now(dt.UTC)

    def uid(*role: str) -> str:
        return result_uid(series_uid, series_version, model.name, model.version, *role)

    algorithm = f"{model.name} {model.version}"
    outputs: list[Dataset] = []
    segmentation: hd.seg.Segmentation | None = None
    if result.mask is not None and result.mask.any():
        segmentation = hd.seg.Segmentation(
            source_images=list(datasets),
            pixel_array=result.mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                hd.seg.SegmentDescription(
                    segment_number=SEGMENT_NUMBER,
                    segment_label=result.segment_label,
                    segmented_property_category=_coded(result.segmented_category),
                    segmented_property_type=_coded(result.segmented_type),
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                    algorithm_identification=hd.AlgorithmIdentificationSequence(
                        name=_lo(model.name),
                        family=codes.cid7162.ArtificialIntelligence,
                        version=_lo(model.version),
                        source=MANUFACTURER,
                    ),
                    tracking_uid=uid("segment", str(SEGMENT_NUMBER)),
                    tracking_id=result.segment_label,
                )
            ],
            series_instance_uid=uid("seg", "series"),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=uid("seg"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=_lo(model.name),
            software_versions=_lo(model.version),
            device_serial_number=DEVICE_SERIAL_NUMBER,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=True,
            content_label="SEGMENTATION",
            content_description=_lo(f"{result.segment_label} by {algorithm}"),
            coding_schemes=_local_coding_schemes(result, segment=True),
            series_description=_lo(f"{algorithm} segmentation"),
        )
        # highdicom draws this UID at random; derive it so re-runs are byte-identical.
        dimensions = uid("seg", "dimensions")
        segmentation.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimensions
        for index in segmentation.DimensionIndexSequence:
            index.DimensionOrganizationUID = dimensions
        _stamp(segmentation, when)
        outputs.append(segmentation)
    if result.measurements:
        report = _report(datasets, result, model, segmentation, uid)
        _stamp(report, when)
        outputs.append(report)
    return outputs


def _report(
    datasets: Sequence[Dataset],
    result: ModelResult,
    model: Model,
    segmentation: hd.seg.Segmentation | None,
    uid: Callable[..., str],
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of ``result.measurements`` in a Comprehensive 3D SR."""
    algorithm_id = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    tracking = hd.sr.TrackingIdentifier(uid=uid("sr", "tracking"), identifier=result.segment_label)
    measurements = [
        hd.sr.Measurement(
            name=_coded(item.name),
            value=item.value,
            unit=_coded(item.unit),
            derivation=None if item.derivation is None else _coded(item.derivation),
            algorithm_id=algorithm_id,
        )
        for item in result.measurements
    ]
    group: (
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    )
    if segmentation is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=_referenced_segment(datasets, result, segmentation),
            finding_type=_coded(result.segmented_type),
            finding_category=_coded(result.segmented_category),
            algorithm_id=algorithm_id,
            measurements=measurements,
        )
        evidence: list[Dataset] = [*datasets, segmentation]
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=_coded(result.segmented_type),
            finding_category=_coded(result.segmented_category),
            algorithm_id=algorithm_id,
            measurements=measurements,
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=str(ds.SOPClassUID),
                    referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                )
                for ds in datasets
            ],
        )
        evidence = list(datasets)
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(MANUFACTURER, model.name, model.version, "device"),
            name=model.name,
            manufacturer_name=MANUFACTURER,
            model_name=model.name,
            serial_number=DEVICE_SERIAL_NUMBER,
        ),
    )
    modality = str(datasets[0].get("Modality", "")).upper()
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(modality, codes.cid100.ImagingProcedure),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uid("sr", "series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid("sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        manufacturer_model_name=_lo(model.name),
        software_versions=_lo(model.version),
        device_serial_number=DEVICE_SERIAL_NUMBER,
        series_description=_lo(f"{model.name} {model.version} measurements"),
        coding_schemes=_local_coding_schemes(result, segment=False),
    )


def _referenced_segment(
    datasets: Sequence[Dataset], result: ModelResult, segmentation: hd.seg.Segmentation
) -> hd.sr.ReferencedSegment:
    """TID 1411 "Referenced Segment" with the source images the segment covers.

    Built by hand: ``ReferencedSegment.from_segmentation`` (highdicom 0.28) looks for the
    Segment Identification Sequence per frame, but highdicom puts it in the shared functional
    groups when there is only one segment.
    """
    assert result.mask is not None
    covered = [ds for ds, plane in zip(datasets, result.mask, strict=True) if plane.any()]
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(segmentation.SOPClassUID),
        sop_instance_uid=str(segmentation.SOPInstanceUID),
        segment_number=SEGMENT_NUMBER,
        source_images=[
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            )
            for ds in covered
        ],
    )


def _stamp(dataset: Dataset, when: dt.datetime) -> None:
    """Every date and time highdicom sets to "now" from ``when``, so equal inputs give equal bytes."""
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    for prefix in ("Content", "Series", "InstanceCreation"):
        setattr(dataset, f"{prefix}Date", date)
        setattr(dataset, f"{prefix}Time", time)
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time


def _local_coding_schemes(
    result: ModelResult, *, segment: bool
) -> list[hd.coding_schemes.CodingSchemeIdentificationItem] | None:
    """Coding Scheme Identification (PS3.3 C.12.1) for the local "99" schemes an object uses:
    the segment's codes in the SEG, those and the measurements' in the SR."""
    codes_used: list[Code | None] = [result.segmented_category, result.segmented_type]
    if not segment:
        for item in result.measurements:
            codes_used.extend((item.name, item.unit, item.derivation))
    schemes = {code.scheme for code in codes_used if code is not None and code.scheme.startswith("99")}
    if not schemes:
        return None
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=scheme, name=_lo(f"{MANUFACTURER} local codes")
        )
        for scheme in sorted(schemes)
    ]


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _lo(text: str) -> str:
    return text[:_MAX_LO]


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that
# highdicom reads from the source images. Senders often leave them out instead of sending
# them empty; the results then carry them empty, as Type 2 allows.
_TYPE_2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _present_type_2(ds: Dataset) -> None:
    """Give ``ds`` the Type 2 attributes highdicom copies, empty where the sender left them out."""
    for keyword in _TYPE_2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")


def _single_value(datasets: Sequence[Dataset], keyword: str) -> str:
    values = {str(ds.get(keyword, "")) for ds in datasets}
    if len(values) != 1 or "" in values:
        raise ValueError(f"the source images must share one {keyword}")
    return values.pop()
