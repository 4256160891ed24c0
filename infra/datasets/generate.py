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


IMAGE_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
)


def without_pixels(ds: Dataset) -> Dataset:
    """``ds`` without its Image Pixel Module: a header-only object such as an SR or a
    presentation state, built from :func:`make_dataset`."""
    for keyword in IMAGE_PIXEL_KEYWORDS:
        delattr(ds, keyword)
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


# ------------------------------------------------- structured documents carrying PHI
# Each value below is placed at least once in every document the three generators make
# (top level, nested items, private attributes, person names, staff codes, locators), so
# a de-identified copy can be searched for all of them.
STRUCTURED_PHI_VALUES = (
    "Doe^Jane",
    "Jane Doe",
    "PID-12345",
    "ACC-998877",
    "St. Elsewhere",
    "221B Baker Street",
    "555-0100",
    "EMP-4711",
    "Alice Jones",
    "Jones^Alice",
    "Smith^Referring",
    "99STELSEWHERE",
    "STELSEWHERE_AE",
    "pacs.stelsewhere.org",
    "DOE_JANE_CD",
    "private PHI",
    "19700101",
    "20240115",
)
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE = "1.2.840.10008.5.1.4.1.1.11.1"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _private(ds: Dataset, text: str) -> None:
    """A private block (creator and one element) with PHI in ``ds``, at any depth."""
    ds.add_new(0x00330010, "LO", "ACME PHI")
    ds.add_new(0x00331001, "LO", f"private PHI {text}")


def _staff_member() -> Dataset:
    """An operator: Person Identification Macro with a local staff code, institution, phone."""
    person = Dataset()
    person.PersonIdentificationCodeSequence = [
        code("EMP-4711", "99STELSEWHERE", "Dr. Alice Jones (badge EMP-4711)")
    ]
    person.PersonAddress = "221B Baker Street"
    person.PersonTelephoneNumbers = "555-0100"
    person.InstitutionName = "St. Elsewhere"
    person.InstitutionAddress = "221B Baker Street"
    person.InstitutionCodeSequence = [code("STE", "99STELSEWHERE", "St. Elsewhere General Hospital")]
    _private(person, "Jones^Alice")
    return person


def _series_locators(ds: Dataset, series: str, references: list[tuple[str, str]], study: str) -> None:
    """Hierarchical series reference items with every kind of locator of the original."""
    ds.SeriesInstanceUID = series
    ds.RetrieveAETitle = "STELSEWHERE_AE"
    ds.RetrieveURL = f"https://pacs.stelsewhere.org/dicomweb/studies/{study}/series/{series}"
    ds.RetrieveLocationUID = new_uid()
    ds.StorageMediaFileSetID = "DOE_JANE_CD"
    ds.StorageMediaFileSetUID = new_uid()
    wado = Dataset()
    wado.RetrieveURI = f"https://pacs.stelsewhere.org/wado?studyUID={study}"
    ds.WADORetrievalSequence = [wado]
    xds = Dataset()
    xds.RepositoryUniqueID = new_uid()
    xds.HomeCommunityID = new_uid()
    ds.XDSRetrievalSequence = [xds]
    ds.ReferencedSOPSequence = [_reference(sop_class, sop) for sop_class, sop in references]


