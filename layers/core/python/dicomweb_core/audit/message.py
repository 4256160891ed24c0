"""The audit message: its schema and the builders every record goes through (PS3.15 A.5.1).

A record is the DICOM Audit Message (PS3.15 A.5.1, the RFC 3881 / ATNA schema) as JSON:
``EventIdentification`` (EventID, EventActionCode, EventDateTime, EventOutcomeIndicator and,
for refusals, EventTypeCode), ``ActiveParticipant`` (the requestor, when there is one, and
this application), ``AuditSourceIdentification`` and ``ParticipantObjectIdentification``.
The participant objects are the patient ID (primary store only), the study with the series
and instance it is about, and a query string as sent (base64). Nothing else from a request
goes in: never a token, a body, pixel data, nor a name read from the index.

This module only builds mappings; it does not know where records go (:mod:`.sinks`) nor
how an HTTP request is classified (:mod:`.requests`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any


class AuditEvent(Enum):
    """EventID codes (DCM, PS3.16 CID 400), each naming a PS3.15 A.5.3 audit message.

    As used here: Instances Transferred (A.5.3.7) for STOW-RS and retrieval, Instances
    Accessed (A.5.3.6) for metadata and hooks that read a series, Query (A.5.3.10) for QIDO-RS,
    Study Deleted (A.5.3.8), Export (A.5.3.4) for de-identified copies and admin exports, User
    Authentication (A.5.3.12) for a refused token and Security Alert (A.5.3.11) for a refused
    scope. Application Activity is A.5.3.1.
    """

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


# EventTypeCode values (DCM, CID 401/402) for the refused-request records (401 and 403).
LOGIN = {"csd-code": "110122", "codeSystemName": "DCM", "originalText": "Login"}
RESTRICTED_FUNCTION = {
    "csd-code": "110132",
    "codeSystemName": "DCM",
    "originalText": "Use of Restricted Function",
}


# ParticipantObjectIDTypeCode values (PS3.15 A.5.1.2.4; DCM CID 404, RFC 3881).
STUDY_UID = {"csd-code": "110180", "codeSystemName": "DCM", "originalText": "Study Instance UID"}
SERIES_UID = {"csd-code": "112002", "codeSystemName": "DCM", "originalText": "Series Instance UID"}
SOP_UID = {"csd-code": "110183", "codeSystemName": "DCM", "originalText": "SOP Instance UID"}
SOP_CLASS_UID = {"csd-code": "110181", "codeSystemName": "DCM", "originalText": "SOP Class UID"}
PATIENT_NUMBER = {"csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number"}


class Outcome:
    """EventOutcomeIndicator values (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12

    @staticmethod
    def of_status(status: int) -> int:
        """The outcome of an HTTP response: a client error is minor, a server error serious."""
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
        """The requestor of an API Gateway payload v2 event, from its JWT authorizer context."""
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
        """The requesting ActiveParticipant: UserID (A.5.2.1), AlternativeUserID (A.5.2.2),
        the token's scopes as RoleIDCode, and the source IP (A.5.2.4)."""
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
        """The patient (when known) and the study, which names its series and instance."""
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


MAX_LISTED_INSTANCES = 500  # a record stays well under CloudWatch Logs' 256 KB per event


def participants_of(subjects: Iterable[Subject]) -> list[dict[str, Any]]:
    """The participant objects of several subjects, one study at a time (first seen first).

    Each study is named once, after its patient when any subject knows the patient ID. When
    the subjects name one series or instance, the study object describes it as
    :meth:`Subject.participants` does; when they name several (the instances one STOW stored
    in the study), it lists them as ``instances`` (PS3.15 A.5.3.2 names the instances
    transferred), at most :data:`MAX_LISTED_INSTANCES`, with how many more were left out."""
    by_study: dict[str, list[Subject]] = {}
    for subject in subjects:
        if subject.study:
            by_study.setdefault(subject.study, []).append(subject)
    found: list[dict[str, Any]] = []
    for study, group in by_study.items():
        patient = next((s.patient_id for s in group if s.patient_id), None)
        named = list(dict.fromkeys((s.series, s.instance) for s in group if s.series or s.instance))
        if len(named) <= 1:
            series, instance = named[0] if named else (None, None)
            found += Subject(study, series, instance, patient).participants()
            continue
        found += Subject(study, patient_id=patient).participants()
        listed = [{"series": s, "instance": i} for s, i in named[:MAX_LISTED_INSTANCES]]
        description: dict[str, Any] = {"instances": listed}
        if len(named) > MAX_LISTED_INSTANCES:
            description["instancesNotListed"] = len(named) - MAX_LISTED_INSTANCES
        found[-1]["ParticipantObjectDescription"] = description
    return found


def _object(identifier: str, id_type: Mapping[str, str], *, type_code: int, role: int) -> dict[str, Any]:
    """One ParticipantObjectIdentification entry (type code role: PS3.15 A.5.1.2.2)."""
    return {
        "ParticipantObjectID": identifier,
        "ParticipantObjectIDTypeCode": dict(id_type),
        "ParticipantObjectTypeCode": type_code,  # 1 person, 2 system object
        "ParticipantObjectTypeCodeRole": role,  # 1 patient, 3 report (study), 24 query
    }


def query_participant(raw_query: str) -> dict[str, Any]:
    """A QIDO query as a participant object: the query string, base64 (PS3.15 A.5.3.10)."""
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
    """One audit message (PS3.15 A.5.1) as a JSON-ready mapping.

    This application is always an ActiveParticipant (Source Role ID); it is the requestor
    only for :data:`SYSTEM` records. ``extra`` adds top-level keys outside the schema (the
    request id, route and store) that tie the record to the API access log."""
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
