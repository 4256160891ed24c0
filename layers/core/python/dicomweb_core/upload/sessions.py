"""Upload sessions and the outcome of each of their files, in their own DynamoDB table.

One partition per session: the ``SESSION`` item (owner, expiry, declared files and the
multipart upload ids) and one ``FILE#nnnn`` item per file the ingest function finished.
An outcome is written once (a conditional put), so a replayed S3 event can never change
or double-count it. Items carry ``expires`` for the table's TTL: a session's items go a
week after it closes, with nothing left in the index or the bucket (the bucket's
lifecycle rules remove what an abandoned session uploaded).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3

from dicomweb_core.dicom.failures import Failure, FailureReason, WarningReason
from dicomweb_core.index.write_results import StoredObject
from dicomweb_core.stow.service import StoredInstance, StoreOutcome
from dicomweb_core.upload.declared import DeclaredFile

SESSION_SK = "SESSION"
KEPT_AFTER_CLOSE_S = 7 * 24 * 3600  # the status stays readable (410) this long


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    owner: str  # the token's subject; "" when the local runtime runs without auth
    created_at: int
    expires_at: int
    files: tuple[DeclaredFile, ...]
    uploads: dict[int, str] = field(default_factory=dict)  # file index -> S3 multipart upload id

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def file(self, index: int) -> DeclaredFile | None:
        return self.files[index] if 0 <= index < len(self.files) else None


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one uploaded file: stored as an instance, or refused with a reason."""

    index: int
    stored: StoredInstance | None = None
    failure: Failure | None = None

    def as_json(self) -> dict[str, Any]:
        if self.stored is not None:
            s = self.stored
            return {
                "index": self.index,
                "stored": {
                    "sopClassUID": s.sop_class_uid,
                    "sopInstanceUID": s.sop_instance_uid,
                    "studyInstanceUID": s.study_instance_uid,
                    "seriesInstanceUID": s.series_instance_uid,
                    "modality": s.modality,
                    "patientID": s.patient_id,
                    "key": s.stored.key,
                    "versionId": s.stored.version_id,
                    "sha256": s.stored.sha256,
                    "size": s.stored.size,
                    "warnings": [int(w) for w in s.warnings],
                },
            }
        assert self.failure is not None
        f = self.failure
        return {
            "index": self.index,
            "failure": {
                "reason": int(f.reason),
                "message": f.message,
                "sopClassUID": f.sop_class_uid,
                "sopInstanceUID": f.sop_instance_uid,
            },
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FileOutcome:
        if "stored" in value:
            s = value["stored"]
            return cls(
                int(value["index"]),
                stored=StoredInstance(
                    sop_class_uid=s["sopClassUID"],
                    sop_instance_uid=s["sopInstanceUID"],
                    study_instance_uid=s["studyInstanceUID"],
                    series_instance_uid=s["seriesInstanceUID"],
                    modality=s["modality"],
                    stored=StoredObject(s["key"], s["versionId"], s["sha256"], int(s["size"])),
                    patient_id=s.get("patientID"),
                    warnings=tuple(WarningReason(w) for w in s.get("warnings", [])),
                ),
            )
        f = value["failure"]
        return cls(
            int(value["index"]),
            failure=Failure(
                FailureReason(f["reason"]), f["message"], f.get("sopClassUID"), f.get("sopInstanceUID")
            ),
        )


def outcome_of(index: int, outcome: StoreOutcome) -> FileOutcome:
    """The outcome of a file from the STOW-RS service's outcome of its single instance."""
    if outcome.stored:
        return FileOutcome(index, stored=outcome.stored[0])
    return FileOutcome(index, failure=outcome.failures[0])


class SessionTable:
    """The sessions table (``UPLOAD_TABLE_NAME``), through the low-level DynamoDB client."""

    def __init__(self, table_name: str, *, client: Any = None) -> None:
        self.table_name = table_name
        self._client = client

    @cached_property
    def client(self) -> Any:
        return self._client or boto3.client("dynamodb")

    def create(self, session: Session) -> None:
        self.client.put_item(
            TableName=self.table_name,
            Item={
                "pk": {"S": _pk(session.session_id)},
                "sk": {"S": SESSION_SK},
                "owner": {"S": session.owner},
                "created_at": {"N": str(session.created_at)},
                "expires_at": {"N": str(session.expires_at)},
                "expires": {"N": str(session.expires_at + KEPT_AFTER_CLOSE_S)},
                "files": {"S": json.dumps([f.as_json() for f in session.files], separators=(",", ":"))},
                "uploads": {"S": json.dumps({str(k): v for k, v in session.uploads.items()})},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )

    def get(self, session_id: str) -> Session | None:
        item = self.client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": _pk(session_id)}, "sk": {"S": SESSION_SK}},
            ConsistentRead=True,
        ).get("Item")
        if item is None:
            return None
        return Session(
            session_id=session_id,
            owner=item["owner"]["S"],
            created_at=int(item["created_at"]["N"]),
            expires_at=int(item["expires_at"]["N"]),
            files=tuple(DeclaredFile.from_json(f) for f in json.loads(item["files"]["S"])),
            uploads={int(k): v for k, v in json.loads(item["uploads"]["S"]).items()},
        )

    def record(self, session: Session, outcome: FileOutcome) -> bool:
        """Write a file's outcome once; False when one was already written (a replay)."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={
                    "pk": {"S": _pk(session.session_id)},
                    "sk": {"S": _file_sk(outcome.index)},
                    "outcome": {"S": json.dumps(outcome.as_json(), separators=(",", ":"))},
                    "expires": {"N": str(session.expires_at + KEPT_AFTER_CLOSE_S)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def outcome(self, session_id: str, index: int) -> FileOutcome | None:
        item = self.client.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": _pk(session_id)}, "sk": {"S": _file_sk(index)}},
            ConsistentRead=True,
        ).get("Item")
        return FileOutcome.from_json(json.loads(item["outcome"]["S"])) if item else None

    def outcomes(self, session_id: str) -> dict[int, FileOutcome]:
        """Every outcome recorded for the session, by file index."""
        found: dict[int, FileOutcome] = {}
        paginator = self.client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :file)",
            ExpressionAttributeValues={":pk": {"S": _pk(session_id)}, ":file": {"S": "FILE#"}},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                outcome = FileOutcome.from_json(json.loads(item["outcome"]["S"]))
                found[outcome.index] = outcome
        return found


def _pk(session_id: str) -> str:
    return f"SESSION#{session_id}"


def _file_sk(index: int) -> str:
    return f"FILE#{index:04d}"
