"""De-identification end to end: STOW-RS → bus → DeidQueue → DeidentifyFunction → /deid, over HTTP.

A PHI-rich study is stored by the uploader; the researcher (scope dicomweb/deid.read)
finds its de-identified copy under /deid with the pseudonymous PatientID the research
key derives, and nothing identifying comes back. The key is read from the runtime's
Secrets Manager exactly as the function reads it. Values are random per run, because the
session's runtime is shared with the other end-to-end tests.
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import boto3
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from dicomweb_core.hooks.deid.profile import Deidentifier, Options
from infra.datasets.generate import make_dataset, new_uid, to_part10
from tests.e2e.conftest import REGION, Runtime
from tests.e2e.helpers import TIMEOUT_S, referenced, stow

pytestmark = pytest.mark.e2e

DEID_TIMEOUT_S = 30.0  # about 1 s on an idle machine; CI runs on 2 busy cores
DLQ_TIMEOUT_S = 60.0  # 5 receives, 2 s apart (infra/local/queues.py), plus the invocations
DICOM_JSON = "application/dicom+json"
PATIENT_ID = "00100020"
PATIENT_NAME = "00100010"
PATIENT_IDENTITY_REMOVED = "00120062"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


@dataclass(frozen=True)
class Original:
    """What the uploader stored: one patient's study with a CT and an MR series."""

    patient_id: str
    patient_name: str
    accession: str
    institution: str
    physician: str
    study: str
    datasets: tuple[Dataset, ...]

    def phi(self) -> list[str]:
        """Strings that must never come back from the research store."""
        uids = [u for ds in self.datasets for u in (ds.SeriesInstanceUID, ds.SOPInstanceUID)]
        return [
            self.patient_id,
            self.patient_name,
            self.patient_name.split("^")[0],
            self.accession,
            self.institution,
            self.physician,
            self.study,
            *uids,
            "19650707",  # PatientBirthDate
            "20230304",  # StudyDate
        ]


@dataclass(frozen=True)
class Research:
    """The de-identified copy as the researcher finds it."""

    pseudonym: str
    study: str
    found: dict[str, Any]  # the QIDO-RS study result


