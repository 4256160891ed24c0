"""The audit trail end to end: every route of template.yaml, allowed and denied, leaves a record.

Records land in ``$LOCAL_DIR/audit.jsonl`` (PS3.15 A.5 shaped). Requests a function
served are recorded by the function; requests refused before any function ran (no or bad
token, missing scope) are recorded by the gateway, as the API's access log does in the
cloud. The route list comes from template.yaml.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.samtemplate import Route, load_template
from tests.e2e.conftest import Runtime
from tests.e2e.helpers import TIMEOUT_S, stow

pytestmark = pytest.mark.e2e

# The local role whose token carries each scope (its client's AllowedOAuthScopes).
ROLE_FOR_SCOPE = {
    "dicomweb/read": "viewer",
    "dicomweb/write": "uploader",
    "dicomweb/delete": "admin",
    "dicomweb/admin": "admin",
    "dicomweb/deid.read": "researcher",
}
# A role that lacks the scope (for the 403 case).
OTHER_ROLE = {"viewer": "researcher", "uploader": "viewer", "admin": "researcher", "researcher": "viewer"}
EXPECTED_EVENT = {  # (EventID code, EventActionCode) per kind of route
    "store": ("110104", "C"),
    "query": ("110112", "E"),
    "metadata": ("110103", "R"),
    "retrieve": ("110104", "R"),
    "admin": ("110106", "E"),
    "delete": ("110105", "D"),
}


class AuditLog:
    def __init__(self, runtime: Runtime) -> None:
        self.path = runtime.local_dir / "audit.jsonl"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new_records(self, *, requests_only: bool = True) -> list[dict[str, Any]]:
        """Records written since the last call: those of API requests (hooks write others)."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        records = [json.loads(line) for line in data.decode().splitlines() if line]
        return [r for r in records if "Route" in r or not requests_only]


@pytest.fixture(scope="module")
def study(runtime: Runtime) -> Iterator[dict[str, str]]:
    """One stored instance whose UIDs fill the routes' path parameters."""
    ds = make_dataset(PatientID="AUDIT-PID-7", PatientName="Audit^Patient")
    response = stow(runtime.base_url, [to_part10(ds)], token=runtime.tokens["uploader"])
    assert response.status_code == 200, response.text
    yield {
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "instance": ds.SOPInstanceUID,
        "frames": "1",
        "path": "00100010",
    }


def _kind(route: Route) -> str:
    if route.path.startswith("/admin/"):
        return "admin"
    if route.method == "POST":
        return "store"
    if route.method == "DELETE":
        return "delete"
    last = route.path.rstrip("/").rsplit("/", 1)[-1]
    if last in {"studies", "series", "instances"}:
        return "query"
    return "metadata" if last == "metadata" else "retrieve"


def _url(runtime: Runtime, route: Route, values: dict[str, str]) -> str:
    path = route.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value).replace("{" + name + "+}", value)
    return runtime.base_url + path


