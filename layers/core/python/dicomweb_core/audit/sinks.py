"""Where audit records go, and what happens when they cannot get there.

In the cloud each record goes to its own CloudWatch Logs group (``AUDIT_LOG_GROUP``, retention
set in template.yaml), apart from the function log, which has other readers and a shorter
retention; locally to ``$LOCAL_DIR/audit.jsonl`` (``AUDIT_FILE``); with neither (tests,
tools), to the function log. :func:`emit` is fail-open: a lost record is counted and alarmed,
never turned into a failed request.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import boto3

from dicomweb_core.observability import logger


class AuditSink(Protocol):
    """A destination for audit records: one ``write`` per record, which may raise."""

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
    """This process's audit destination, read from the environment once (``cache_clear`` re-reads)."""
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
