"""The upload-session API: open a session, complete a multipart file, read the status.

``POST /upload-sessions`` answers with one presigned link per file (parts for files over
64 MiB), on the API's own host like every other object link (CloudFront's ``/ingest/*``
behavior; the local runtime's object proxy). The links expire with the session. What the
ingest function made of each file is read back with ``GET /upload-sessions/{id}``, whose
``response`` is the Store Instances Response Module (PS3.18 §10.5.3) STOW-RS answers with.
Sessions are their opener's: another token's requests get 404, as an unknown id does.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from dicomweb_core.errors import BadRequest, Conflict, Gone, NotFound
from dicomweb_core.storage import ObjectReader
from dicomweb_core.stow.service import StoreOutcome, store_response
from dicomweb_core.upload.declared import (
    PART_BYTES,
    DeclaredFile,
    completed_parts,
    declared_files,
    ingest_key,
    is_session_id,
)
from dicomweb_core.upload.sessions import FileOutcome, Session, SessionTable
from dicomweb_core.web.reply import Reply

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Caller:
    owner: str  # the token's subject
    base_url: str  # the public DICOMweb root the links and URLs are on


class UploadService:
    def __init__(self, *, sessions: SessionTable, objects: ObjectReader, session_seconds: int) -> None:
        self.sessions = sessions
        self.objects = objects
        self.session_seconds = session_seconds

    def open(self, body: bytes | str | None, caller: Caller) -> Reply:
        """A new session for the declared files, with a presigned upload per file."""
        files = declared_files(body)
        now = int(time.time())
        session_id = secrets.token_hex(16)
        uploads = {
            f.index: self.objects.client.create_multipart_upload(
                Bucket=self.objects.bucket, Key=ingest_key(session_id, f.index)
            )["UploadId"]
            for f in files
            if f.multipart
        }
        session = Session(session_id, caller.owner, now, now + self.session_seconds, tuple(files), uploads)
        self.sessions.create(session)
        status_url = f"{caller.base_url}/upload-sessions/{session_id}"
        document = {
            "sessionId": session_id,
            "expiresAt": _iso(session.expires_at),
            "status": status_url,
            "files": [self._links(session, f, caller, status_url) for f in files],
        }
        return _json(HTTPStatus.CREATED, document, headers={"Location": status_url})

    def complete(self, session_id: str, file_index: str, body: bytes | str | None, caller: Caller) -> Reply:
        """Join a multipart file's parts (S3 CompleteMultipartUpload); ingest follows."""
        session = self._session(session_id, caller)
        declared = session.file(int(file_index)) if file_index.isdigit() else None
        if declared is None or declared.index not in session.uploads:
            raise NotFound(f"Session {session_id} has no multipart file {file_index[:8]}.")
        parts = completed_parts(body, expected=declared.part_count)
        client = self.objects.client
        try:
            client.complete_multipart_upload(
                Bucket=self.objects.bucket,
                Key=ingest_key(session_id, declared.index),
                UploadId=session.uploads[declared.index],
                MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in parts]},
            )
        except client.exceptions.NoSuchUpload:
            raise Conflict(
                f"File {declared.index} was already completed, or its upload was aborted; read the status."
            ) from None
        except client.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}:
                raise BadRequest(
                    f"S3 refused the parts of file {declared.index} ({code}): upload every part, "
                    "then send each part's ETag as S3 answered it."
                ) from None
            raise
        return _json(HTTPStatus.ACCEPTED, {"index": declared.index, "state": "pending"})

    def status(self, session_id: str, caller: Caller) -> Reply:
        """Each declared file's state, and the Store Instances Response of what is done."""
        session = self._session(session_id, caller, expired_ok=True)
        outcomes = self.sessions.outcomes(session_id)
        pending = [f for f in session.files if f.index not in outcomes]
        done = not pending
        state = "done" if done else ("expired" if session.expired() else "open")
        store = StoreOutcome()
        for index in sorted(outcomes):
            outcome = outcomes[index]
            if outcome.stored is not None:
                store.stored.append(outcome.stored)
            elif outcome.failure is not None:
                store.failures.append(outcome.failure)
        files = [_file_state(f.index, f, outcomes.get(f.index)) for f in session.files]
        # Objects put under an index the session never declared are reported too.
        files += [_file_state(i, None, o) for i, o in sorted(outcomes.items()) if session.file(i) is None]
        document = {
            "sessionId": session_id,
            "expiresAt": _iso(session.expires_at),
            "state": state,
            "counts": {
                "declared": len(session.files),
                "pending": len(pending),
                "stored": len(store.stored),
                "failed": len(store.failures),
            },
            "files": files,
            "response": store_response(store, base_url=caller.base_url, study=None),
        }
        headers = {} if done or session.expired() else {"Retry-After": "2"}
        return _json(HTTPStatus.OK, document, headers=headers)

    def _session(self, session_id: str, caller: Caller, *, expired_ok: bool = False) -> Session:
        session = self.sessions.get(session_id) if is_session_id(session_id) else None
        if session is None or (session.owner and session.owner != caller.owner):
            raise NotFound(f"No upload session {session_id[:40]}.")
        if session.expired() and not expired_ok:
            raise Gone(f"Upload session {session_id} has expired; open a new session for what is left.")
        return session

    def _links(
        self, session: Session, declared: DeclaredFile, caller: Caller, status_url: str
    ) -> dict[str, Any]:
        lifetime = max(1, session.expires_at - int(time.time()))
        key = ingest_key(session.session_id, declared.index)
        described: dict[str, Any] = {"index": declared.index, "name": declared.name, "size": declared.size}
        if not declared.multipart:
            described["method"] = "PUT"
            described["url"] = self.objects.same_host_link(
                "put_object", {"Key": key}, public_base_url=caller.base_url, expires_in=lifetime
            )
            return described
        upload_id = session.uploads[declared.index]
        described["partSize"] = PART_BYTES
        described["parts"] = [
            {
                "partNumber": number,
                "url": self.objects.same_host_link(
                    "upload_part",
                    {"Key": key, "UploadId": upload_id, "PartNumber": number},
                    public_base_url=caller.base_url,
                    expires_in=lifetime,
                ),
            }
            for number in range(1, declared.part_count + 1)
        ]
        described["complete"] = f"{status_url}/files/{declared.index}/complete"
        return described


def _file_state(index: int, declared: DeclaredFile | None, outcome: FileOutcome | None) -> dict[str, Any]:
    state: dict[str, Any] = {"index": index}
    if declared is not None:
        state["name"] = declared.name
    if outcome is None:
        state["state"] = "pending"
    elif outcome.stored is not None:
        state.update(
            state="stored",
            sopInstanceUID=outcome.stored.sop_instance_uid,
            studyInstanceUID=outcome.stored.study_instance_uid,
        )
    elif outcome.failure is not None:
        state.update(
            state="failed", failureReason=int(outcome.failure.reason), message=outcome.failure.message
        )
        if outcome.failure.sop_instance_uid:
            state["sopInstanceUID"] = outcome.failure.sop_instance_uid
    return state


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(status: HTTPStatus, document: Any, *, headers: dict[str, str] | None = None) -> Reply:
    return Reply(int(status), json.dumps(document, separators=(",", ":")), JSON, dict(headers or {}))
