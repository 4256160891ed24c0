"""QIDO-RS end to end: a synthetic patient stored through STOW-RS, then searched as a DICOMweb client does.

The session's runtime is shared with the STOW tests (the pydicom corpus may or may not be
stored yet), so every exact assertion filters on this module's own PatientID, patient name
or StudyInstanceUID; these are random per run.
"""

from __future__ import annotations

import email.parser
import email.policy
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, CTImageStorage

from infra.datasets.generate import make_dataset, new_uid, without_pixels
from tests.e2e.conftest import Runtime
from tests.e2e.helpers import FAILED_SOP_SEQUENCE, TIMEOUT_S, instance_url

pytestmark = pytest.mark.e2e

# DICOM JSON keys (PS3.18 Annex F).
SOP_INSTANCE_UID = "00080018"
STUDY_DATE = "00080020"
SERIES_DATE = "00080021"
SERIES_TIME = "00080031"
MODALITY = "00080060"
MODALITIES_IN_STUDY = "00080061"
STUDY_DESCRIPTION = "00081030"
RETRIEVE_URL = "00081190"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"

DICOM_JSON = "application/dicom+json"
XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'
NATIVE_DICOM = "http://dicom.nema.org/PS3.19/models/NativeDICOM"


def _letters(n: int) -> str:
    return "".join(random.choices(string.ascii_uppercase, k=n))


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


@dataclass(frozen=True)
class Patient:
    """What the module stored: one patient, a CT+SR study and an older CT-only study."""

    patient_id: str
    family: str
    given: str
    study: str  # CT (2 instances) + SR (1 instance), StudyDate 19930417
    ct_series: str
    ct_sops: tuple[str, str]  # InstanceNumber 1, 2
    sr_series: str
    sr_sop: str
    prior_study: str  # CT (1 instance), StudyDate 19890102
    study_date: str = "19930417"
    prior_date: str = "19890102"
    description: str = "QIDO E2E CHEST"

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"


def _sr_dataset(**kwargs: Any) -> Dataset:
    """A Basic Text SR instance: no pixel data (make_dataset builds an image)."""
    return without_pixels(make_dataset(modality="SR", sop_class=BasicTextSRStorage, **kwargs))


@pytest.fixture(scope="module")
def patient(runtime: Runtime) -> Patient:
    """Given a new patient with a CT+SR study and an older CT study, stored by the uploader."""
    tag = _letters(8)
    stored = Patient(
        patient_id=f"QIDO-E2E-{tag}",
        family=f"Qidofam{tag}",
        given=f"Marg{_letters(8)}",
        study=new_uid(),
        ct_series=new_uid(),
        ct_sops=(new_uid(), new_uid()),
        sr_series=new_uid(),
        sr_sop=new_uid(),
        prior_study=new_uid(),
    )
    common = {
        "PatientID": stored.patient_id,
        "PatientName": stored.name,
        "AccessionNumber": f"A{tag}",
    }
    study_common = {
        **common,
        "study": stored.study,
        "StudyDate": stored.study_date,
        "StudyDescription": stored.description,
        "SeriesDate": stored.study_date,
    }
    datasets = [
        make_dataset(
            series=stored.ct_series,
            sop=sop,
            modality="CT",
            sop_class=CTImageStorage,
            SeriesNumber=1,
            InstanceNumber=number,
            SeriesTime="101500",
            **study_common,
        )
        for number, sop in enumerate(stored.ct_sops, start=1)
    ]
    datasets.append(
        _sr_dataset(
            series=stored.sr_series,
            sop=stored.sr_sop,
            SeriesNumber=2,
            InstanceNumber=1,
            SeriesTime="103000",
            **study_common,
        )
    )
    datasets.append(make_dataset(study=stored.prior_study, StudyDate=stored.prior_date, **common))
    for ds in datasets:
        ds.preamble = bytes(128)  # dicomweb-client writes what dcmwrite gives: Part 10 needs a preamble
    uploader = DICOMwebClient(
        url=runtime.base_url,
        headers={"Authorization": f"Bearer {runtime.tokens['uploader']}"},
        timeout=TIMEOUT_S,
    )
    response = uploader.store_instances(datasets)
    assert FAILED_SOP_SEQUENCE not in {f"{e.tag:08X}" for e in response}, response
    assert len(response.ReferencedSOPSequence) == len(datasets), response
    # the aggregates follow the stores within seconds (AggregatesFunction, from the stream)
    assert runtime.wait_for_counts(stored.study, (3, 2)) == (3, 2)
    assert runtime.wait_for_counts(stored.prior_study, (1, 1)) == (1, 1)
    return stored


