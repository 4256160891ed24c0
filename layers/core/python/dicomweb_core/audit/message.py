"""The audit trail: one record per request and per hook action, after PS3.15 Annex A.5.

Records follow the DICOM Audit Message (PS3.15 A.5.1, the RFC 3881 / ATNA schema) as
JSON: ``EventIdentification`` (EventID from DCM, EventActionCode, EventDateTime,
EventOutcomeIndicator), ``ActiveParticipant`` (the requestor from the token's ``sub`` and
``client_id``, its source IP; and this application), ``AuditSourceIdentification`` and
``ParticipantObjectIdentification`` (study/series/instance UIDs, the query, and the
patient ID for the primary store only). Nothing else from the request goes in: never a
token, a body, pixel data, or names.

Where records go: in the cloud to their own CloudWatch Logs group (``AUDIT_LOG_GROUP``,
retention set in template.yaml), locally to ``$LOCAL_DIR/audit.jsonl`` (``AUDIT_FILE``).
Requests the API Gateway authorizer refuses never reach a function: in the cloud the
API's access log, written to the same group, records them; locally the gateway writes a
record through :func:`http_record` like the functions do.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from functools import cache, wraps
from pathlib import Path
from typing import Any, Protocol

import boto3

from dicomweb_core.observability import logger
from dicomweb_core.web.roots import is_research


class AuditEvent(Enum):
    """EventID codes (DCM, PS3.16 CID 400) and the action each one records."""

    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
    INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
    QUERY = ("110112", "Query")
    STUDY_DELETED = ("110105", "DICOM Study Deleted")
    EXPORT = ("110106", "Export")
    APPLICATION_ACTIVITY = ("110100", "Application Activity")
    USER_AUTHENTICATION = ("110114", "User Authentication")
    SECURITY_ALERT = ("110113", "Security Alert")

    @property
    def code(self) -> dict[str, str]:
        value, meaning = self.value
        return {"csd-code": value, "codeSystemName": "DCM", "originalText": meaning}


# EventTypeCode values (DCM, CID 401/402) for the failed-access records.
LOGIN = {"csd-code": "110122", "codeSystemName": "DCM", "originalText": "Login"}
RESTRICTED_FUNCTION = {
    "csd-code": "110132",
    "codeSystemName": "DCM",
    "originalText": "Use of Restricted Function",
}

# ParticipantObjectIDTypeCode values (PS3.15 A.5.2.5 / CID 404).
STUDY_UID = {"csd-code": "110180", "codeSystemName": "DCM", "originalText": "Study Instance UID"}
SERIES_UID = {"csd-code": "112002", "codeSystemName": "DCM", "originalText": "Series Instance UID"}
SOP_UID = {"csd-code": "110183", "codeSystemName": "DCM", "originalText": "SOP Instance UID"}
SOP_CLASS_UID = {"csd-code": "110181", "codeSystemName": "DCM", "originalText": "SOP Class UID"}
PATIENT_NUMBER = {"csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number"}


class Outcome:
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12

    @staticmethod
    def of_status(status: int) -> int:
        if status < 400:
            return Outcome.SUCCESS
        if status < 500:
            return Outcome.MINOR_FAILURE
        return Outcome.SERIOUS_FAILURE


@dataclass(frozen=True, slots=True)
class Requestor:
    """Who asked: the token's subject and client, and where from."""

    user_id: str  # the JWT ``sub`` ("anonymous" when there was no valid token)
    client_id: str | None
    source_ip: str | None
    scopes: tuple[str, ...] = ()

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Requestor:
        context = event.get("requestContext") or {}
        jwt = (context.get("authorizer") or {}).get("jwt") or {}
        claims = jwt.get("claims") or {}
        return cls(
            user_id=str(claims.get("sub") or "anonymous"),
            client_id=str(claims.get("client_id") or claims.get("aud") or "") or None,
            source_ip=(context.get("http") or {}).get("sourceIp"),
            scopes=tuple(jwt.get("scopes") or ()),
        )

    def participant(self) -> dict[str, Any]:
        record: dict[str, Any] = {"UserID": self.user_id, "UserIsRequestor": True}
        if self.client_id:
            record["AlternativeUserID"] = self.client_id
        if self.scopes:
            record["RoleIDCode"] = [{"csd-code": s, "codeSystemName": "OAuth2 scope"} for s in self.scopes]
        if self.source_ip:
            record["NetworkAccessPointID"] = self.source_ip
            record["NetworkAccessPointTypeCode"] = "2"  # IP address
        return record


