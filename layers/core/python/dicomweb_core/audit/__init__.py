"""The audit trail: one record per request and per hook action, after PS3.15 Annex A.5.

Every record is a DICOM Audit Message (PS3.15 A.5.1) as JSON. The package is in four
modules, each importing only those before it:

- :mod:`.message`: the schema and its builders (:class:`AuditEvent`, :class:`Outcome`,
  :class:`Subject`, :func:`record`, :func:`hook_record` for the hooks' own actions);
- :mod:`.sinks`: where records go (a CloudWatch Logs group in the cloud, ``audit.jsonl``
  locally, the function log otherwise) and :func:`emit`, which never fails a request;
- :mod:`.requests`: an API request classified as a PS3.15 A.5.3 message
  (:func:`classify`) and its record (:func:`http_message`);
- :mod:`.decorator`: :func:`audited`, which gives each HTTP invocation exactly one record,
  and :func:`note`, with which a handler names what its path does not.

Requests the API Gateway authorizer refuses never reach a function: in the cloud the API's
access log, written to the same log group, records them; locally the gateway builds the
same record with :func:`http_message` and writes it to the same ``audit.jsonl``.

Import the names from here (``from dicomweb_core import audit``; ``audit.emit(...)``). To
replace the destination in a test, patch :func:`dicomweb_core.audit.sinks.sink`, which
:func:`emit` calls.
"""

from dicomweb_core.audit.decorator import audited, note
from dicomweb_core.audit.message import (
    LOGIN,
    PATIENT_NUMBER,
    RESTRICTED_FUNCTION,
    SERIES_UID,
    SOP_CLASS_UID,
    SOP_UID,
    STUDY_UID,
    SYSTEM,
    AuditEvent,
    Outcome,
    Requestor,
    Subject,
    hook_record,
    query_participant,
    record,
)
from dicomweb_core.audit.requests import classify, http_message
from dicomweb_core.audit.sinks import (
    AUDIT_WRITE_FAILED,
    AuditSink,
    CloudWatchSink,
    FileSink,
    LogSink,
    emit,
    reference,
    sink,
)

__all__ = [
    "AUDIT_WRITE_FAILED",
    "LOGIN",
    "PATIENT_NUMBER",
    "RESTRICTED_FUNCTION",
    "SERIES_UID",
    "SOP_CLASS_UID",
    "SOP_UID",
    "STUDY_UID",
    "SYSTEM",
    "AuditEvent",
    "AuditSink",
    "CloudWatchSink",
    "FileSink",
    "LogSink",
    "Outcome",
    "Requestor",
    "Subject",
    "audited",
    "classify",
    "emit",
    "hook_record",
    "http_message",
    "note",
    "query_participant",
    "record",
    "reference",
    "sink",
]