@pytest.fixture(scope="module")
def viewer(runtime: Runtime) -> DICOMwebClient:
    return DICOMwebClient(
        url=runtime.base_url,
        headers={"Authorization": f"Bearer {runtime.tokens['viewer']}"},
        timeout=TIMEOUT_S,
    )


def qido(
    runtime: Runtime, path: str, *, role: str | None = "viewer", accept: str | None = DICOM_JSON
) -> requests.Response:
    """GET ``{base_url}{path}`` (path carries its own query string, sent exactly as written)."""
    headers = runtime.auth(role) if role else {}
    if accept is not None:
        headers["Accept"] = accept
    return requests.get(f"{runtime.base_url}{path}", headers=headers, timeout=TIMEOUT_S)


def _uids(results: Sequence[dict[str, Any]], tag: str) -> list[str]:
    return [_value(r, tag) for r in results]


def _warnings(response: requests.Response) -> str:
    return response.headers.get("Warning", "")


def _assert_json_error(response: requests.Response, status: HTTPStatus) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    payload = response.json()
    assert isinstance(payload.get("message"), str), payload
    assert payload["message"], payload


# ------------------------------------------------------------------ dicomweb-client searches


def test_search_for_studies_by_patient_id(viewer: DICOMwebClient, patient: Patient, runtime: Runtime) -> None:
    # Given the patient's two studies
    # When the viewer searches studies by PatientID
    results = viewer.search_for_studies(search_filters={"PatientID": patient.patient_id})
    # Then exactly those two come back, newest first, with the patient's attributes
    assert _uids(results, STUDY_INSTANCE_UID) == [patient.study, patient.prior_study]
    for result in results:
        assert _value(result, PATIENT_ID) == patient.patient_id
        assert _value(result, PATIENT_NAME) == {"Alphabetic": patient.name}
    assert _value(results[0], STUDY_DATE) == patient.study_date
    assert _value(results[0], STUDY_DESCRIPTION) == patient.description
    # And the study level carries the aggregates and an absolute RetrieveURL
    main = results[0]
    assert _values(main, MODALITIES_IN_STUDY) == ["CT", "SR"]
    assert _value(main, NUMBER_OF_STUDY_RELATED_SERIES) == 2
    assert _value(main, NUMBER_OF_STUDY_RELATED_INSTANCES) == 3
    assert main[RETRIEVE_URL]["vr"] == "UR"
    assert _value(main, RETRIEVE_URL) == f"{runtime.base_url}/studies/{patient.study}"
    prior = results[1]
    assert _values(prior, MODALITIES_IN_STUDY) == ["CT"]
    assert _value(prior, NUMBER_OF_STUDY_RELATED_SERIES) == 1
    assert _value(prior, NUMBER_OF_STUDY_RELATED_INSTANCES) == 1


def test_search_for_series_in_study(viewer: DICOMwebClient, patient: Patient, runtime: Runtime) -> None:
    # Given the CT+SR study
    # When the viewer searches its series
    results = viewer.search_for_series(study_instance_uid=patient.study)
    # Then both series come back in SeriesNumber order with their instance counts and URLs
    assert _uids(results, SERIES_INSTANCE_UID) == [patient.ct_series, patient.sr_series]
    assert [_value(r, MODALITY) for r in results] == ["CT", "SR"]
    assert [_value(r, NUMBER_OF_SERIES_RELATED_INSTANCES) for r in results] == [2, 1]
    for result in results:
        assert _value(result, STUDY_INSTANCE_UID) == patient.study
        assert _value(result, PATIENT_ID) == patient.patient_id  # study attributes are merged in
        series = _value(result, SERIES_INSTANCE_UID)
        assert _value(result, RETRIEVE_URL) == f"{runtime.base_url}/studies/{patient.study}/series/{series}"


