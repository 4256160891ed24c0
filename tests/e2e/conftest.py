"""End-to-end fixtures: the local runtime (`python -m infra.local.serve`) as a subprocess.

The runtime is started on a free port with a temporary local directory, and the tests
talk to it over HTTP exactly as a DICOMweb client does; S3 and DynamoDB are inspected
through boto3 clients pointed at the runtime's moto server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0  # a loaded CI machine starts a runtime (12 worker pools) in up to ~45 s
STOP_TIMEOUT_S = 60.0
EVENT_TIMEOUT_S = 10.0
REGION = "us-east-1"
LOG_NAME = "runtime.log"
# Variables of the developer's shell that would change what the runtime does.
_RUNTIME_ENV_OVERRIDES = (
    "AUTH",
    "CORS_ORIGINS",
    "HOST",
    "LOAD",
    "LOCAL_DIR",
    "PORT",
    "PERSIST",
    "PARAMETER_OVERRIDES",
    "STABLE_AGE_SECONDS",
    "CHANGE_FEED",
    "SCHEDULES",
    "SCHEDULE_PERIOD_SECONDS",
    "SCHEDULE_START_DELAY_SECONDS",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_SESSION_TOKEN",
)


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Runtime:
    """A running local runtime and what the tests need to talk to it and look inside."""

    process: subprocess.Popen[bytes]
    local_dir: Path
    port: int
    info: dict[str, Any]
    tokens: dict[str, str]
    _log_handle: Any = field(repr=False)

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def resources(self) -> dict[str, str]:
        return dict(self.info["resources"])

    @property
    def bucket(self) -> str:
        return self.resources["InstanceBucket"]

    @property
    def table(self) -> str:
        return self.resources["IndexTable"]

    @property
    def events_file(self) -> Path:
        return Path(self.info["events_file"])

    @property
    def log_file(self) -> Path:
        return self.local_dir / LOG_NAME

    def _client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.info["moto_endpoint_url"],
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def s3(self) -> Any:
        return self._client("s3")

    @property
    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def log_tail(self, lines: int = 80) -> str:
        """The end of the runtime's stdout/stderr, for failure messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no runtime log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ index and storage
    def scan_index(self) -> list[dict[str, Any]]:
        """Every item of the index table (all pages)."""
        paginator = self.dynamodb.get_paginator("scan")
        return [item for page in paginator.paginate(TableName=self.table) for item in page["Items"]]

    def index_item(self, pk: str, sk: str) -> dict[str, Any] | None:
        response = self.dynamodb.get_item(
            TableName=self.table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        )
        return response.get("Item")

    def study_counts(self, study: str) -> tuple[int, int] | None:
        """(instance_count, series_count) of a study item, None when it is not indexed."""
        item = self.index_item(f"STUDY#{study}", "STUDY")
        if item is None:
            return None
        return int(item["instance_count"]["N"]), int(item["series_count"]["N"])

    def wait_for_counts(
        self, study: str, counts: tuple[int, int], *, timeout: float = EVENT_TIMEOUT_S
    ) -> tuple[int, int] | None:
        """Poll until the study's (instances, series) are ``counts``, as AggregatesFunction
        recounts them from the stream a moment after the stores; return the last read."""
        deadline = time.monotonic() + timeout
        while (found := self.study_counts(study)) != counts and time.monotonic() < deadline:
            time.sleep(0.2)
        return found

    def object_bytes(self, key: str, version_id: str | None = None) -> bytes | None:
        try:
            extra = {"VersionId": version_id} if version_id else {}
            return self.s3.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def indexed_instance(self, sop: str) -> dict[str, Any] | None:
        """The instance item at the place the SOP claim names (None: not indexed)."""
        claim = self.index_item(f"SOP#{sop}", "SOP")
        if claim is None:
            return None
        study, series = claim["study_uid"]["S"], claim["series_uid"]["S"]
        return self.index_item(f"STUDY#{study}", f"INSTANCE#{series}#{sop}")

    def instance_bytes(self, sop: str) -> bytes | None:
        """The bytes of the object version the index names for an instance (None: not indexed)."""
        item = self.indexed_instance(sop)
        if item is None:
            return None
        return self.object_bytes(item["s3_key"]["S"], item.get("s3_version_id", {}).get("S"))

    def current_objects(self, prefix: str) -> list[str]:
        """The keys of the current objects under ``prefix``."""
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in listing.get("Contents", [])]

    def instance_versions(self, prefix: str) -> list[dict[str, Any]]:
        """Every version of every Part 10 object under an instance's prefix (all its writes)."""
        listing = self.s3.list_object_versions(Bucket=self.bucket, Prefix=prefix)
        return [v for v in listing.get("Versions", []) if v["Key"].endswith(".dcm")]

    # ------------------------------------------------------------ events
    def read_events(self) -> list[dict[str, Any]]:
        """Every event recorded in events.jsonl so far."""
        try:
            text = self.events_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # The last line may be half written while the runtime appends to it.
        return [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]

    def wait_for_events(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        *,
        timeout: float = EVENT_TIMEOUT_S,
    ) -> list[dict[str, Any]]:
        """Poll events.jsonl until ``predicate(events)`` holds; return the events either way."""
        deadline = time.monotonic() + timeout
        events = self.read_events()
        while not predicate(events) and time.monotonic() < deadline:
            time.sleep(0.2)
            events = self.read_events()
        return events

    # ------------------------------------------------------------ lifecycle
    def stop(self) -> int:
        """SIGTERM (state saved to state.pickle), then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # our own process group only
                self.process.wait(timeout=10)
        self._log_handle.close()
        return int(self.process.returncode)


def start_runtime(
    local_dir: Path,
    port: int | None = None,
    *,
    persist: bool = True,
    parameters: str = "",
    cors_origins: Sequence[str] = (),
) -> Runtime:
    """Start `python -m infra.local.serve` and wait until it has written runtime.json.

    ``cors_origins``: the browser origins its CORS policy allows (CORS_ORIGINS), instead of
    the runtime's defaults for local viewers.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    runtime_file = local_dir / "runtime.json"
    runtime_file.unlink(missing_ok=True)  # a previous run's file must not count as "ready"
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k not in _RUNTIME_ENV_OVERRIDES}
    env["PYTHONPATH"] = os.pathsep.join(["layers/core/python", "."])
    env["PYTHONUNBUFFERED"] = "1"
    if parameters:
        env["PARAMETER_OVERRIDES"] = parameters
    if cors_origins:
        env["CORS_ORIGINS"] = ",".join(cors_origins)
    log = open(local_dir / LOG_NAME, "ab")  # noqa: SIM115 (closed by Runtime.stop)
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "infra.local.serve", "--port", str(port), "--local-dir", str(local_dir)),
            *("--persist", "on" if persist else "off"),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: cleanup never touches anything else
    )
    runtime = Runtime(process, local_dir, port, {}, {}, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if runtime_file.exists():
            try:
                runtime.info = json.loads(runtime_file.read_text())
                break
            except json.JSONDecodeError:
                pass  # still being written
        if process.poll() is not None:
            log.close()
            pytest.fail(
                f"the runtime exited with {process.returncode} before it was ready:\n{runtime.log_tail()}"
            )
        if time.monotonic() > deadline:
            runtime.stop()
            pytest.fail(f"the runtime was not ready within {START_TIMEOUT_S:.0f} s:\n{runtime.log_tail()}")
        time.sleep(0.2)
    tokens_file = Path(runtime.info["tokens_file"])
    runtime.tokens = dict(json.loads(tokens_file.read_text())["tokens"])
    return runtime


def stop_runtime(runtime: Runtime) -> None:
    """Stop with SIGTERM and require a clean exit (state saved, code 0)."""
    code = runtime.stop()
    assert code == 0, f"the runtime exited with {code} on SIGTERM:\n{runtime.log_tail()}"
    assert (runtime.local_dir / "state.pickle").exists(), runtime.log_tail()


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """One local runtime for the whole session (auth on, default CORS origins)."""
    started = start_runtime(tmp_path_factory.mktemp("local-runtime"))
    try:
        yield started
    finally:
        stop_runtime(started)