SYSTEM = Requestor(user_id="dicomweb", client_id=None, source_ip=None)


@dataclass(frozen=True, slots=True)
class Subject:
    """The DICOM objects an event is about (ParticipantObjectIdentification)."""

    study: str | None = None
    series: str | None = None
    instance: str | None = None
    patient_id: str | None = None  # primary store only

    def participants(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        if self.patient_id:
            found.append(_object(self.patient_id, PATIENT_NUMBER, type_code=1, role=1))
        if self.study:
            study = _object(self.study, STUDY_UID, type_code=2, role=3)
            details = {"series": self.series, "instance": self.instance}
            described = {k: v for k, v in details.items() if v}
            if described:
                study["ParticipantObjectDescription"] = described
            found.append(study)
        return found


def _object(identifier: str, id_type: Mapping[str, str], *, type_code: int, role: int) -> dict[str, Any]:
    return {
        "ParticipantObjectID": identifier,
        "ParticipantObjectIDTypeCode": dict(id_type),
        "ParticipantObjectTypeCode": type_code,  # 1 person, 2 system object
        "ParticipantObjectTypeCodeRole": role,  # 1 patient, 3 report (study), 24 query
    }


def query_participant(raw_query: str) -> dict[str, Any]:
    """A QIDO query as a participant object: the query string, base64 (PS3.15 A.5.3.12)."""
    record = _object("QIDO-RS", SOP_CLASS_UID, type_code=2, role=24)
    record["ParticipantObjectQuery"] = base64.b64encode(raw_query.encode()).decode()
    return record


def record(
    event: AuditEvent,
    *,
    action: str,
    outcome: int,
    requestor: Requestor,
    objects: Iterable[Mapping[str, Any]] = (),
    event_type: Mapping[str, str] | None = None,
    description: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One audit message (PS3.15 A.5.1) as a JSON-ready mapping."""
    identification: dict[str, Any] = {
        "EventID": event.code,
        "EventActionCode": action,  # C create, R read, U update, D delete, E execute
        "EventDateTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "EventOutcomeIndicator": outcome,
    }
    if event_type is not None:
        identification["EventTypeCode"] = [dict(event_type)]
    if description:
        identification["EventOutcomeDescription"] = description
    application = {
        "UserID": os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dicomweb"),
        "UserIsRequestor": requestor is SYSTEM,
        "RoleIDCode": [{"csd-code": "110153", "codeSystemName": "DCM", "originalText": "Source Role ID"}],
    }
    message: dict[str, Any] = {
        "EventIdentification": identification,
        "ActiveParticipant": [application] if requestor is SYSTEM else [requestor.participant(), application],
        "AuditSourceIdentification": {
            "AuditSourceID": os.environ.get("AUDIT_SOURCE_ID", "dicomweb"),
            "AuditSourceTypeCode": "4",  # application server process
        },
        "ParticipantObjectIdentification": list(objects),
    }
    if extra:
        message.update(extra)
    return message


def hook_record(
    event: AuditEvent, *, action: str, subject: Subject, outcome: int, description: str
) -> dict[str, Any]:
    """The record of an action the system took on its own (a hook), about ``subject``."""
    return record(
        event,
        action=action,
        outcome=outcome,
        requestor=SYSTEM,
        objects=subject.participants(),
        description=description,
    )


# ------------------------------------------------------------------------------ sinks
class AuditSink(Protocol):
    def write(self, message: Mapping[str, Any]) -> None: ...


class FileSink:
    """JSON lines appended to a file (the local runtime's ``$LOCAL_DIR/audit.jsonl``).

    Each record is one ``write`` on a file opened with O_APPEND, so records from several
    worker processes never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, message: Mapping[str, Any]) -> None:
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


class CloudWatchSink:
    """PutLogEvents into the audit log group, one stream per execution environment."""

    def __init__(self, log_group: str, *, client: Any = None) -> None:
        self.log_group = log_group
        self.client = client or boto3.client("logs")
        function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dicomweb")
        self.stream = f"{datetime.now(UTC):%Y/%m/%d}/{function}/{uuid.uuid4().hex}"
        self._created = False
        self._lock = threading.Lock()

    def write(self, message: Mapping[str, Any]) -> None:
        with self._lock:
            if not self._created:
                self.client.create_log_stream(logGroupName=self.log_group, logStreamName=self.stream)
                self._created = True
            self.client.put_log_events(
                logGroupName=self.log_group,
                logStreamName=self.stream,
                logEvents=[
                    {
                        "timestamp": int(time.time() * 1000),
                        "message": json.dumps(message, separators=(",", ":")),
                    }
                ],
            )


class LogSink:
    """The function's own log (when no audit destination is configured: tests, tools)."""

    def write(self, message: Mapping[str, Any]) -> None:
        logger.info("audit", extra={"audit": message})


@cache
def sink() -> AuditSink:
    """This process's audit destination, from the environment."""
    if os.environ.get("AUDIT_FILE"):
        return FileSink(Path(os.environ["AUDIT_FILE"]))
    if os.environ.get("AUDIT_LOG_GROUP"):
        return CloudWatchSink(os.environ["AUDIT_LOG_GROUP"])
    return LogSink()


# The function-log line that says an audit record was lost. template.yaml's
# AuditWriteFailure metric filters match its message exactly: change both together.
AUDIT_WRITE_FAILED = "audit record could not be written"


def reference(message: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a record without disclosing anything it is about.

    The request id (which the API access log in the audit group and the function log
    also carry), the route template, the store, the EventID, action, outcome and time.
    Never a participant object (patient ID, UIDs, the base64 query with the searched
    names), a requestor, nor the outcome description (a hook puts error text there)."""
    identification = message.get("EventIdentification") or {}
    event_id = identification.get("EventID") or {}
    found = {
        "RequestID": message.get("RequestID"),
        "Route": message.get("Route"),
        "Store": message.get("Store"),
        "EventID": event_id.get("csd-code") if isinstance(event_id, Mapping) else None,
        "EventActionCode": identification.get("EventActionCode"),
        "EventOutcomeIndicator": identification.get("EventOutcomeIndicator"),
        "EventDateTime": identification.get("EventDateTime"),
    }
    return {key: value for key, value in found.items() if value is not None}


def _error_name(error: Exception) -> str:
    """The failure's class and AWS error code, never its message (which may quote input)."""
    response = getattr(error, "response", None)
    code = (response.get("Error") or {}).get("Code") if isinstance(response, Mapping) else None
    return f"{type(error).__name__}: {code}" if code else type(error).__name__


def emit(message: Mapping[str, Any]) -> None:
    """Write one record; a failure to audit is logged loudly but does not fail the request.

    Fail-open: an audit outage is not a clinical outage. The function log is not the audit
    trail (other readers, shorter retention), so the lost record goes there only as its
    :func:`reference`, at error level under :data:`AUDIT_WRITE_FAILED`, which a metric
    filter counts and an alarm watches (template.yaml ``AuditWriteFailureAlarm``)."""
    try:
        sink().write(message)
    except Exception as error:
        logger.error(
            AUDIT_WRITE_FAILED, extra={"audit_reference": reference(message), "error": _error_name(error)}
        )


# ------------------------------------------------------------------ HTTP requests
_noted: ContextVar[tuple[Subject, ...]] = ContextVar("audit_subjects", default=())


def note(subject: Subject) -> None:
    """Add an object the current request touched that its path does not name (STOW bodies)."""
    if subject not in _noted.get():
        _noted.set((*_noted.get(), subject))


def classify(method: str, route_key: str, status: int) -> tuple[AuditEvent, str, Mapping[str, str] | None]:
    """The audit event for a request: (EventID, EventActionCode, EventTypeCode)."""
    if status == 401:
        return AuditEvent.USER_AUTHENTICATION, "E", LOGIN
    if status == 403:
        return AuditEvent.SECURITY_ALERT, "E", RESTRICTED_FUNCTION
    path = route_key.split(" ", 1)[-1]
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if path.startswith("/admin/"):
        return AuditEvent.EXPORT, "E", None
    if method == "POST":
        return AuditEvent.INSTANCES_TRANSFERRED, "C", None
    if method == "DELETE":
        return AuditEvent.STUDY_DELETED, "D", None
    if last in {"studies", "series", "instances"}:
        return AuditEvent.QUERY, "E", None
    if last == "metadata":
        return AuditEvent.INSTANCES_ACCESSED, "R", None
    return AuditEvent.INSTANCES_TRANSFERRED, "R", None


def http_message(
    event: Mapping[str, Any],
    status: int,
    *,
    subjects: Iterable[Subject] = (),
    patient_of: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """The audit record of one API request and its response status."""
    context = event.get("requestContext") or {}
    method = str((context.get("http") or {}).get("method") or "")
    route_key = str(
        event.get("routeKey") or context.get("routeKey") or f"{method} {event.get('rawPath', '')}"
    )
    audit_event, action, event_type = classify(method, route_key, status)
    parameters = event.get("pathParameters") or {}
    in_path = Subject(parameters.get("study"), parameters.get("series"), parameters.get("instance"))
    primary = not is_research(str(event.get("rawPath", "")))
    noted = [s for s in subjects if s.study != in_path.study or in_path.study is None]
    for subject in subjects:  # what the handler learnt about the path's own study
        if in_path.study is not None and subject.study == in_path.study and subject.patient_id:
            in_path = replace(in_path, patient_id=subject.patient_id)
    objects: list[dict[str, Any]] = []
    for subject in (in_path, *noted):
        known = subject
        if subject.study and primary and patient_of is not None and subject.patient_id is None:
            known = replace(subject, patient_id=patient_of(subject.study))
        objects.extend(known.participants())
    if audit_event is AuditEvent.QUERY:
        objects.append(query_participant(str(event.get("rawQueryString") or "")))
    return record(
        audit_event,
        action=action,
        outcome=Outcome.of_status(status),
        requestor=Requestor.from_event(event),
        objects=objects,
        event_type=event_type,
        description=str(status),
        extra={
            "RequestID": context.get("requestId"),
            "Route": route_key,
            "Store": "primary" if primary else "deid",
        },
    )


def _patient_of(study: str) -> str | None:
    """PatientID of a study in the primary store's index (None when unknown)."""
    from dicomweb_core.index.keys import first_value  # noqa: PLC0415 (index models load lazily)
    from dicomweb_core.index.models import StudyItem  # noqa: PLC0415

    try:
        item = StudyItem.get(*StudyItem.key(study))
    except StudyItem.DoesNotExist:
        return None
    except Exception:  # the record is written without it rather than not at all
        logger.exception("audit: the study's patient ID could not be read")
        return None
    value = first_value(json.loads(item.dicom_json), "00100020")
    return str(value) if value else None


def audited(
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """Wrap an HTTP Lambda handler so each invocation leaves exactly one audit record."""

    @wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        token = _noted.set(())
        status = 500
        try:
            response = handler(event, context)
            status = int(response.get("statusCode", 200))
            return response
        finally:
            subjects = _noted.get()
            _noted.reset(token)
            try:
                message = http_message(event, status, subjects=subjects, patient_of=_patient_of)
            except Exception:
                logger.exception("audit record could not be built in full")
                message = http_message(event, status)  # still one record, without the extras
            emit(message)

    return wrapper