def test_search_for_series_by_modality(viewer: DICOMwebClient, patient: Patient) -> None:
    # Given the patient's SR series, the only SR series the patient has
    # When the viewer searches all series with Modality=SR and the PatientID
    narrowed = viewer.search_for_series(search_filters={"Modality": "SR", "PatientID": patient.patient_id})
    # Then only the SR series comes back
    assert _uids(narrowed, SERIES_INSTANCE_UID) == [patient.sr_series]
    assert _value(narrowed[0], NUMBER_OF_SERIES_RELATED_INSTANCES) == 1
    # When the viewer searches all series with Modality=SR alone
    everything = viewer.search_for_series(search_filters={"Modality": "SR"})
    # Then the SR series is among them and every result is an SR series
    assert patient.sr_series in _uids(everything, SERIES_INSTANCE_UID)
    assert {_value(r, MODALITY) for r in everything} == {"SR"}


def test_search_for_instances_in_series(viewer: DICOMwebClient, patient: Patient, runtime: Runtime) -> None:
    # Given the CT series with two instances
    # When the viewer searches the series' instances
    results = viewer.search_for_instances(patient.study, patient.ct_series)
    # Then both come back in InstanceNumber order, each with its instance RetrieveURL
    assert _uids(results, SOP_INSTANCE_UID) == list(patient.ct_sops)
    for result, sop in zip(results, patient.ct_sops, strict=True):
        assert _value(result, SERIES_INSTANCE_UID) == patient.ct_series
        assert _value(result, PATIENT_ID) == patient.patient_id
        assert _value(result, RETRIEVE_URL) == instance_url(
            runtime.base_url, patient.study, patient.ct_series, sop
        )


def test_search_for_instances_in_study(viewer: DICOMwebClient, patient: Patient) -> None:
    # Given the CT+SR study with three instances
    # When the viewer searches the study's instances
    results = viewer.search_for_instances(patient.study)
    # Then all three come back, series by series
    assert _uids(results, SOP_INSTANCE_UID) == [*patient.ct_sops, patient.sr_sop]
    assert [_value(r, MODALITY) for r in results] == ["CT", "CT", "SR"]


def test_fuzzy_matching_on_partial_given_name(viewer: DICOMwebClient, patient: Patient) -> None:
    # Given a patient whose given name is unique to this run
    partial = patient.given[:7].lower()
    # When the viewer searches studies with fuzzy matching on the start of the given name
    results = viewer.search_for_studies(fuzzymatching=True, search_filters={"PatientName": partial})
    # Then both of the patient's studies match
    assert sorted(_uids(results, STUDY_INSTANCE_UID)) == sorted([patient.study, patient.prior_study])
    # And without fuzzy matching the same partial name matches nothing
    assert viewer.search_for_studies(search_filters={"PatientName": partial}) == []


# ------------------------------------------------------------------ paging and empty results


def test_limit_and_offset_page_with_warning(runtime: Runtime, patient: Patient) -> None:
    # Given the patient's two studies
    path = f"/studies?PatientID={patient.patient_id}"
    # When the first page of one is requested
    first = qido(runtime, f"{path}&limit=1&offset=0")
    # Then it holds the newest study, and a 299 Warning says more results remain
    assert first.status_code == HTTPStatus.OK, first.text
    assert _uids(first.json(), STUDY_INSTANCE_UID) == [patient.study]
    assert _warnings(first).startswith("299 "), first.headers
    # When the second page is requested
    second = qido(runtime, f"{path}&limit=1&offset=1")
    # Then it holds the other study and no Warning, since nothing remains
    assert second.status_code == HTTPStatus.OK, second.text
    assert _uids(second.json(), STUDY_INSTANCE_UID) == [patient.prior_study]
    assert "Warning" not in second.headers, second.headers
    # When the offset is past the end
    past = qido(runtime, f"{path}&limit=1&offset=2")
    # Then the answer is an empty page: 200 with []
    assert past.status_code == HTTPStatus.OK, past.text
    assert past.json() == []


