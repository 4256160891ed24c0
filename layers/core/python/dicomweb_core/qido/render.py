"""QIDO-RS responses: DICOM JSON arrays or multipart/related DICOM XML (PS3.18 §10.6.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomweb_core.dicom.native_xml import to_xml
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.qido.view import Entity
from dicomweb_core.web.multipart import encode_multipart, multipart_content_type
from dicomweb_core.web.uri import DicomWebURI

SPECIFIC_CHARACTER_SET = "00080005"
RETRIEVE_URL = "00081190"
DICOM_XML = "application/dicom+xml"


def result(item: Entity, merged: dict[str, Any], *, base_url: str) -> dict[str, Any]:
    """One match as DICOM JSON: its attributes merged with its parents' (``merged``, the
    search's view of it), aggregates and RetrieveURL.

    Values are Unicode in DICOM JSON, so the stored Specific Character Set is dropped.
    """
    dataset = dict(merged)
    dataset.pop(SPECIFIC_CHARACTER_SET, None)
    dataset[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(item, base_url)]}
    return dict(sorted(dataset.items()))


def _retrieve_url(item: Entity, base_url: str) -> str:
    if isinstance(item, StudyItem):
        return DicomWebURI(base_url, study=item.study_uid).url
    if isinstance(item, SeriesItem):
        return DicomWebURI(base_url, study=item.study_uid, series=item.series_uid).url
    assert isinstance(item, InstanceItem)
    return DicomWebURI(base_url, study=item.study_uid, series=item.series_uid, instance=item.sop_uid).url


def xml_multipart(results: Sequence[dict[str, Any]]) -> tuple[bytes, str]:
    """``multipart/related; type="application/dicom+xml"``: one part per result."""
    body, boundary = encode_multipart(({"Content-Type": DICOM_XML}, to_xml(r)) for r in results)
    return body, multipart_content_type(boundary, DICOM_XML)
