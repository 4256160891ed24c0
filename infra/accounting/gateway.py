"""The local API gateway's own time per request (opt-in: ``COUNT_BACKEND_CALLS``).

With ``COUNT_BACKEND_CALLS`` set, the local runtime's gateway (infra/local/gateway.py)
appends one JSON line per HTTP request to ``<dir>/gateway/<pid>.jsonl``, beside the
workers' records (:mod:`infra.accounting.invocations`): when the request arrived, how long
the gateway took from its headers to the last byte of the answer, and, when a function
answered, which one, with the request id its event carried and how long the invocation
took as the gateway saw it (sending the event to the worker, the handler, the answer back).
The request id joins a request with the worker's record of its invocation, so a request's
time splits into the gateway's own part, the exchange with the worker, the handler's own
code and its AWS calls (:mod:`infra.accounting.breakdown`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.accounting.invocations import ENVIRONMENT_VARIABLE, calls_directory

SUBDIRECTORY = "gateway"  # under the invocation records' directory (not read as invocations)


@dataclass(frozen=True)
class GatewayRecord:
    method: str
    path: str  # without the query string
    status: int
    started: float  # seconds since the epoch, when the request's headers had been read
    total_ms: float  # headers read to answer written (body read, authorizer, invoke, answer)
    function: str | None = None  # None: answered by the gateway itself (an object link, an error)
    request_id: str | None = None
    invoke_ms: float = 0.0  # the invocation, as the gateway waited for it
    request_bytes: int = 0  # the request's body (0 for an upload streamed to a bucket)
    response_bytes: int = 0  # the answer's body

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> GatewayRecord:
        return cls(
            method=str(document["method"]),
            path=str(document["path"]),
            status=int(document["status"]),
            started=float(document["started"]),
            total_ms=float(document["total_ms"]),
            function=document.get("function"),
            request_id=document.get("request_id"),
            invoke_ms=float(document.get("invoke_ms", 0.0)),
            request_bytes=int(document.get("request_bytes", 0)),
            response_bytes=int(document.get("response_bytes", 0)),
        )


class GatewayRecorder:
    """Appends the gateway's records to one file (the gateway serves from many threads)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SUBDIRECTORY / f"{os.getpid()}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def __call__(self, record: GatewayRecord) -> None:
        line = (json.dumps(record.to_json(), separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def recorder_from_environment() -> GatewayRecorder | None:
    """A recorder when ``COUNT_BACKEND_CALLS`` is set, else None."""
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return GatewayRecorder(calls_directory(setting)) if setting else None


def load_gateway_records(
    directory: Path, *, since: float | None = None, until: float | None = None
) -> list[GatewayRecord]:
    """Every request the gateway recorded that arrived in ``[since, until)``, oldest first."""
    records = []
    for path in sorted((directory / SUBDIRECTORY).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = GatewayRecord.from_json(json.loads(line))
            except (ValueError, KeyError):
                continue  # a line being written right now
            if (since is None or record.started >= since) and (until is None or record.started < until):
                records.append(record)
    return sorted(records, key=lambda r: r.started)