def test_instance_paging_covers_the_study_once(runtime: Runtime, patient: Patient) -> None:
    # Given the study's three instances
    pages = []
    # When they are paged two at a time
    for offset in (0, 2):
        response = qido(runtime, f"/studies/{patient.study}/instances?limit=2&offset={offset}")
        assert response.status_code == HTTPStatus.OK, response.text
        pages.append(response)
    # Then the pages concatenate to the unpaged order, and only the first page warns
    assert _uids(pages[0].json() + pages[1].json(), SOP_INSTANCE_UID) == [*patient.ct_sops, patient.sr_sop]
    assert _warnings(pages[0]).startswith("299 ")
    assert "Warning" not in pages[1].headers


def test_no_match_is_200_with_an_empty_result(runtime: Runtime) -> None:
    # Given a PatientID nobody has
    nobody = f"NOBODY-{_letters(12)}"
    # When studies are searched for it, as JSON and as XML
    as_json = qido(runtime, f"/studies?PatientID={nobody}")
    as_xml = qido(
        runtime, f"/studies?PatientID={nobody}", accept='multipart/related; type="application/dicom+xml"'
    )
    # Then each is 200 with an empty result (CP-2473): [] in JSON, no payload in XML
    assert as_json.status_code == HTTPStatus.OK, as_json.text
    assert as_json.headers["Content-Type"].startswith("application/dicom+json")
    assert as_json.json() == []
    assert as_xml.status_code == HTTPStatus.OK, as_xml.text
    assert as_xml.headers["Content-Type"].startswith("multipart/related")
    assert as_xml.content == b""


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("query", ["Foo=bar", "StudyDate=2024"], ids=["unknown-key", "short-date"])
def test_invalid_query_is_400_with_message(runtime: Runtime, query: str) -> None:
    # Given a query with an unknown key or a malformed date
    # When studies are searched with it
    response = qido(runtime, f"/studies?{query}")
    # Then the answer is 400 with a JSON message
    _assert_json_error(response, HTTPStatus.BAD_REQUEST)


def test_all_instances_without_a_key_is_413(runtime: Runtime) -> None:
    # Given no key at all
    # When every instance of the server is searched
    response = qido(runtime, "/instances")
    # Then the search is refused as too broad, with a JSON message
    _assert_json_error(response, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


def test_unacceptable_media_type_is_406(runtime: Runtime, patient: Patient) -> None:
    # Given a client that only accepts PNG
    # When it searches studies
    response = qido(runtime, f"/studies?PatientID={patient.patient_id}", accept="image/png")
    # Then the answer is 406 Not Acceptable
    _assert_json_error(response, HTTPStatus.NOT_ACCEPTABLE)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("application%2Fdicom%2Bjson", DICOM_JSON),
        ("multipart%2Frelated%3B%20type%3D%22application%2Fdicom%2Bxml%22", "multipart/related"),
    ],
    ids=["json", "xml"],
)
def test_accept_query_parameter(runtime: Runtime, patient: Patient, accept: str, content_type: str) -> None:
    # Given a browser link that cannot set headers, so names its media type with ?accept= (PS3.18 §8.3.3.1)
    # When studies are searched with it
    response = qido(runtime, f"/studies?PatientID={patient.patient_id}&accept={accept}", accept=None)
    # Then the parameter chooses the response's media type instead of failing as an unknown key
    assert response.status_code == HTTPStatus.OK, response.text
    assert response.headers["Content-Type"].startswith(content_type), response.headers


def test_uploader_token_is_403(runtime: Runtime, patient: Patient) -> None:
    # Given the uploader's token, which lacks dicomweb/read
    # When it searches studies
    response = qido(runtime, f"/studies?PatientID={patient.patient_id}", role="uploader")
    # Then the authorizer refuses it
    assert response.status_code == HTTPStatus.FORBIDDEN, response.text


def test_no_token_is_401(runtime: Runtime, patient: Patient) -> None:
    # Given no Authorization header
    # When studies are searched
    response = qido(runtime, f"/studies?PatientID={patient.patient_id}", role=None)
    # Then the answer is 401
    assert response.status_code == HTTPStatus.UNAUTHORIZED, response.text


# ------------------------------------------------------------------ DICOM XML


