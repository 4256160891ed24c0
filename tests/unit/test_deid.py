"""PS3.15 Annex E de-identification: the table, the profile, consistency, golden checks."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomweb_core.config import Limits
from dicomweb_core.dicom.failures import InstanceRejected
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.dicom.uid import is_valid_uid
from dicomweb_core.hooks.deid.profile import Dates, Deidentifier, Options, Rule, table
from infra.datasets.dicom_files import part10_files
from infra.datasets.generate import (
    PHI_VALUES,
    STRUCTURED_PHI_VALUES,
    code,
    make_phi_gsps,
    make_phi_kos,
    make_phi_rich,
    make_phi_sr,
    new_uid,
    to_part10,
)
from infra.deid.make_table import convert

KEY = b"0123456789abcdef0123456789abcdef"
PHI = list(PHI_VALUES)


def phi_rich(study: str, series: str, sop: str, *, referenced: str = "1.2.3.4.5.6") -> Dataset:
    return make_phi_rich(study=study, series=series, sop=sop, referenced=referenced)


def all_text(ds: Dataset) -> str:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue().decode("latin-1")


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(KEY, Options(dates=Dates.MODIFIED))


def test_table_is_the_2024b_edition_with_spot_checked_rows() -> None:
    # Given the committed table, When rows are looked up, Then they say what PS3.15 E.1-1 says
    t = table()
    assert t.edition == "2024b"
    assert len(t.exact) > 600
    assert t.exact[0x00100010].actions == {"basic": "Z"}
    assert t.exact[0x00100020].actions == {"basic": "Z/D"}
    assert t.exact[0x0020000D].actions == {"basic": "U", "retain_uids": "K"}
    assert t.exact[0x00080020].actions == {
        "basic": "Z",
        "retain_full_dates": "K",
        "retain_modified_dates": "C",
    }
    assert t.private.actions == {"basic": "X", "retain_safe_private": "C"}
    assert t.rule_for(0x60003000) is not None  # (60xx,3000) overlay data, a repeating group


def test_the_converter_reads_the_standards_json_shape() -> None:
    rows = [
        {"name": "Patient's Name", "tag": "(0010,0010)", "basicProfile": "Z", "id": "00100010"},
        {"name": "Overlay Data", "tag": "(60XX,3000)", "basicProfile": "X", "cleanGraphOpt": "C"},
        {"name": "Private Attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD", "basicProfile": "X"},
    ]
    document = convert(rows, "2024b", "test")
    assert [r["tag"] for r in document["rows"]] == ["00100010", "60xx3000", "private"]
    assert document["rows"][1]["actions"] == {"basic": "X", "clean_graphics": "C"}


@pytest.mark.parametrize(
    ("actions", "columns", "expected"),
    [
        ({"basic": "Z/D"}, [], "D"),
        ({"basic": "X/Z"}, [], "Z"),
        ({"basic": "X/Z/U*"}, [], "U"),
        ({"basic": "X/Z/U*", "retain_uids": "K"}, ["retain_uids"], "K"),
        ({"basic": "X", "clean_descriptors": "C"}, ["clean_descriptors"], "C"),
        ({"basic": "X", "a": "C", "b": "K"}, ["a", "b"], "K"),
        ({"basic": "Q?"}, [], "X"),
    ],
    ids=["Z/D", "X/Z", "X/Z/U*", "option-K", "option-C", "most-retaining", "unknown-fails-safe"],
)
def test_action_resolution(actions: dict[str, str], columns: list[str], expected: str) -> None:
    assert Rule("00000000", "test", actions).action(columns) == expected


def test_no_phi_survives_anywhere(deid: Deidentifier) -> None:
    # Given a PHI-rich instance, When it is de-identified
    out = deid.deidentify(phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1"))
    text = all_text(out)
    # Then none of the identifying values is left, at any depth or in private tags
    for value in PHI:
        assert value not in text, value
    assert "OriginalAttributesSequence" not in out
    assert not [e for e in out if e.tag.is_private]
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_uids_map_consistently_and_references_follow(deid: Deidentifier) -> None:
    # Given two instances of one study, the second referencing the first
    first = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    second = phi_rich("1.2.3", "1.2.3.2", "1.2.3.2.1", referenced="1.2.3.1.1")
    # When each is de-identified, even by another Deidentifier with the same key
    a = deid.deidentify(first)
    b = Deidentifier(KEY, Options(dates=Dates.MODIFIED)).deidentify(second)
    # Then the study maps to one new UID, series stay distinct, the reference points at the new UID
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.2.3"
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert all(is_valid_uid(u) and u.startswith("2.25.") for u in (a.StudyInstanceUID, a.SOPInstanceUID))
    assert a.PatientID == b.PatientID and a.PatientID.startswith("P")


def test_another_key_gives_unrelated_uids() -> None:
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    one = Deidentifier(KEY, Options()).deidentify(ds)
    other = Deidentifier(b"x" * 32, Options()).deidentify(ds)
    assert one.StudyInstanceUID != other.StudyInstanceUID
    assert one.PatientID != other.PatientID


def test_dates_shift_by_one_offset_per_patient_and_keep_intervals(deid: Deidentifier) -> None:
    out = deid.deidentify(phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1"))

    def day(text: str) -> date:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    assert out.StudyDate != "20240115"
    assert (day(out.SeriesDate) - day(out.StudyDate)).days == 5
    again = deid.deidentify(phi_rich("9.9", "9.9.1", "9.9.1.1"))
    assert again.StudyDate == out.StudyDate  # same patient, same shift


def test_basic_profile_removes_dates_and_full_dates_keeps_them() -> None:
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert not Deidentifier(KEY, Options()).deidentify(ds).get("StudyDate")
    assert Deidentifier(KEY, Options(dates=Dates.FULL)).deidentify(ds).StudyDate == "20240115"


def test_pixel_data_is_unchanged(deid: Deidentifier) -> None:
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert deid.deidentify(ds).PixelData == ds.PixelData


def test_the_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Deidentifier(b"short", Options())


@pytest.mark.parametrize("path", part10_files(), ids=lambda p: p.name)
def test_every_test_file_deidentifies_and_serialises(path: Path, deid: Deidentifier) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_instance(path.read_bytes(), limits=Limits())
        except InstanceRejected:
            return  # refused at STOW, so never de-identified
        ds = pydicom.dcmread(path)
        out = deid.deidentify(ds)
        patient_name = str(ds.get("PatientName", "") or "")
        text = all_text(out)
    assert out.PatientIdentityRemoved == "YES"
    if len(patient_name) > 3:
        assert patient_name not in text


# ------------------------------------------------------------------ golden documents
# Each fixture is serialised and parsed again (as the pipeline reads it from S3), then
# de-identified; the copy is searched element by element at every depth and as bytes.

DICOM_ROOT = "1.2.840.10008."
Make = Callable[[], Dataset]


def _ct_with_locators() -> Dataset:
    study = new_uid()
    return make_phi_rich(study=study, RetrieveURL=f"https://pacs.stelsewhere.org/studies/{study}")


GOLDEN: dict[str, tuple[Make, tuple[str, ...]]] = {
    "ct": (_ct_with_locators, (*PHI_VALUES, "pacs.stelsewhere.org")),
    "comprehensive-sr": (make_phi_sr, STRUCTURED_PHI_VALUES),
    "gsps": (make_phi_gsps, STRUCTURED_PHI_VALUES),
    "key-object-selection": (make_phi_kos, STRUCTURED_PHI_VALUES),
}
OPTION_SETS = {
    "basic": Options(),
    "template-default": Options(retain_patient_characteristics=True, dates=Dates.MODIFIED),
    "clean-options": Options(
        clean_descriptors=True, clean_structured_content=True, clean_graphics=True, dates=Dates.MODIFIED
    ),
}


def parsed(ds: Dataset) -> Dataset:
    """The data set as the pipeline sees it: Part 10 bytes read back by pydicom."""
    return pydicom.dcmread(io.BytesIO(to_part10(ds)))


def elements(ds: Dataset) -> list[DataElement]:
    """Every element of the data set, in every item of every sequence (Dataset.walk)."""
    found: list[DataElement] = []
    ds.walk(lambda _, element: found.append(element))
    return found


def instance_uids(ds: Dataset) -> set[str]:
    """Every UID value that is not defined by the standard (the original's own UIDs)."""
    values: set[str] = set()
    for element in elements(ds):
        if element.VR == "UI" and element.value:
            multiple = element.VM > 1
            values.update(str(v) for v in (element.value if multiple else [element.value]))
    return {v for v in values if not v.startswith(DICOM_ROOT)}


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
@pytest.mark.parametrize(("make", "phi"), GOLDEN.values(), ids=GOLDEN.keys())
def test_golden_copy_has_no_phi_at_any_depth(make: Make, phi: tuple[str, ...], options: Options) -> None:
    # Given a document with PHI at every depth, every one of its values present in its bytes
    original = parsed(make())
    original_bytes = to_part10(original).decode("latin-1")
    assert all(value in original_bytes for value in phi)
    originals = instance_uids(original)
    deid = Deidentifier(KEY, options)
    # When it is de-identified and serialised
    out = deid.deidentify(original)
    data = to_part10(out)
    # Then no identifying value and no original UID is in the bytes
    text = data.decode("latin-1")
    for value in (*phi, *originals):
        assert value not in text, value
    # And, walking every element of every item: no PHI, nothing private, no URL, no AE
    # title, and every UID is a replacement of an original UID or one the standard defines
    replaced = {deid.uid(u) for u in originals}
    for element in elements(out):
        assert not element.tag.is_private, element
        assert element.VR not in ("UR", "AE") or not element.value, element
        if element.VR == "SQ":
            continue
        assert not any(value in str(element.value) for value in phi), element
        if element.VR == "UI" and element.value:
            for uid in element.value if element.VM > 1 else [element.value]:
                assert uid in replaced or uid.startswith(DICOM_ROOT), element
    # And the copy passes the same validation as any STOW
    read_instance(data, limits=Limits())


def test_sequence_with_action_d_becomes_one_item_of_dummy_values(deid: Deidentifier) -> None:
    # Given an SR with two operators (code D in Operator Identification Sequence, with
    # a Person Identification Code Sequence, D, inside) and a verifying observer (D)
    ds = parsed(make_phi_sr())
    assert len(ds.OperatorIdentificationSequence) == 2
    # When it is de-identified
    out = deid.deidentify(ds)
    # Then each such sequence holds one item whose values are dummies (PS3.15 E.1-1 code D)
    (operator,) = out.OperatorIdentificationSequence
    (person_code,) = operator.PersonIdentificationCodeSequence
    assert (person_code.CodeValue, person_code.CodingSchemeDesignator, person_code.CodeMeaning) == (
        "ANONYMIZED",
        "ANONYMIZED",
        "ANONYMIZED",
    )
    assert operator.InstitutionName == "ANONYMIZED"  # X/Z/D → D
    assert "PersonAddress" not in operator  # X stays removed inside the item
    (observer,) = out.VerifyingObserverSequence
    assert observer.VerifyingObserverName == "ANONYMIZED"
    assert observer.VerifyingOrganization == "ANONYMIZED"
    assert observer.VerificationDateTime == "19000101000000"
    assert len(observer.VerifyingObserverIdentificationCodeSequence) == 0  # Z
    assert "AuthorObserverSequence" not in out  # X


def test_sr_copy_keeps_its_header_and_evidence_but_no_content_tree(deid: Deidentifier) -> None:
    # Given a report and a key object selection whose content items name the patient
    report, selection = parsed(make_phi_sr()), parsed(make_phi_kos())
    # When they are de-identified under the Basic Profile (Content Sequence: D)
    copies = [deid.deidentify(report), deid.deidentify(selection)]
    # Then the content tree is removed, which leaves the root container valid (Content
    # Sequence is Type 1C: required only when the root has children, PS3.3 C.17.3)
    for original, copy in zip((report, selection), copies, strict=True):
        assert "ContentSequence" not in copy
        assert copy.ValueType == "CONTAINER"
        assert copy.ConceptNameCodeSequence[0].CodeValue == original.ConceptNameCodeSequence[0].CodeValue
        # And the evidence still names the referenced instances, under their new UIDs
        evidence = copy.CurrentRequestedProcedureEvidenceSequence[0]
        series = original.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        reference = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == deid.uid(
            series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        )
        assert reference.ReferencedSOPClassUID == series.ReferencedSOPSequence[0].ReferencedSOPClassUID


def test_presentation_state_copy_has_no_graphic_annotations(deid: Deidentifier) -> None:
    # Given a presentation state whose text annotation names the patient
    ds = parsed(make_phi_gsps())
    # When it is de-identified under the Basic Profile (Graphic Annotation Sequence: D)
    out = deid.deidentify(ds)
    # Then the annotations are removed (the Graphic Annotation Module is U in PS3.3 A.33)
    # and the layers, displayed area and referenced images (new UIDs) remain
    assert "GraphicAnnotationSequence" not in out
    assert out.GraphicLayerSequence[0].GraphicLayer == "LAYER1"
    assert out.DisplayedAreaSelectionSequence[0].PresentationSizeMode == "SCALE TO FIT"
    image = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert out.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == deid.uid(
        image
    )


def test_clean_structured_content_keeps_the_tree_and_standard_codes_but_no_text() -> None:
    # Given a report, and the Clean Structured Content option (Content Sequence: C)
    ds = parsed(make_phi_sr())
    deid = Deidentifier(KEY, Options(clean_structured_content=True, dates=Dates.MODIFIED))
    # When it is de-identified
    out = deid.deidentify(ds)
    # Then the tree keeps its shape, value types and standard codes (PS3.15 E.3.4)
    observer, organisation, findings = out.ContentSequence
    assert [i.ValueType for i in out.ContentSequence] == ["PNAME", "TEXT", "CONTAINER"]
    assert observer.PersonName == "ANONYMIZED"
    assert organisation.TextValue == "ANONYMIZED"
    assert organisation.ConceptNameCodeSequence[0].CodeMeaning == "Person Observer's Organization Name"
    finding, measurement, day, uid, image, conclusions = findings.ContentSequence
    assert finding.TextValue == "ANONYMIZED"
    assert not [e for e in finding if e.tag.is_private]
    value = measurement.MeasuredValueSequence[0]
    assert value.NumericValue == 12
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    assert day.Date != "20240115" and len(day.Date) == 8  # shifted
    assert deid.uid(ds.StudyInstanceUID) == uid.UID
    referenced = ds.ContentSequence[2].ContentSequence[4].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == deid.uid(referenced)
    name, conclusion = conclusions.ContentSequence
    assert name.PersonName == "ANONYMIZED"
    # And a code of a local scheme (it may name a person or a place) becomes a dummy code
    local = conclusion.ConceptCodeSequence[0]
    assert (local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning) == (
        "ANONYMIZED",
        "ANONYMIZED",
        "ANONYMIZED",
    )
    assert conclusion.ConceptNameCodeSequence[0].CodeMeaning == "Conclusion"


def test_clean_graphics_keeps_the_geometry_but_no_text() -> None:
    # Given a presentation state, and the Clean Graphics option (Graphic Annotation: C)
    ds = parsed(make_phi_gsps())
    out = Deidentifier(KEY, Options(clean_graphics=True)).deidentify(ds)
    # Then the annotation keeps its layer, box and polyline, and its text is a dummy
    (annotation,) = out.GraphicAnnotationSequence
    assert annotation.GraphicLayer == "LAYER1"
    (text,) = annotation.TextObjectSequence
    assert text.UnformattedTextValue == "ANONYMIZED"
    assert list(text.BoundingBoxBottomRightHandCorner) == [30.0, 10.0]
    assert list(annotation.GraphicObjectSequence[0].GraphicData) == [2.0, 2.0, 12.0, 12.0]


LOCATORS = [
    ("RetrieveURL", "UR", "https://pacs.stelsewhere.org/studies/1.2.3"),
    ("RetrieveURI", "UR", "https://pacs.stelsewhere.org/wado?studyUID=1.2.3"),
    ("PixelDataProviderURL", "UR", "jpip://pacs.stelsewhere.org/1.2.3"),
    ("StorageURL", "UR", "https://pacs.stelsewhere.org/store"),
    ("RetrieveLocationUID", "UI", "1.2.3.4.5.6.7"),
    ("RepositoryUniqueID", "UI", "1.2.3.4.5.6.8"),
    ("HomeCommunityID", "UI", "1.2.3.4.5.6.9"),
    ("StorageMediaFileSetID", "SH", "DOE_JANE_CD"),
    ("RetrieveAETitle", "AE", "STELSEWHERE_AE"),
]


@pytest.mark.parametrize(("keyword", "vr", "value"), LOCATORS, ids=[k for k, _, _ in LOCATORS])
def test_locators_of_the_original_do_not_survive(
    keyword: str, vr: str, value: str, deid: Deidentifier
) -> None:
    # Given an attribute that points back at the original (not in Table E.1-1), at the top
    # level and inside an item of a kept sequence
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    setattr(ds, keyword, value)
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.1"
    setattr(series, keyword, value)
    ds.ReferencedSeriesSequence = [series]
    # When it is de-identified
    out = deid.deidentify(parsed(ds))
    # Then it is gone at both levels
    assert keyword not in out
    assert keyword not in out.ReferencedSeriesSequence[0]
    assert value not in all_text(out)


def test_uids_outside_the_table_are_replaced_unless_they_name_a_definition(deid: Deidentifier) -> None:
    # Given UIDs that are not in Table E.1-1: an instance UID, a coding scheme, a SOP class
    # and a well-known frame of reference (Talairach, PS3.6 Annex A)
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    ds.MultiFrameSourceSOPInstanceUID = "1.2.3.1.9"
    scheme = code("T-A0100", "SRT", "Brain")
    scheme.CodingSchemeUID = "2.16.840.1.113883.6.96"
    ds.AnatomicRegionSequence = [scheme]
    ds.FrameOfReferenceUID = "1.2.840.10008.1.4.1.1"
    # When it is de-identified
    out = deid.deidentify(parsed(ds))
    # Then the instance UID is replaced consistently; definitions are kept
    assert out.MultiFrameSourceSOPInstanceUID == deid.uid("1.2.3.1.9")
    assert out.AnatomicRegionSequence[0].CodingSchemeUID == "2.16.840.1.113883.6.96"
    assert out.SOPClassUID == ds.SOPClassUID
    assert (
        out.ReferencedImageSequence[0].ReferencedSOPClassUID
        == ds.ReferencedImageSequence[0].ReferencedSOPClassUID
    )
    assert out.FrameOfReferenceUID == "1.2.840.10008.1.4.1.1"
    # And the Retain UIDs option keeps it, as it keeps the UIDs the table lists
    kept = Deidentifier(KEY, Options(retain_uids=True)).deidentify(parsed(ds))
    assert kept.MultiFrameSourceSOPInstanceUID == "1.2.3.1.9"


def test_free_text_and_names_outside_the_table_are_replaced(deid: Deidentifier) -> None:
    # Given free text and a person name in attributes Table E.1-1 does not list (they
    # belong in content items, but an object may carry them anywhere)
    ds = phi_rich("1.2.3", "1.2.3.1", "1.2.3.1.1")
    ds.TextValue = "Findings for Doe^Jane"
    ds.EvaluatorName = "Jones^Operator"
    # When it is de-identified
    out = deid.deidentify(parsed(ds))
    # Then they hold dummy values
    assert (out.TextValue, out.EvaluatorName) == ("ANONYMIZED", "ANONYMIZED")