def aws(runtime: Runtime, service: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=runtime.info["moto_endpoint_url"],
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def get(runtime: Runtime, path: str, *, role: str, accept: str = DICOM_JSON) -> requests.Response:
    headers = {**runtime.auth(role), "Accept": accept}
    return requests.get(f"{runtime.base_url}{path}", headers=headers, timeout=TIMEOUT_S)


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def poll(check: Callable[[], Any], *, timeout: float, interval: float = 0.5) -> Any:
    """``check()`` until it returns something truthy or the time is up (then its last result)."""
    deadline = time.monotonic() + timeout
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = check()
    return result


def assert_no_phi(data: bytes, original: Original, where: str) -> None:
    text = data.decode("latin-1")
    for value in original.phi():
        assert value not in text, f"{value!r} came back from {where}"


def dicom_parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related response, parsed by the standard library."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    assert message.is_multipart()
    return [bytes(part.get_payload(decode=True)) for part in message.iter_parts()]


@pytest.fixture(scope="module")
def original(runtime: Runtime) -> Original:
    """Given a PHI-rich study (CT + MR, not text-prone) stored through STOW-RS by the uploader."""
    tag = secrets.token_hex(6).upper()
    patient_id, patient_name = f"DEID-PID-{tag}", f"Deidfam{tag}^Secretgiven"
    accession, institution, physician = f"ACC{tag}", f"Hospital {tag}", f"Referrer{tag}^Doc"
    study = new_uid()
    datasets = []
    for modality in ("CT", "MR"):
        ds = make_dataset(
            study=study,
            modality=modality,
            PatientID=patient_id,
            PatientName=patient_name,
            AccessionNumber=accession,
            InstitutionName=institution,
            ReferringPhysicianName=physician,
            PatientBirthDate="19650707",
            StudyDate="20230304",
            StudyDescription=f"Study of {patient_name}",
        )
        ds.add_new(0x00091010, "LO", f"private {patient_id}")
        reference = Dataset()
        reference.ReferencedSOPClassUID = CTImageStorage
        reference.ReferencedSOPInstanceUID = new_uid()
        reference.AccessionNumber = accession
        ds.ReferencedStudySequence = [reference]
        datasets.append(ds)
    response = stow(runtime.base_url, [to_part10(ds) for ds in datasets], token=runtime.tokens["uploader"])
    assert response.status_code == HTTPStatus.OK, response.text
    assert len(referenced(response.json())) == 2
    return Original(patient_id, patient_name, accession, institution, physician, study, tuple(datasets))


@pytest.fixture(scope="module")
def research(runtime: Runtime, original: Original) -> Research:
    """When the researcher polls /deid/studies for the pseudonym the research key derives."""
    secret = aws(runtime, "secretsmanager").get_secret_value(SecretId=runtime.resources["DeidKeySecret"])
    deid = Deidentifier(secret["SecretString"].encode(), Options())
    pseudonym = deid.pseudonym(f"{original.patient_id}\0{original.patient_name}")

    def both_instances() -> dict[str, Any] | None:
        response = get(runtime, f"/deid/studies?PatientID={pseudonym}", role="researcher")
        if response.status_code != HTTPStatus.OK or not response.json():  # not there yet
            return None
        (study,) = response.json()
        return study if _value(study, NUMBER_OF_STUDY_RELATED_INSTANCES) == 2 else None

    found = poll(both_instances, timeout=DEID_TIMEOUT_S)
    assert found, (
        f"the de-identified study did not appear under /deid within {DEID_TIMEOUT_S:.0f} s:\n"
        f"{runtime.log_tail()}"
    )
    return Research(pseudonym, deid.uid(original.study), found)


def test_researcher_finds_the_copy_under_the_pseudonym(original: Original, research: Research) -> None:
    # Then the study is found under the pseudonym, with a new UID and no original identity
    assert _value(research.found, PATIENT_ID) == research.pseudonym
    assert _value(research.found, STUDY_INSTANCE_UID) == research.study != original.study
    assert _value(research.found, NUMBER_OF_STUDY_RELATED_INSTANCES) == 2
    assert_no_phi(json.dumps(research.found).encode(), original, "QIDO-RS /deid/studies")


def test_metadata_and_instance_carry_no_phi(runtime: Runtime, original: Original, research: Research) -> None:
    # When the researcher retrieves the study's metadata under /deid
    response = get(runtime, f"/deid/studies/{research.study}/metadata", role="researcher")
    # Then both instances come back, de-identified, without any original value
    assert response.status_code == HTTPStatus.OK, response.text
    assert_no_phi(response.content, original, "WADO-RS /deid metadata")
    instances = response.json()
    assert len(instances) == 2
    for item in instances:
        assert _value(item, PATIENT_ID) == research.pseudonym
        assert _value(item, PATIENT_IDENTITY_REMOVED) == "YES"
        assert _value(item, STUDY_INSTANCE_UID) == research.study
    # When one instance is retrieved as Part 10
    item = instances[0]
    path = (
        f"/deid/studies/{research.study}/series/{_value(item, SERIES_INSTANCE_UID)}"
        f"/instances/{_value(item, SOP_INSTANCE_UID)}"
    )
    retrieved = get(runtime, path, role="researcher", accept='multipart/related; type="application/dicom"')
    # Then the whole response body holds no PHI and the instance says its identity is removed
    assert retrieved.status_code == HTTPStatus.OK, retrieved.text
    assert_no_phi(retrieved.content, original, "WADO-RS /deid instance")
    (part,) = dicom_parts(retrieved)
    ds = pydicom.dcmread(io.BytesIO(part))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.PatientID == research.pseudonym
    assert ds.SOPInstanceUID == _value(item, SOP_INSTANCE_UID)


def test_scopes_keep_the_roots_apart(runtime: Runtime, research: Research) -> None:
    # Given the researcher (deid.read only) and the viewer (read only)
    # When each asks for the other's root
    researcher_primary = get(runtime, "/studies", role="researcher")
    viewer_research = get(runtime, "/deid/studies", role="viewer")
    # Then both are refused by the API's scope check
    assert researcher_primary.status_code == HTTPStatus.FORBIDDEN, researcher_primary.text
    assert viewer_research.status_code == HTTPStatus.FORBIDDEN, viewer_research.text
    # And the researcher's own root answers
    assert get(runtime, "/deid/studies", role="researcher").status_code == HTTPStatus.OK


def test_original_study_uid_is_not_in_the_research_store(
    runtime: Runtime, original: Original, research: Research
) -> None:
    # Given the copy is stored (research fixture); When the original UID is searched under /deid
    response = get(runtime, f"/deid/studies?StudyInstanceUID={original.study}", role="researcher")
    # Then nothing matches (200 with an empty result, CP-2473)
    assert response.status_code == HTTPStatus.OK, response.text
    assert response.json() == []


def test_malformed_event_is_dead_lettered(runtime: Runtime) -> None:
    # Given an InstanceStored-shaped message without the s3Key the pipeline needs
    sqs = aws(runtime, "sqs")
    queue, dlq = runtime.resources["DeidQueue"], runtime.resources["DeidDeadLetterQueue"]
    marker = f"malformed-{secrets.token_hex(8)}"
    body = {
        "version": "0",
        "id": marker,
        "detail-type": "InstanceStored",
        "source": "dicomweb",
        "account": "123456789012",
        "detail": {"sopInstanceUID": new_uid(), "modality": "CT", "marker": marker},
    }
    # When it is sent straight to DeidQueue (the function fails it on every receive)
    started = time.monotonic()
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))

    def dead_lettered() -> dict[str, Any] | None:
        messages = sqs.receive_message(
            QueueUrl=dlq,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=1,
            AttributeNames=["All"],
        ).get("Messages", [])
        mine = [m for m in messages if marker in m["Body"]]
        for message in mine:
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
        return mine[0] if mine else None

    message = poll(dead_lettered, timeout=DLQ_TIMEOUT_S, interval=0)
    # Then after maxReceiveCount (5) failed receives it is in DeidDeadLetterQueue, unchanged
    assert message, (
        f"not dead-lettered within {DLQ_TIMEOUT_S:.0f} s "
        f"(DeidQueue: {sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=['All'])['Attributes']}):\n"
        f"{runtime.log_tail()}"
    )
    assert json.loads(message["Body"]) == body
    assert int(message["Attributes"]["ApproximateReceiveCount"]) >= 5
    assert time.monotonic() - started >= 4  # retried, 2 s apart, not dead-lettered at once