def _multipart_parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response (RFC 2046)."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    assert message.is_multipart(), response.headers
    return [(part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()]


def test_xml_multipart_response(runtime: Runtime, patient: Patient) -> None:
    # Given the patient's two studies
    # When studies are searched accepting multipart DICOM XML
    response = qido(runtime, f"/studies?PatientID={patient.patient_id}", accept=XML_ACCEPT)
    # Then the answer is multipart/related of application/dicom+xml, one part per study
    assert response.status_code == HTTPStatus.OK, response.text
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/related"), content_type
    assert "application/dicom+xml" in content_type, content_type
    parts = _multipart_parts(response)
    assert len(parts) == 2
    studies = []
    for part_type, body in parts:
        assert part_type == "application/dicom+xml"
        # And each part is a Native DICOM Model document with the patient's ID
        root = ET.fromstring(body)
        assert root.tag in ("NativeDicomModel", f"{{{NATIVE_DICOM}}}NativeDicomModel"), root.tag
        by_keyword = {a.get("keyword"): a for a in root.iter() if a.tag.endswith("DicomAttribute")}
        patient_id = by_keyword["PatientID"]
        assert patient_id.get("tag") == PATIENT_ID
        assert [v.text for v in patient_id if v.tag.endswith("Value")] == [patient.patient_id]
        studies += [v.text for v in by_keyword["StudyInstanceUID"] if v.tag.endswith("Value")]
    assert studies == [patient.study, patient.prior_study]


# ------------------------------------------------------------------ OHIF's requests


def test_ohif_study_list_by_patient_name(runtime: Runtime, patient: Patient) -> None:
    # Given the patient's family name, unique to this run
    part = patient.family[3:-2]
    # When OHIF's study list searches with a contains-wildcard on PatientName
    response = qido(
        runtime,
        "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
        f"&PatientName=*{part}*",
    )
    # Then both studies come back with the included StudyDescription and the aggregates
    # (a name-driven search orders by name, then UID: docs/conformance.md)
    assert response.status_code == HTTPStatus.OK, response.text
    results = {_uids([r], STUDY_INSTANCE_UID)[0]: r for r in response.json()}
    assert set(results) == {patient.study, patient.prior_study}
    assert _value(results[patient.study], STUDY_DESCRIPTION) == patient.description
    assert _values(results[patient.study], MODALITIES_IN_STUDY) == ["CT", "SR"]
    assert "Warning" not in response.headers


def test_ohif_study_list_by_date_range(runtime: Runtime, patient: Patient) -> None:
    # Given the CT+SR study of 1993-04-17 and the prior of 1989
    # When OHIF's study list searches a date range around the newer one
    response = qido(
        runtime,
        "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
        "&StudyDate=19930410-19930420",
    )
    # Then the newer study is listed, the prior is not, and every study is in the range
    assert response.status_code == HTTPStatus.OK, response.text
    results = response.json()
    uids = _uids(results, STUDY_INSTANCE_UID)
    assert patient.study in uids
    assert patient.prior_study not in uids
    assert all("19930410" <= _value(r, STUDY_DATE) <= "19930420" for r in results)
    # When the same range is combined with the patient's name
    narrowed = qido(
        runtime,
        "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
        f"&PatientName=*{patient.family[3:-2]}*&StudyDate=19930410-19930420",
    )
    # Then exactly the newer study is listed
    assert narrowed.status_code == HTTPStatus.OK, narrowed.text
    assert _uids(narrowed.json(), STUDY_INSTANCE_UID) == [patient.study]


def test_ohif_series_request(runtime: Runtime, patient: Patient) -> None:
    # Given the CT+SR study whose series have SeriesDate and SeriesTime
    # When OHIF asks for its series with those fields included
    response = qido(runtime, f"/studies/{patient.study}/series?includefield=00080021%2C00080031")
    # Then both series come back with SeriesDate, SeriesTime and their counts
    assert response.status_code == HTTPStatus.OK, response.text
    assert response.headers["Content-Type"].startswith(DICOM_JSON)
    results = response.json()
    assert _uids(results, SERIES_INSTANCE_UID) == [patient.ct_series, patient.sr_series]
    assert [_value(r, SERIES_DATE) for r in results] == [patient.study_date] * 2
    assert [_value(r, SERIES_TIME) for r in results] == ["101500", "103000"]
    assert [_value(r, NUMBER_OF_SERIES_RELATED_INSTANCES) for r in results] == [2, 1]
