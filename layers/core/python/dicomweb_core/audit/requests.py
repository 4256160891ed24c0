"""The audit record of one API request: which PS3.15 A.5.3 message it is, and about what.

:func:`classify` maps a route and its response status to an EventID, EventActionCode and,
for refusals, EventTypeCode; :func:`http_message` builds the whole record from the API
Gateway payload v2 event: the requestor from the JWT authorizer context, the study, series
and instance from the path parameters, the patient ID when the caller knows it, and for a
query the query string. Both the functions (through :func:`~dicomweb_core.audit.decorator.audited`)
and the local gateway, for requests no function answered, write records built here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dicomweb_core.audit.message import (
    LOGIN,
    RESTRICTED_FUNCTION,
    AuditEvent,
    Outcome,
    Requestor,
    Subject,
    participants_of,
    query_participant,
    record,
)
from dicomweb_core.web.roots import is_research


def classify(method: str, route_key: str, status: int) -> tuple[AuditEvent, str, Mapping[str, str] | None]:
    """The audit event for a request: (EventID, EventActionCode, EventTypeCode).

    A 401 is a failed User Authentication (PS3.15 A.5.3.12, type Login) and a 403 a Security
    Alert (A.5.3.11, type Use of Restricted Function), whatever the route. Otherwise by route:
    ``/admin/`` is an Export (A.5.3.4); POST stores (Instances Transferred, A.5.3.7, create);
    DELETE is Study Deleted (A.5.3.8); a search resource is a Query (A.5.3.10); ``metadata``
    is Instances Accessed (A.5.3.6); any other GET transfers instances (A.5.3.7, read)."""
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
    """The audit record of one API request and its response status.

    ``subjects`` are the objects the handler noted that its path does not name (the studies
    of a STOW body), or the patient ID of the path's own study. ``patient_of`` looks up a
    study's patient ID when nobody noted it; it is asked only for the primary store, since
    records about the de-identified store carry no patient ID."""
    context = event.get("requestContext") or {}
    method = str((context.get("http") or {}).get("method") or "")
    route_key = str(
        event.get("routeKey") or context.get("routeKey") or f"{method} {event.get('rawPath', '')}"
    )
    audit_event, action, event_type = classify(method, route_key, status)
    parameters = event.get("pathParameters") or {}
    in_path = Subject(parameters.get("study"), parameters.get("series"), parameters.get("instance"))
    primary = not is_research(str(event.get("rawPath", "")))
    everything = [in_path, *subjects]
    if primary and patient_of is not None:  # looked up only where no subject knows the patient
        known = {s.study for s in everything if s.study and s.patient_id}
        for study in dict.fromkeys(s.study for s in everything if s.study and s.study not in known):
            everything.append(Subject(study, patient_id=patient_of(study)))
    objects = participants_of(everything)
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
