"""Store each object uploaded into a session, or quarantine it with its reason.

Driven by the bucket's ``s3:ObjectCreated:*`` events under ``ingest/`` (through a queue,
so a failure is retried and then dead-lettered, never lost). For each object:

1. its key names a session and a file the session declared, else it is quarantined;
2. an outcome already recorded means the event is a replay: nothing is stored again;
3. the session must still be open, the size and (when declared) SHA-256 must match;
4. the bytes are stored by :class:`~dicomweb_core.stow.service.StowService`, exactly as a
   STOW-RS part, with the same failure reasons;
5. the outcome is recorded once, then the uploaded object is removed (stored) or moved
   under ``quarantine/`` with the reason in its metadata (refused).

A crash anywhere before step 5 leaves the object where it was, and the redelivered event
does the work again: a second store of the same bytes is an identical duplicate, which
STOW-RS answers as stored, so nothing is stored twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from dicomweb_core.dicom.failures import Failure, FailureReason
from dicomweb_core.observability import logger
from dicomweb_core.stow.service import StoredInstance, StowService
from dicomweb_core.upload.declared import INGEST_PREFIX, QUARANTINE_PREFIX, parse_ingest_key
from dicomweb_core.upload.sessions import FileOutcome, Session, SessionTable, outcome_of


@dataclass(frozen=True, slots=True)
class IngestResult:
    key: str
    state: str  # "stored" | "failed" | "quarantined" | "replayed" | "ignored"
    reason: str = ""
    session: Session | None = None
    stored: StoredInstance | None = None


class IngestService:
    def __init__(self, *, sessions: SessionTable, stow: StowService, client: Any, bucket: str) -> None:
        self.sessions = sessions
        self.stow = stow
        self.client = client
        self.bucket = bucket

    def handle_event(self, event: dict[str, Any]) -> list[IngestResult]:
        """Every ``ObjectCreated`` record of one S3 event notification (a test event has none)."""
        results = []
        for record in event.get("Records", []):
            if not str(record.get("eventName", "")).startswith("ObjectCreated"):
                continue
            obj = record["s3"]["object"]
            results.append(self.ingest(unquote_plus(obj["key"]), version_id=obj.get("versionId")))
        return results

    def ingest(self, key: str, *, version_id: str | None = None) -> IngestResult:
        if not key.startswith(INGEST_PREFIX):
            return IngestResult(key, "ignored")
        target = parse_ingest_key(key)
        session = self.sessions.get(target[0]) if target else None
        if target is None or session is None:
            return self._quarantine(key, version_id, "the object is not part of an open upload session")
        index = target[1]
        if session.file(index) is None:
            reason = f"file {index} was never declared; the session declared {len(session.files)} files"
            return self._refuse(
                session, index, key, version_id, reason=reason, code=FailureReason.CANNOT_UNDERSTAND
            )
        if self.sessions.outcome(session.session_id, index) is not None:
            self._remove(key)  # a replayed event, or a crash after recording
            return IngestResult(key, "replayed")
        if session.expired():
            reason = "the upload session had expired when the object arrived; open a new session"
            return self._refuse(
                session, index, key, version_id, reason=reason, code=FailureReason.PROCESSING_FAILURE
            )
        data = self._read(key, version_id)
        if data is None:  # already moved by an earlier delivery whose record was lost? keep looking
            return IngestResult(key, "ignored", "the object is gone")
        refusal = _integrity_refusal(session, index, data)
        if refusal:
            return self._refuse(
                session, index, key, version_id, reason=refusal, code=FailureReason.CANNOT_UNDERSTAND
            )
        outcome = outcome_of(index, self.stow.store_all([memoryview(data)], study=None))
        if outcome.failure is not None and outcome.failure.retryable:
            # A server-side error (not the object's fault): raise, so the queue retries.
            raise RuntimeError(f"storing {key} failed: {outcome.failure.message}")
        self.sessions.record(session, outcome)
        if outcome.failure is not None:
            self._move_to_quarantine(key, version_id, outcome.failure.message)
            return IngestResult(key, "failed", outcome.failure.message)
        self._remove(key)
        return IngestResult(key, "stored", session=session, stored=outcome.stored)

    def _refuse(
        self,
        session: Session,
        index: int,
        key: str,
        version_id: str | None,
        *,
        reason: str,
        code: FailureReason,
    ) -> IngestResult:
        self.sessions.record(session, FileOutcome(index, failure=Failure(code, reason)))
        return self._quarantine(key, version_id, reason)

    def _quarantine(self, key: str, version_id: str | None, reason: str) -> IngestResult:
        self._move_to_quarantine(key, version_id, reason)
        return IngestResult(key, "quarantined", reason)

    def _move_to_quarantine(self, key: str, version_id: str | None, reason: str) -> None:
        """Copy the object under ``quarantine/`` with its reason, then remove the upload."""
        source: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            source["VersionId"] = version_id
        target = QUARANTINE_PREFIX + key.removeprefix(INGEST_PREFIX)
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource=source,
                Metadata={"reason": _ascii(reason)[:1024], "uploaded-as": _ascii(key)},
                MetadataDirective="REPLACE",
            )
        except self.client.exceptions.NoSuchKey:
            return  # moved by an earlier delivery
        logger.warning("upload quarantined", extra={"key": key, "quarantine_key": target, "reason": reason})
        self._remove(key)

    def _read(self, key: str, version_id: str | None) -> bytes | None:
        arguments = {"Bucket": self.bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
        try:
            body: bytes = self.client.get_object(**arguments)["Body"].read()
        except (self.client.exceptions.NoSuchKey, self.client.exceptions.NoSuchVersion):
            return None
        return body

    def _remove(self, key: str) -> None:
        """The uploaded object is done with (a delete marker: the lifecycle expires the rest)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)


def _integrity_refusal(session: Session, index: int, data: bytes) -> str:
    declared = session.file(index)
    assert declared is not None
    if len(data) != declared.size:
        return (
            f"the upload is {len(data)} bytes but {declared.size} were declared; upload the whole file again"
        )
    if declared.sha256 and hashlib.sha256(data).hexdigest() != declared.sha256:
        return (
            "the upload's SHA-256 differs from the one declared; the file changed or was damaged in transit"
        )
    return ""


def _ascii(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