def _reference(sop_class: str, sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop
    return item


def _document(
    sop_class: str, modality: str, *, study: str | None, series: str | None, sop: str | None
) -> Dataset:
    """A header-only instance (no Image Pixel Module) with PHI in the patient, study and
    equipment modules, a private block, staff identification and the original's URL."""
    ds = without_pixels(
        make_dataset(study=study, series=series, sop=sop, modality=modality, sop_class=sop_class)
    )
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC-998877"
    ds.StudyDate = "20240115"
    ds.StudyDescription = "Report for Doe^Jane"
    ds.InstitutionName = "St. Elsewhere"
    ds.InstitutionAddress = "221B Baker Street"
    ds.ReferringPhysicianName = "Smith^Referring"
    ds.OperatorsName = "Jones^Alice"
    ds.OperatorIdentificationSequence = [_staff_member(), _staff_member()]
    ds.RetrieveURL = f"https://pacs.stelsewhere.org/dicomweb/studies/{ds.StudyInstanceUID}"
    ds.RetrieveAETitle = "STELSEWHERE_AE"
    _private(ds, "Doe^Jane")
    return ds


def _item(relationship: str, value_type: str, concept: Dataset, **attributes: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [concept]
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _evidence(ds: Dataset, references: list[tuple[str, str]]) -> None:
    """Current Requested Procedure Evidence: the study, series and instances the document uses."""
    study = Dataset()
    study.StudyInstanceUID = ds.StudyInstanceUID
    series = Dataset()
    _series_locators(series, new_uid(), references, ds.StudyInstanceUID)
    study.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    request = Dataset()
    request.StudyInstanceUID = ds.StudyInstanceUID
    request.AccessionNumber = "ACC-998877"
    request.PlacerOrderNumberImagingServiceRequest = "PID-12345-ORDER"
    request.RequestedProcedureDescription = "CT for Doe^Jane"
    request.RequestedProcedureCodeSequence = []
    request.RequestedProcedureID = "PID-12345-RP"
    ds.ReferencedRequestSequence = [request]


def make_phi_sr(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    referenced: str | None = None,
) -> Dataset:
    """A Comprehensive SR report (TID 2000 shape) with PHI in TEXT and PNAME items, in a
    local code, in nested CONTAINERs two levels down, in a private block inside a content
    item, in the Verifying Observer and Author Observer Sequences and in the evidence
    locators."""
    ds = _document(COMPREHENSIVE_SR, "SR", study=study, series=series, sop=sop)
    image = (CTImageStorage, referenced or new_uid())
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentDate = "20240115"
    ds.ContentTime = "101010"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Jones^Alice"
    observer.VerifyingObserverIdentificationCodeSequence = [code("EMP-4711", "99STELSEWHERE", "Alice Jones")]
    observer.VerifyingOrganization = "St. Elsewhere"
    observer.VerificationDateTime = "20240115120000"
    ds.VerifyingObserverSequence = [observer]
    author = Dataset()
    author.ObserverType = "PSN"
    author.PersonName = "Jones^Alice"
    author.InstitutionName = "St. Elsewhere"
    ds.AuthorObserverSequence = [author]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2000"
    ds.ContentTemplateSequence = [template]
    _evidence(ds, [image])
    finding = _item(
        "CONTAINS",
        "TEXT",
        code("121071", "DCM", "Finding"),
        TextValue="Jane Doe (PID-12345, born 19700101) has a 12 mm lesion; seen by Dr. Alice Jones",
    )
    _private(finding, "Doe^Jane")
    nested = _item(
        "CONTAINS",
        "CONTAINER",
        code("121076", "DCM", "Conclusions"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=[
            _item(
                "CONTAINS",
                "PNAME",
                code("121008", "DCM", "Person Observer Name"),
                PersonName="Smith^Referring",
            ),
            _item(
                "CONTAINS",
                "CODE",
                code("121077", "DCM", "Conclusion"),
                ConceptCodeSequence=[
                    code("FU-1", "99STELSEWHERE", "Doe^Jane on St. Elsewhere follow-up list")
                ],
            ),
        ],
    )
    measurement = _item(
        "CONTAINS",
        "NUM",
        code("410668003", "SCT", "Length"),
        MeasuredValueSequence=[Dataset()],
    )
    measurement.MeasuredValueSequence[0].NumericValue = "12"
    measurement.MeasuredValueSequence[0].MeasurementUnitsCodeSequence = [code("mm", "UCUM", "millimeter")]
    findings = _item(
        "CONTAINS",
        "CONTAINER",
        code("121070", "DCM", "Findings"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=[
            finding,
            measurement,
            _item("CONTAINS", "DATE", code("111060", "DCM", "Study Date"), Date="20240115"),
            _item("CONTAINS", "UIDREF", code("110180", "DCM", "Study Instance UID"), UID=ds.StudyInstanceUID),
            _item(
                "CONTAINS",
                "IMAGE",
                code("121112", "DCM", "Source of Measurement"),
                ReferencedSOPSequence=[_reference(*image)],
            ),
            nested,
        ],
    )
    ds.ContentSequence = [
        _item(
            "HAS OBS CONTEXT",
            "PNAME",
            code("121008", "DCM", "Person Observer Name"),
            PersonName="Jones^Alice",
        ),
        _item(
            "HAS OBS CONTEXT",
            "TEXT",
            code("121009", "DCM", "Person Observer's Organization Name"),
            TextValue="St. Elsewhere, 221B Baker Street, 555-0100",
        ),
        findings,
    ]
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def make_phi_gsps(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    referenced: str | None = None,
) -> Dataset:
    """A Grayscale Softcopy Presentation State whose text annotations, content creator,
    private blocks inside annotation items and image references carry PHI."""
    ds = _document(GRAYSCALE_SOFTCOPY_PRESENTATION_STATE, "PR", study=study, series=series, sop=sop)
    image = (CTImageStorage, referenced or new_uid())
    ds.ContentLabel = "ANNOTATIONS"
    ds.ContentDescription = "Measurements"
    ds.PresentationCreationDate = "20240115"
    ds.PresentationCreationTime = "101010"
    ds.ContentCreatorName = "Jones^Alice"
    ds.ContentCreatorIdentificationCodeSequence = [code("EMP-4711", "99STELSEWHERE", "Alice Jones")]
    referenced_series = Dataset()
    _series_locators(referenced_series, new_uid(), [image], ds.StudyInstanceUID)
    referenced_series.ReferencedImageSequence = referenced_series.ReferencedSOPSequence
    del referenced_series.ReferencedSOPSequence
    ds.ReferencedSeriesSequence = [referenced_series]
    text = Dataset()
    text.UnformattedTextValue = "Jane Doe DOB 19700101 PID-12345"
    text.BoundingBoxAnnotationUnits = "PIXEL"
    text.BoundingBoxTopLeftHandCorner = [1.0, 1.0]
    text.BoundingBoxBottomRightHandCorner = [30.0, 10.0]
    text.BoundingBoxTextHorizontalJustification = "LEFT"
    _private(text, "Doe^Jane")
    graphic = Dataset()
    graphic.GraphicAnnotationUnits = "PIXEL"
    graphic.GraphicDimensions = 2
    graphic.NumberOfGraphicPoints = 2
    graphic.GraphicData = [2.0, 2.0, 12.0, 12.0]
    graphic.GraphicType = "POLYLINE"
    graphic.GraphicFilled = "N"
    annotation = Dataset()
    annotation.GraphicLayer = "LAYER1"
    annotation.ReferencedImageSequence = [_reference(*image)]
    annotation.TextObjectSequence = [text]
    annotation.GraphicObjectSequence = [graphic]
    ds.GraphicAnnotationSequence = [annotation]
    layer = Dataset()
    layer.GraphicLayer = "LAYER1"
    layer.GraphicLayerOrder = 1
    ds.GraphicLayerSequence = [layer]
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [4, 4]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelSpacing = [1, 1]
    ds.DisplayedAreaSelectionSequence = [area]
    ds.PresentationLUTShape = "IDENTITY"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def make_phi_kos(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    referenced: str | None = None,
) -> Dataset:
    """A Key Object Selection (TID 2010 shape) whose description names the patient and the
    clinician, and whose evidence carries every locator of the original."""
    ds = _document(KEY_OBJECT_SELECTION, "KO", study=study, series=series, sop=sop)
    image = (CTImageStorage, referenced or new_uid())
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code("113000", "DCM", "Of Interest")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentDate = "20240115"
    ds.ContentTime = "101010"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    _evidence(ds, [image])
    selected = Dataset()
    selected.RelationshipType = "CONTAINS"
    selected.ValueType = "IMAGE"
    selected.ReferencedSOPSequence = [_reference(*image)]
    description = _item(
        "CONTAINS",
        "TEXT",
        code("113012", "DCM", "Key Object Description"),
        TextValue="For Dr. Alice Jones: Jane Doe (PID-12345, Doe^Jane) lesion",
    )
    _private(description, "Doe^Jane")
    ds.ContentSequence = [description, selected]
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds
