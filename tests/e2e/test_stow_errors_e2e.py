"""STOW-RS refusals end to end, with raw HTTP: media types, framing, limits, per-instance failures,
duplicates, authorization, CORS and routing. Every instance here has fresh UIDs."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

import pytest
import requests
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from tests.e2e.conftest import Runtime
from tests.e2e.helpers import (
    API_LIMIT_BYTES,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    STUDY_UID_MISMATCH,
    TIMEOUT_S,
    Instance,
    all_failures,
    deflate_bomb,
    failed,
    instance_url,
    make_instance,
    multipart_related,
    nested_sequences,
    referenced,
    stow,
    zero_preamble,
)

pytestmark = pytest.mark.e2e

VIEWER_ORIGIN = "http://localhost:3000"


def post(
    runtime: Runtime, body: bytes, content_type: str, *, role: str | None = "uploader"
) -> requests.Response:
    headers = {"Content-Type": content_type, **(runtime.auth(role) if role else {})}
    return requests.post(f"{runtime.base_url}/studies", data=body, headers=headers, timeout=TIMEOUT_S)


def assert_not_stored(runtime: Runtime, instance: Instance) -> None:
    assert runtime.indexed_instance(instance.sop) is None
    assert runtime.study_counts(instance.study) is None
    assert runtime.current_objects(instance.prefix) == []


def assert_stored(runtime: Runtime, instance: Instance) -> None:
    assert runtime.indexed_instance(instance.sop) is not None
    assert runtime.instance_bytes(instance.sop) == zero_preamble(instance.data)


# ---------------------------------------------------------------- media types and framing


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain",
        'multipart/related; type="application/dicom+json"; boundary=e2e-boundary',
        "multipart/mixed; boundary=e2e-boundary",
    ],
)
def test_a_content_type_other_than_dicom_is_415(runtime: Runtime, content_type: str) -> None:
    # Given a valid instance framed as multipart but labelled with another media type
    instance = make_instance()
    body, _ = multipart_related([instance.data], boundary="e2e-boundary")
    # When it is posted
    response = post(runtime, body, content_type)
    # Then the media type is refused and nothing is stored
    assert response.status_code == HTTPStatus.UNSUPPORTED_MEDIA_TYPE, response.text
    assert_not_stored(runtime, instance)


def test_multipart_without_its_close_delimiter_is_400(runtime: Runtime) -> None:
    # Given a body whose last part is not followed by the close delimiter (truncated upload)
    instance = make_instance()
    body, content_type = multipart_related([instance.data], close=False)
    # When it is posted
    response = post(runtime, body, content_type)
    # Then it is a bad request and nothing is stored
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.text
    assert_not_stored(runtime, instance)


def test_multipart_without_parts_is_400(runtime: Runtime) -> None:
    # Given a body that is only the close delimiter
    body, content_type = multipart_related([])
    # When it is posted
    response = post(runtime, body, content_type)
    # Then it is a bad request
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.text


def test_ten_thousand_parts_are_413_and_nothing_is_stored(runtime: Runtime) -> None:
    # Given valid instances followed by tiny parts: 10,000 parts, far under the API's size limit
    valid = [make_instance(pixels=2) for _ in range(3)]
    body, content_type = multipart_related([i.data for i in valid] + [b"\0"] * (10_000 - len(valid)))
    assert len(body) < API_LIMIT_BYTES
    # When it is posted
    response = post(runtime, body, content_type)
    # Then the part count is refused before anything is stored
    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE, response.text
    for instance in valid:
        assert_not_stored(runtime, instance)


def test_a_body_over_10_mib_is_413(runtime: Runtime) -> None:
    # Given a body larger than the HTTP API payload limit (10 MiB)
    body = bytes(10 * 1024 * 1024 + 1)
    # When it is posted
    response = post(runtime, body, "application/dicom")
    # Then the API refuses it
    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE, response.text


# ---------------------------------------------------------------- per-instance failures


def test_a_truncated_instance_fails_alone_and_the_valid_one_is_stored(runtime: Runtime) -> None:
    # Given a truncated instance (pixel data cut short) and a valid one in one request
    whole = make_instance(pixels=4096)
    truncated = Instance(whole.data[:-1000], whole.study, whole.series, whole.sop)
    valid = make_instance()
    # When they are posted
    response = stow(runtime.base_url, [truncated.data, valid.data], token=runtime.tokens["uploader"])
    # Then the request is accepted in part (202)
    assert response.status_code == HTTPStatus.ACCEPTED, response.text
    payload = response.json()
    # And the truncated one is the single FailedSOPSequence item, "cannot understand" (0xC000)
    failures = failed(payload)
    assert [(f.sop_instance_uid, f.reason) for f in failures] == [(truncated.sop, CANNOT_UNDERSTAND)]
    assert CANNOT_UNDERSTAND == 49152
    # And the valid one is referenced and stored
    assert [(i.sop_instance_uid, i.retrieve_url) for i in referenced(payload)] == [
        (valid.sop, instance_url(runtime.base_url, valid.study, valid.series, valid.sop))
    ]
    assert_stored(runtime, valid)
    assert_not_stored(runtime, truncated)


def test_an_instance_of_another_study_than_the_url_is_409(runtime: Runtime) -> None:
    # Given an instance and the URL of another study
    instance = make_instance()
    other = make_instance().study
    # When it is posted to POST /studies/{other}
    response = stow(runtime.base_url, [instance.data], token=runtime.tokens["uploader"], study=other)
    # Then nothing is stored (409) and the failure is 0xC409
    assert response.status_code == HTTPStatus.CONFLICT, response.text
    assert [(f.sop_instance_uid, f.reason) for f in failed(response.json())] == [
        (instance.sop, STUDY_UID_MISMATCH)
    ]
    assert STUDY_UID_MISMATCH == 50185
    assert_not_stored(runtime, instance)


def _invalid_study_uid(ds: Dataset) -> None:
    ds["StudyInstanceUID"] = DataElement(0x0020000D, "UI", "1.2.840.e2e")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(lambda: make_instance(change=_invalid_study_uid), DATASET_DOES_NOT_MATCH, id="bad-uid"),
        pytest.param(lambda: deflate_bomb(260), OUT_OF_RESOURCES, id="deflate-bomb"),
        pytest.param(
            lambda: make_instance(change=nested_sequences(40)), CANNOT_UNDERSTAND, id="deep-nesting"
        ),
    ],
)
def test_a_hostile_or_invalid_instance_gets_a_failure_entry(
    runtime: Runtime, build: Callable[[], Instance], reason: int
) -> None:
    # Given an invalid instance next to a valid one
    bad: Instance = build()
    valid = make_instance()
    # When they are posted together
    response = stow(runtime.base_url, [bad.data, valid.data], token=runtime.tokens["uploader"])
    # Then the valid one is stored (202) and the bad one has one failure entry with its reason
    assert response.status_code == HTTPStatus.ACCEPTED, response.text
    payload = response.json()
    failures = all_failures(payload)
    assert [f.reason for f in failures] == [reason], payload
    assert failures[0].sop_instance_uid in (bad.sop, None)
    assert [i.sop_instance_uid for i in referenced(payload)] == [valid.sop]
    assert_stored(runtime, valid)
    assert runtime.indexed_instance(bad.sop) is None
    assert runtime.current_objects(bad.prefix) == []


# ---------------------------------------------------------------- duplicates


def test_an_identical_restore_is_200_and_counts_do_not_change(runtime: Runtime) -> None:
    # Given a stored instance
    instance = make_instance()
    first = stow(runtime.base_url, [instance.data], token=runtime.tokens["uploader"])
    assert first.status_code == HTTPStatus.OK, first.text
    assert runtime.study_counts(instance.study) == (1, 1)
    # When the same bytes are stored again
    again = stow(runtime.base_url, [instance.data], token=runtime.tokens["uploader"])
    # Then it succeeds with the same reference, and the study still counts one instance
    assert again.status_code == HTTPStatus.OK, again.text
    assert [i.sop_instance_uid for i in referenced(again.json())] == [instance.sop]
    assert runtime.study_counts(instance.study) == (1, 1)
    assert len(runtime.instance_versions(instance.prefix)) == 1


def test_other_bytes_under_a_stored_sop_instance_uid_are_409_and_the_original_is_kept(
    runtime: Runtime,
) -> None:
    # Given a stored instance
    original = make_instance()
    assert stow(runtime.base_url, [original.data], token=runtime.tokens["uploader"]).status_code == 200
    # When other content with the same UIDs is stored
    impostor = make_instance(study=original.study, series=original.series, sop=original.sop)
    assert impostor.data != original.data
    response = stow(runtime.base_url, [impostor.data], token=runtime.tokens["uploader"])
    # Then it is refused with 0x0111 and S3 still holds (only) the original bytes
    assert response.status_code == HTTPStatus.CONFLICT, response.text
    assert [(f.sop_instance_uid, f.reason) for f in failed(response.json())] == [
        (original.sop, DUPLICATE_SOP_INSTANCE)
    ]
    assert DUPLICATE_SOP_INSTANCE == 273
    assert runtime.instance_bytes(original.sop) == zero_preamble(original.data)
    assert len(runtime.instance_versions(original.prefix)) == 1
    assert runtime.study_counts(original.study) == (1, 1)


# ---------------------------------------------------------------- authorization


@pytest.mark.parametrize(
    ("role", "status"),
    [
        (None, HTTPStatus.UNAUTHORIZED),
        ("viewer", HTTPStatus.FORBIDDEN),
        ("researcher", HTTPStatus.FORBIDDEN),
    ],
)
def test_stow_needs_the_write_scope(runtime: Runtime, role: str | None, status: int) -> None:
    # Given a valid instance and a caller without the dicomweb/write scope
    instance = make_instance()
    token = runtime.tokens[role] if role else None
    # When it is posted
    response = stow(runtime.base_url, [instance.data], token=token)
    # Then the authorizer refuses it before the function runs
    assert response.status_code == status, response.text
    assert "www-authenticate" in response.headers
    assert_not_stored(runtime, instance)


# ---------------------------------------------------------------- CORS and routing


def test_cors_preflight_from_a_local_viewer_is_allowed(runtime: Runtime) -> None:
    # Given a browser viewer on http://localhost:3000 about to POST with a bearer token
    headers = {
        "Origin": VIEWER_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    # When it sends the preflight
    response = requests.options(f"{runtime.base_url}/studies", headers=headers, timeout=TIMEOUT_S)
    # Then it is allowed (204) for that origin, with the Authorization header
    assert response.status_code == HTTPStatus.NO_CONTENT, response.text
    assert response.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"].upper()


def test_cors_headers_are_on_an_unauthorized_response(runtime: Runtime) -> None:
    # Given a browser request without a token
    body, content_type = multipart_related([make_instance().data])
    headers = {"Origin": VIEWER_ORIGIN, "Content-Type": content_type}
    # When it is posted
    response = requests.post(f"{runtime.base_url}/studies", data=body, headers=headers, timeout=TIMEOUT_S)
    # Then the 401 still carries CORS headers, so the viewer can read it
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.headers.get("access-control-allow-origin") == VIEWER_ORIGIN


@pytest.mark.parametrize(("method", "path"), [("GET", "/no-such-route"), ("POST", "/studies/1.2.3/series")])
def test_an_unknown_route_is_404(runtime: Runtime, method: str, path: str) -> None:
    # Given a path no route of the template matches
    # When it is requested with a valid token
    response = requests.request(
        method, f"{runtime.base_url}{path}", headers=runtime.auth("admin"), timeout=TIMEOUT_S
    )
    # Then the API answers 404
    assert response.status_code == HTTPStatus.NOT_FOUND, response.text