def _post(runtime: Runtime, path: str, *, role: str | None) -> requests.Response:
    headers = runtime.auth(role) if role else {}
    return requests.post(f"{runtime.base_url}{path}", headers=headers, timeout=TIMEOUT_S)


def test_admin_requests_a_study_deidentification_on_demand(
    runtime: Runtime, original: Original, research: Research
) -> None:
    # Given a stored study, When the admin asks for its de-identification
    response = _post(runtime, f"/admin/deidentify/studies/{original.study}", role="admin")
    # Then it is accepted for asynchronous work, one request per instance
    assert response.status_code == HTTPStatus.ACCEPTED, response.text
    assert response.json() == {"study": original.study, "instancesQueued": 2, "status": "accepted"}
    # And the copy is (still) found by the researcher: a replay stores nothing twice
    time.sleep(2)  # the queued requests run, and store nothing new
    listed = get(runtime, f"/deid/studies?PatientID={research.pseudonym}", role="researcher")
    assert listed.status_code == HTTPStatus.OK
    assert _value(listed.json()[0], "00201208") == 2


@pytest.mark.parametrize(
    ("role", "status"), [("uploader", 403), ("viewer", 403), ("researcher", 403), (None, 401)]
)
def test_only_the_admin_may_request_deidentification(
    runtime: Runtime, original: Original, role: str | None, status: int
) -> None:
    assert _post(runtime, f"/admin/deidentify/studies/{original.study}", role=role).status_code == status


def test_unknown_and_malformed_studies_are_refused(runtime: Runtime) -> None:
    assert _post(runtime, f"/admin/deidentify/studies/{new_uid()}", role="admin").status_code == 404
    assert _post(runtime, "/admin/deidentify/studies/1.2.03", role="admin").status_code == 400
