"""Upload sessions against moto: the API handler, the bucket's events, the ingest hook.

Uploads are put at the session's keys with boto3 (what a presigned PUT does); the bucket's
notification delivers ``s3:ObjectCreated`` to the ingest queue as in the cloud, and the
tests hand the queue's messages to the real ingest handler. The presigned links themselves
are exercised through the local runtime in tests/e2e/test_upload_sessions_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from dicomweb_core import config
from dicomweb_core.dicom.failures import FailureReason
from dicomweb_core.index.models import StudyItem
from dicomweb_core.index.writer import IndexWriter
from dicomweb_core.upload.declared import MAX_FILES, PART_BYTES, ingest_key
from infra.datasets.generate import make_instance, new_uid
from infra.local.provision import Stack
from infra.samtemplate import load_template
from tests.faults import Faults
from tests.lambda_harness import LambdaContext, load_handler, route_for, sqs_record
from tests.moto_stack import provisioned

UPLOADER = "uploader-subject"
CT_BYTES = make_instance(rows=64, columns=64)


def api_event(method: str, path: str, body: Any = None, *, subject: str = UPLOADER) -> dict[str, Any]:
    route = route_for(method, path)
    match = route.pattern.match(path)
    assert match is not None
    return {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "dicom.example.test", "content-type": "application/json"},
        "pathParameters": match.groupdict(),
        "body": json.dumps(body) if body is not None and not isinstance(body, str) else body,
        "requestContext": {
            "http": {"method": method, "path": path, "sourceIp": "192.0.2.1"},
            "requestId": "upload-test",
            "routeKey": route.route_key,
            "stage": "$default",
            "authorizer": {"jwt": {"claims": {"sub": subject}, "scopes": ["dicomweb/write"]}},
        },
        "isBase64Encoded": False,
    }


@dataclass
class Env:
    stack: Stack
    upload: ModuleType
    ingest: ModuleType
    s3: Any
    sqs: Any

    @property
    def bucket(self) -> str:
        return self.stack.physical_ids["InstanceBucket"]

    def call(self, method: str, path: str, body: Any = None, *, subject: str = UPLOADER) -> tuple[int, Any]:
        response = self.upload.handler(
            api_event(method, path, body, subject=subject), LambdaContext("UploadFunction")
        )
        self.upload.metrics.clear_metrics()
        text = response.get("body") or "null"
        return int(response["statusCode"]), json.loads(text)

    def open(self, *files: bytes, sha256: bool = True, sizes: list[int] | None = None) -> dict[str, Any]:
        declared = [
            {
                "name": f"file{i}.dcm",
                "size": sizes[i] if sizes else len(data),
                **({"sha256": hashlib.sha256(data).hexdigest()} if sha256 else {}),
            }
            for i, data in enumerate(files)
        ]
        status, document = self.call("POST", "/upload-sessions", {"files": declared})
        assert status == 201, document
        return dict(document)

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def deliver(self) -> int:
        """Hand every message of the ingest queue to the ingest handler; how many there were."""
        queue = self.stack.physical_ids["IngestQueue"]
        delivered = 0
        while messages := self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                records = [sqs_record(message["MessageId"], json.loads(message["Body"]))]
                result = self.ingest.handler({"Records": records}, LambdaContext("IngestFunction"))
                self.ingest.metrics.clear_metrics()
                assert result == {"batchItemFailures": []}, result
                self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                delivered += 1
        return delivered

    def status(self, session_id: str, *, subject: str = UPLOADER) -> tuple[int, Any]:
        return self.call("GET", f"/upload-sessions/{session_id}", subject=subject)

    def keys(self, prefix: str) -> list[str]:
        found = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        return [o["Key"] for o in found]


@pytest.fixture
def env(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    stack, _ = provisioned()
    template = load_template()
    for function in ("UploadFunction", "IngestFunction"):
        for name, value in stack.function_environment(template.functions()[function]).items():
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://dicom.example.test")
    config.settings.cache_clear()
    env = Env(
        stack,
        load_handler("UploadFunction"),
        load_handler("IngestFunction"),
        boto3.client("s3"),
        boto3.client("sqs"),
    )
    assert env.deliver() == 1  # S3's s3:TestEvent, sent when the notification is configured
    yield env
    config.settings.cache_clear()


def test_an_uploaded_instance_is_stored_and_reported_in_the_store_response_form(env: Env) -> None:
    # Given a session for one CT instance, with a presigned PUT on the API's own host
    session = env.open(CT_BYTES)
    link = session["files"][0]
    assert link["method"] == "PUT"
    assert link["url"].startswith(f"https://dicom.example.test/ingest/{session['sessionId']}/0000?")
    assert "X-Amz-Signature=" in link["url"]

    # When the file is uploaded and the bucket's event reaches the ingest function
    env.put(ingest_key(session["sessionId"], 0), CT_BYTES)
    assert env.deliver() == 1

    # Then the instance is in the index, the upload is gone, and the status says stored
    status, document = env.status(session["sessionId"])
    assert status == 200
    assert document["state"] == "done"
    assert document["counts"] == {"declared": 1, "pending": 0, "stored": 1, "failed": 0}
    sop = document["files"][0]["sopInstanceUID"]
    assert IndexWriter().find(sop) is not None
    referenced = document["response"]["00081199"]["Value"]
    assert referenced[0]["00081155"]["Value"] == [sop]
    assert env.keys("ingest/") == []
    assert env.keys("quarantine/") == []


def test_a_pending_session_says_so_and_asks_to_be_polled(env: Env) -> None:
    session = env.open(CT_BYTES, CT_BYTES)

    status, document = env.status(session["sessionId"])

    assert status == 200
    assert document["state"] == "open"
    assert document["counts"]["pending"] == 2
    assert [f["state"] for f in document["files"]] == ["pending", "pending"]


def test_a_large_file_gets_parts_and_a_completion_url(env: Env) -> None:
    # Given a session declaring a 100 MB file
    size = 100 * 1024 * 1024
    session = env.open(b"x", sha256=False, sizes=[size])

    # Then it is uploaded as S3 multipart parts of PART_BYTES
    file = session["files"][0]
    assert file["partSize"] == PART_BYTES
    assert [p["partNumber"] for p in file["parts"]] == list(range(1, -(-size // PART_BYTES) + 1))
    assert "uploadId=" in file["parts"][0]["url"] and "partNumber=1" in file["parts"][0]["url"]
    assert file["complete"].endswith(f"/upload-sessions/{session['sessionId']}/files/0/complete")


def test_completing_with_missing_or_unknown_parts_is_a_400_that_says_what_to_send(env: Env) -> None:
    session = env.open(b"x", sha256=False, sizes=[70 * 1024 * 1024])
    path = f"/upload-sessions/{session['sessionId']}/files/0/complete"

    missing = env.call("POST", path, {"parts": [{"partNumber": 1, "etag": '"a"'}]})
    unknown = env.call("POST", path, {"parts": [{"partNumber": n, "etag": '"a"'} for n in (1, 2, 3, 4, 5)]})
    not_json = env.call("POST", path, "parts please")

    assert missing[0] == 400 and "5 parts" in missing[1]["message"]
    assert unknown[0] == 400 and "ETag" in unknown[1]["message"]
    assert not_json[0] == 400


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"files": []}, 400, "files"),
        ("not json", 400, "JSON"),
        ({"files": [{"name": "a", "size": 0}]}, 400, "size"),
        ({"files": [{"name": "a", "size": "12"}]}, 400, "size"),
        ({"files": [{"name": "a", "size": 10, "sha256": "abc"}]}, 400, "sha256"),
        ({"files": [{"name": "a", "size": 2 * 1024**3}]}, 413, "at most"),
        ({"files": [{"name": "a", "size": 10}] * (MAX_FILES + 1)}, 413, str(MAX_FILES)),
    ],
)
def test_a_malformed_or_oversized_session_request_is_refused_with_a_reason(
    env: Env, body: Any, status: int, words: str
) -> None:
    answer = env.call("POST", "/upload-sessions", body)

    assert answer[0] == status
    assert words in answer[1]["message"]
    assert env.keys("ingest/") == []


def test_an_upload_that_does_not_match_its_declared_size_or_hash_is_quarantined(env: Env) -> None:
    # Given a session declaring two files with their sizes and hashes
    other = make_instance()
    session = env.open(CT_BYTES, other)
    sid = session["sessionId"]

    # When the first arrives truncated and the second arrives with other bytes of the same size
    env.put(ingest_key(sid, 0), CT_BYTES[:-10])
    env.put(ingest_key(sid, 1), other[:-1] + bytes([other[-1] ^ 0xFF]))
    env.deliver()

    # Then both failed with a reason, nothing was indexed, and both are kept in quarantine
    _, document = env.status(sid)
    assert document["counts"] == {"declared": 2, "pending": 0, "stored": 0, "failed": 2}
    messages = [f["message"] for f in document["files"]]
    assert "declared" in messages[0] and "SHA-256" in messages[1]
    assert all(f["failureReason"] == FailureReason.CANNOT_UNDERSTAND for f in document["files"])
    assert sorted(env.keys("quarantine/")) == [f"quarantine/{sid}/0000", f"quarantine/{sid}/0001"]
    head = env.s3.head_object(Bucket=env.bucket, Key=f"quarantine/{sid}/0000")
    assert "declared" in head["Metadata"]["reason"]
    assert env.keys("ingest/") == []


def test_a_non_dicom_upload_fails_with_the_reason_stow_gives_and_is_quarantined(env: Env) -> None:
    junk = b"%PDF-1.7 this is not DICOM" * 10
    session = env.open(junk)

    env.put(ingest_key(session["sessionId"], 0), junk)
    env.deliver()

    _, document = env.status(session["sessionId"])
    failed = document["files"][0]
    assert failed["state"] == "failed"
    assert failed["failureReason"] == FailureReason.CANNOT_UNDERSTAND
    assert document["response"]["0008119A"]["Value"][0]["00081197"]["Value"] == [
        FailureReason.CANNOT_UNDERSTAND
    ]
    assert env.keys("quarantine/") == [f"quarantine/{session['sessionId']}/0000"]


def test_an_object_dropped_into_the_ingest_prefix_outside_a_session_is_quarantined(env: Env) -> None:
    # Given objects put under ingest/ by hand: no session, and a made-up session id
    env.put("ingest/stray.bin", b"hello")
    env.put(ingest_key("0" * 32, 3), CT_BYTES)

    # When their events are handled
    assert env.deliver() == 2

    # Then neither is indexed; both are kept with the reason, none is left in ingest/
    assert sorted(env.keys("quarantine/")) == [f"quarantine/{'0' * 32}/0003", "quarantine/stray.bin"]
    head = env.s3.head_object(Bucket=env.bucket, Key="quarantine/stray.bin")
    assert "not part of an open upload session" in head["Metadata"]["reason"]
    assert env.keys("ingest/") == []


def test_a_file_the_session_never_declared_is_quarantined_and_reported(env: Env) -> None:
    # Given a session for one file, and a second object put beside it
    session = env.open(CT_BYTES)
    sid = session["sessionId"]
    env.put(ingest_key(sid, 0), CT_BYTES)
    env.put(ingest_key(sid, 1), make_instance())

    env.deliver()

    # Then the declared file is stored, the extra one refused, and the status lists both
    _, document = env.status(sid)
    assert document["counts"] == {"declared": 1, "pending": 0, "stored": 1, "failed": 1}
    extra = document["files"][1]
    assert extra["index"] == 1 and extra["state"] == "failed" and "never declared" in extra["message"]
    assert env.keys("quarantine/") == [f"quarantine/{sid}/0001"]


def test_an_expired_session_refuses_late_uploads_and_completion(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a session, then time past its expiry
    session = env.open(CT_BYTES)
    sid = session["sessionId"]
    later = time.time() + 25 * 3600
    monkeypatch.setattr(time, "time", lambda: later)

    # When its file arrives, and a completion is attempted
    env.put(ingest_key(sid, 0), CT_BYTES)
    env.deliver()
    completion = env.call("POST", f"/upload-sessions/{sid}/files/0/complete", {"parts": []})

    # Then nothing is stored, the upload is quarantined, the status says expired, completion is 410
    _, document = env.status(sid)
    assert document["state"] == "done"
    assert document["files"][0]["state"] == "failed" and "expired" in document["files"][0]["message"]
    assert env.keys("quarantine/") == [f"quarantine/{sid}/0000"]
    assert completion[0] == 410


def test_a_replayed_event_changes_nothing(env: Env) -> None:
    # Given a file stored through its event
    session = env.open(CT_BYTES)
    sid = session["sessionId"]
    env.put(ingest_key(sid, 0), CT_BYTES)
    queue = env.stack.physical_ids["IngestQueue"]
    message = env.sqs.receive_message(QueueUrl=queue)["Messages"][0]
    event = json.loads(message["Body"])
    env.sqs.send_message(QueueUrl=queue, MessageBody=message["Body"])  # the same event again
    env.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    env.ingest.handler({"Records": [sqs_record("first", event)]}, LambdaContext("IngestFunction"))
    first = env.status(sid)[1]

    # When the same event is delivered again
    env.deliver()

    # Then the outcome is the one recorded first, and nothing was quarantined
    assert env.status(sid)[1] == first
    assert first["counts"]["stored"] == 1
    assert env.keys("quarantine/") == []


def test_two_sessions_uploading_the_same_sop_instance_keep_the_first_and_report_the_second(env: Env) -> None:
    # Given two sessions: one uploads an instance, the other the same SOP Instance UID with other pixels
    sop, study, series = new_uid(), new_uid(), new_uid()
    first = make_instance(sop=sop, study=study, series=series, rows=8, columns=8)
    second = make_instance(sop=sop, study=study, series=series, rows=16, columns=16)
    same = first
    a, b, c = env.open(first), env.open(second), env.open(same)
    env.put(ingest_key(a["sessionId"], 0), first)
    env.deliver()
    env.put(ingest_key(b["sessionId"], 0), second)
    env.put(ingest_key(c["sessionId"], 0), same)
    env.deliver()

    # Then the first is kept, the different one is refused as a duplicate, the identical one is fine
    stored = IndexWriter().find(sop)
    assert stored is not None and stored.stored.size == len(first)
    assert env.status(a["sessionId"])[1]["files"][0]["state"] == "stored"
    refused = env.status(b["sessionId"])[1]["files"][0]
    assert refused["state"] == "failed" and refused["failureReason"] == FailureReason.DUPLICATE_SOP_INSTANCE
    assert env.status(c["sessionId"])[1]["files"][0]["state"] == "stored"


def test_a_session_is_its_openers_alone(env: Env) -> None:
    session = env.open(CT_BYTES)

    assert env.status(session["sessionId"], subject="someone-else")[0] == 404
    assert env.status("f" * 32)[0] == 404
    assert env.status("not-a-session")[0] == 404


def test_a_server_side_error_is_retried_by_the_queue_and_nothing_is_recorded(
    env: Env, faults: Faults
) -> None:
    # Given the calls an ingest makes (counted on a first upload)...
    def next_record(data: bytes) -> tuple[str, dict[str, Any]]:
        session = env.open(data)
        env.put(ingest_key(session["sessionId"], 0), data)
        queue = env.stack.physical_ids["IngestQueue"]
        message = env.sqs.receive_message(QueueUrl=queue)["Messages"][0]
        env.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return session["sessionId"], sqs_record(message["MessageId"], json.loads(message["Body"]))

    _, counted = next_record(make_instance())
    with faults.armed():
        env.ingest.handler({"Records": [counted]}, LambdaContext("IngestFunction"))
    put = faults.calls.index("PutObject")

    # ...when another upload's store fails on the server's side (S3 refuses its PUT)
    sid, record = next_record(make_instance())
    # Then the invocation fails (a batch whose every record failed: the queue redelivers it),
    # nothing is recorded and the upload stays in place; the redelivery stores it
    with faults.armed("fail", at=put), pytest.raises(BatchProcessingError):
        env.ingest.handler({"Records": [record]}, LambdaContext("IngestFunction"))
    assert env.status(sid)[1]["counts"]["pending"] == 1
    assert env.keys("ingest/") == [ingest_key(sid, 0)]
    assert env.ingest.handler({"Records": [record]}, LambdaContext("IngestFunction")) == {
        "batchItemFailures": []
    }
    assert env.status(sid)[1]["counts"]["stored"] == 1


def test_an_upload_into_a_study_being_deleted_is_refused_not_retried(env: Env) -> None:
    # Given a stored study whose DELETE has begun (the study item marked deleting)
    study = new_uid()
    first = make_instance(study=study)
    a = env.open(first)
    env.put(ingest_key(a["sessionId"], 0), first)
    env.deliver()
    StudyItem(*StudyItem.key(study)).update(actions=[StudyItem.deleting.set(datetime.now(UTC))])

    # When another instance of that study arrives through a session
    late = make_instance(study=study)
    b = env.open(late)
    env.put(ingest_key(b["sessionId"], 0), late)
    env.deliver()

    # Then it is refused for good (recorded, quarantined), not handed back to the queue
    refused = env.status(b["sessionId"])[1]["files"][0]
    assert refused["state"] == "failed" and "deleted" in refused["message"]
    assert env.keys("quarantine/") == [f"quarantine/{b['sessionId']}/0000"]