def _send(route: Route, url: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if route.method == "POST" and not route.path.startswith("/admin/"):
        headers["Content-Type"] = 'multipart/related; type="application/dicom"; boundary=x'
        return requests.post(url, data=b"--x--\r\n", headers=headers, timeout=TIMEOUT_S)
    return requests.request(route.method, url, headers=headers, timeout=TIMEOUT_S)


ROUTES = load_template().routes()


@pytest.mark.parametrize("route", ROUTES, ids=[r.route_key for r in ROUTES])
def test_every_route_is_audited_when_allowed_and_when_denied(
    runtime: Runtime, study: dict[str, str], route: Route
) -> None:
    if route.method == "DELETE":  # a study of its own, so the shared one stays for the other routes
        ds = make_dataset(PatientID="AUDIT-PID-7")
        assert stow(runtime.base_url, [to_part10(ds)], token=runtime.tokens["uploader"]).status_code == 200
        study = {**study, "study": ds.StudyInstanceUID}
    log = AuditLog(runtime)
    url = _url(runtime, route, study)
    role = ROLE_FOR_SCOPE[route.scopes[0]]
    code, action = EXPECTED_EVENT[_kind(route)]

    # Allowed: the function records the request with the route, the requestor and the objects
    response = _send(route, url, runtime.tokens[role])
    assert response.status_code < 500, response.text
    (allowed,) = log.new_records()
    assert allowed["Route"] == route.route_key
    assert allowed["EventIdentification"]["EventID"]["csd-code"] == code
    assert allowed["EventIdentification"]["EventActionCode"] == action
    assert allowed["EventIdentification"]["EventOutcomeIndicator"] == (0 if response.ok else 4)
    requestor = allowed["ActiveParticipant"][0]
    assert requestor["UserIsRequestor"] is True
    assert requestor["UserID"] == requestor["AlternativeUserID"]  # client credentials: sub = client id
    assert requestor["NetworkAccessPointID"] == "127.0.0.1"
    objects = {
        o["ParticipantObjectIDTypeCode"]["csd-code"]: o for o in allowed["ParticipantObjectIdentification"]
    }
    if "{study}" in route.path:
        assert objects["110180"]["ParticipantObjectID"] == study["study"]
        primary = not route.path.startswith("/deid/")
        # The patient ID is named for the primary store only
        assert ("2" in objects) is primary
        if primary and not route.path.startswith("/admin/") and route.method != "POST":
            assert objects["2"]["ParticipantObjectID"] == "AUDIT-PID-7"

    # Denied without a token: the gateway records a failed authentication
    assert _send(route, url, None).status_code == 401
    (unauthenticated,) = log.new_records()
    assert unauthenticated["EventIdentification"]["EventID"]["csd-code"] == "110114"
    assert unauthenticated["EventIdentification"]["EventOutcomeIndicator"] == 4
    assert unauthenticated["ActiveParticipant"][0]["UserID"] == "anonymous"
    assert unauthenticated["Route"] == route.route_key

    # Denied for a missing scope: a security alert naming who tried
    other = OTHER_ROLE[role]
    assert _send(route, url, runtime.tokens[other]).status_code == 403
    (forbidden,) = log.new_records()
    assert forbidden["EventIdentification"]["EventID"]["csd-code"] == "110113"
    assert forbidden["EventIdentification"]["EventTypeCode"][0]["csd-code"] == "110132"
    assert forbidden["ActiveParticipant"][0]["UserID"] != "anonymous"


def test_a_store_names_the_stored_study_and_its_patient(runtime: Runtime) -> None:
    log = AuditLog(runtime)
    ds = make_dataset(PatientID="AUDIT-PID-8")
    assert stow(runtime.base_url, [to_part10(ds)], token=runtime.tokens["uploader"]).status_code == 200
    (record,) = log.new_records()
    ids = {o["ParticipantObjectID"] for o in record["ParticipantObjectIdentification"]}
    assert {ds.StudyInstanceUID, "AUDIT-PID-8"} <= ids


def test_de_identification_of_a_stored_instance_is_audited_as_an_export(runtime: Runtime) -> None:
    log = AuditLog(runtime)
    ds = make_dataset(PatientID="AUDIT-PID-9")
    assert stow(runtime.base_url, [to_part10(ds)], token=runtime.tokens["uploader"]).status_code == 200
    deadline = time.monotonic() + 60
    exports: list[dict[str, Any]] = []
    while not exports and time.monotonic() < deadline:
        time.sleep(0.5)
        exports = [
            r
            for r in log.new_records(requests_only=False)
            if r["EventIdentification"]["EventID"]["csd-code"] == "110106"
            and ds.SOPInstanceUID in json.dumps(r["ParticipantObjectIdentification"])
        ]
    assert exports, "no Export record for the de-identification hook"
    (export,) = exports
    assert export["ActiveParticipant"][0]["UserIsRequestor"] is True  # the system acted on its own
    assert export["EventIdentification"]["EventOutcomeDescription"] == "de-identification: stored"


def test_an_unknown_route_is_audited_by_the_gateway(runtime: Runtime) -> None:
    log = AuditLog(runtime)
    assert requests.get(f"{runtime.base_url}/nowhere/{new_uid()}", timeout=TIMEOUT_S).status_code == 404
    (record,) = log.new_records()
    assert record["EventIdentification"]["EventOutcomeIndicator"] == 4


def test_audit_records_hold_no_tokens_pixels_or_names(runtime: Runtime, study: dict[str, str]) -> None:
    text = (runtime.local_dir / "audit.jsonl").read_text()
    for token in runtime.tokens.values():
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature
    assert "Audit^Patient" not in text and "Doe^Jane" not in text
    assert "Bearer" not in text
