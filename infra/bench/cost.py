"""What each operation really costs: backend calls, capacity, storage, and dollars.

Runs the local runtime with the template's defaults (all hooks on: stability, series
metadata, bundles, de-identification, inference) and ``COUNT_BACKEND_CALLS`` set, so
every worker records the AWS calls of each invocation (infra.accounting.invocations).
Then, one after the other, each operation runs and the stack is left to go quiet (every
hook queue empty, no invocation running):

- STOW-RS of a CT series of 512x512 instances in requests of at most 4 MiB, with every
  hook it triggers;
- QIDO-RS: the study list, and a selective query (PatientID);
- WADO-RS: the series metadata, and one frame;
- DELETE of the study, with its hooks.

Between operations every DynamoDB table is scanned and every S3 bucket's versions are
listed (with the bench's own clients, which are not counted), so write and read units
come from the items as stored (infra.accounting.dynamodb), and storage from what is
there. infra/bench/cost_report.py turns the figures into tables and dollars.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom
import requests

from dicomweb_core.wado.redirects import WAIT_PARAMETER
from dicomweb_core.web.multipart import encode_multipart, multipart_content_type
from infra.accounting.dynamodb import Snapshot, Storage, TableSchema, Units, consumed_units, table_storage
from infra.accounting.invocations import ENVIRONMENT_VARIABLE, Invocation, load_invocations
from infra.bench.cost_report import render
from infra.bench.stow import _batches, bench_options, ct_series
from infra.local.serve import LocalStack, Options

HTTP_API_METERING_BYTES = 512 * 1024  # an HTTP API request is metered per 512 KB
STOW_REQUEST_BYTES = 4 * 1024 * 1024
COST_DOC = Path("docs/cost.md")
GENERATED = "<!-- Written by `make bench` (infra/bench/cost.py): change the code, then run it again. -->"


@dataclass
class Phase:
    """One operation as measured: its invocations and what it consumed, for ``per`` units."""

    label: str
    unit: str  # what ``per`` counts: "instance" or "request"
    per: int
    invocations: list[Invocation]
    dynamodb: Units
    audit_bytes: int
    http_requests: int = 0  # API Gateway requests, metered per 512 KB of request body
    proxied_gets: int = 0  # S3 GETs through presigned links (the object proxy, not botocore)
    by_function: dict[str, Units] = field(default_factory=dict)  # DynamoDB units per function


@dataclass
class AtRest:
    """Storage after an operation: DynamoDB per table, S3 per bucket and kind of object."""

    tables: dict[str, Storage]
    s3_bytes: dict[str, Counter[str]]  # bucket -> category -> bytes (every version)
    s3_objects: dict[str, Counter[str]]


@dataclass
class Measurement:
    instances: int
    sent_bytes: int  # Part 10 bytes sent by STOW
    phases: list[Phase] = field(default_factory=list)
    stored: AtRest | None = None  # after STOW and its hooks
    deleted: AtRest | None = None  # after DELETE and its hooks
    memory_mb: dict[str, int] = field(default_factory=dict)
    table_names: dict[str, str] = field(default_factory=dict)  # physical -> logical id
    bucket_names: dict[str, str] = field(default_factory=dict)


class _World:
    """The running stack seen from outside: snapshots, quiet waits, timed phases."""

    def __init__(self, stack: LocalStack, calls: Path) -> None:
        self.stack, self.calls = stack, calls
        template, ids = stack.template, stack.stack.physical_ids
        self.dynamodb, self.s3, self.sqs = (stack.stack.client(s) for s in ("dynamodb", "s3", "sqs"))
        self.tables = {ids[t]: t for t in template.resources_of_type("AWS::DynamoDB::Table")}
        self.buckets = {ids[b]: b for b in template.resources_of_type("AWS::S3::Bucket")}
        self.queues = [ids[source.queue] for source in template.queue_sources()]
        self.schemas = {
            name: TableSchema.from_description(self.dynamodb.describe_table(TableName=name)["Table"])
            for name in self.tables
        }

    def snapshot(self) -> Snapshot:
        items: dict[str, list[Any]] = {}
        for name in self.tables:
            for page in self.dynamodb.get_paginator("scan").paginate(TableName=name):
                items.setdefault(name, []).extend(page["Items"])
        return Snapshot(items, self.schemas)

    def at_rest(self, snapshot: Snapshot) -> AtRest:
        tables = {
            name: table_storage(snapshot.items.get(name, {}).values(), schema)
            for name, schema in self.schemas.items()
        }
        sizes: dict[str, Counter[str]] = {}
        counts: dict[str, Counter[str]] = {}
        for bucket in self.buckets:
            sizes[bucket], counts[bucket] = Counter(), Counter()
            for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for version in page.get("Versions", []):
                    kind = _category(version["Key"]) + ("" if version["IsLatest"] else " (noncurrent)")
                    sizes[bucket][kind] += int(version["Size"])
                    counts[bucket][kind] += 1
        return AtRest(tables, sizes, counts)

    def audit_size(self) -> int:
        path = self.stack.audit_path
        return path.stat().st_size if path.exists() else 0

    def wait_quiet(self, *, settle_s: float = 4.0, timeout_s: float = 1800.0) -> None:
        """Until every hook queue is empty and no worker wrote a record for ``settle_s``."""
        deadline, quiet_since, last = time.monotonic() + timeout_s, None, None
        while time.monotonic() < deadline:
            state = (self._queued(), sum(p.stat().st_size for p in self.calls.glob("*.jsonl")))
            if state[0] == 0 and state == last:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    return
            else:
                quiet_since = None
            last = state
            time.sleep(1.0)
        raise RuntimeError(f"the hooks did not go quiet in {timeout_s:.0f} s")

    def _queued(self) -> int:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        total = 0
        for url in self.queues:
            attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
            total += sum(int(attributes.get(n, 0)) for n in names)
        return total

    def phase(
        self, label: str, unit: str, per: int, action: Callable[[], tuple[int, int]], *, quiet: bool = True
    ) -> tuple[Phase, Snapshot]:
        """Run ``action`` (which returns metered HTTP requests and proxied GETs), wait for
        the hooks, and account for everything that ran meanwhile."""
        before, audit = self.snapshot(), self.audit_size()
        started = time.time()
        http_requests, proxied = action()
        if quiet:
            self.wait_quiet()
        invocations = load_invocations(self.calls, since=started, until=time.time())
        after = self.snapshot()

        def units(subset: list[Invocation]) -> Units:
            writes = [w for i in subset for w in i.tally.writes]
            reads = [r for i in subset for r in i.tally.reads]
            return consumed_units(writes, reads, self.schemas, before=before, after=after)

        functions = sorted({i.function for i in invocations})
        phase = Phase(label, unit, per, invocations, units(invocations), self.audit_size() - audit)
        phase.http_requests, phase.proxied_gets = http_requests, proxied
        phase.by_function = {f: units([i for i in invocations if i.function == f]) for f in functions}
        return phase, after


def _category(key: str) -> str:
    """A kind of object, from its key: the first folder and the file's extension."""
    folder = key.split("/", 1)[0]
    name = key.rsplit("/", 1)[-1]
    extension = name.split(".", 1)[1] if "." in name else ""
    return f"{folder}/*.{extension}" if extension else f"{folder}/*"


def _metered(body_bytes: int) -> int:
    return max(1, math.ceil(body_bytes / HTTP_API_METERING_BYTES))


class _Client:
    """The bench's HTTP client: counts metered API requests and presigned-link GETs."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.metered = self.proxied = 0

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(
            method, f"{self.base_url}{path}", allow_redirects=False, timeout=120, **kwargs
        )
        self.metered += _metered(len(kwargs.get("data") or b""))
        while response.is_redirect and WAIT_PARAMETER in response.headers["Location"]:
            # a large retrieval's body still being built: the request, again (another round)
            response = self.session.request(
                method, response.headers["Location"], allow_redirects=False, timeout=120
            )
            self.metered += 1
        if response.is_redirect:  # a presigned link to an object: one S3 GET, not counted by botocore
            self.proxied += 1
            response = requests.get(response.headers["Location"], timeout=120)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response

    def take(self) -> tuple[int, int]:
        taken = (self.metered, self.proxied)
        self.metered = self.proxied = 0
        return taken


def measure(stack: LocalStack, calls: Path, *, instances: int, repeats: int) -> Measurement:
    world = _World(stack, calls)
    series = ct_series(instances, size=512)
    first = pydicom.dcmread(io.BytesIO(series[0]), stop_before_pixels=True)
    study, series_uid, sop = first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    result = Measurement(
        instances=instances,
        sent_bytes=sum(len(i) for i in series),
        memory_mb={name: spec.memory for name, spec in stack.template.functions().items()},
        table_names=world.tables,
        bucket_names=world.buckets,
    )
    uploader = _Client(stack.base_url, stack.tokens["uploader"])
    viewer = _Client(stack.base_url, stack.tokens["viewer"])
    admin = _Client(stack.base_url, stack.tokens["admin"])

    def stow() -> tuple[int, int]:
        for batch in _batches(series, STOW_REQUEST_BYTES):
            body, boundary = encode_multipart(({"Content-Type": "application/dicom"}, b) for b in batch)
            content_type = multipart_content_type(boundary, "application/dicom")
            uploader.call("POST", "/studies", data=body, headers={"Content-Type": content_type})
        return uploader.take()

    def reads(path: str, accept: str | None = None, *, times: int = repeats) -> Callable[[], tuple[int, int]]:
        def run() -> tuple[int, int]:
            for _ in range(times):
                viewer.call("GET", path, headers={"Accept": accept} if accept else {})
            return viewer.take()

        return run

    def delete() -> tuple[int, int]:
        admin.call("DELETE", f"/studies/{study}")
        return admin.take()

    label = f"STOW-RS, CT 512x512 (+ hooks), {instances} instances"
    phase, stored = world.phase(label, "instance", instances, stow)
    result.phases.append(phase)
    result.stored = world.at_rest(stored)
    series_path = f"/studies/{study}/series/{series_uid}"
    for label, action in (
        ("QIDO-RS study list (`/studies`)", reads("/studies")),
        (
            f"QIDO-RS selective (`PatientID={first.PatientID}`)",
            reads(f"/studies?PatientID={first.PatientID}"),
        ),
        ("WADO-RS series metadata", reads(f"{series_path}/metadata")),
        ("WADO-RS one frame", reads(f"{series_path}/instances/{sop}/frames/1")),
    ):
        result.phases.append(world.phase(label, "request", repeats, action, quiet=False)[0])
    # A whole-series retrieval is over the response limit: its body is built on the first
    # request (and kept for BundleRetentionDays), later ones are redirected to it.
    multipart = 'multipart/related; type="application/dicom"'
    for label, count in (("first: its body built", 1), ("again", repeats)):
        name = f"WADO-RS series retrieve, {label} ({result.sent_bytes / 1e6:.0f} MB)"
        action = reads(series_path, multipart, times=count)
        result.phases.append(world.phase(name, "request", count, action, quiet=False)[0])
    phase, deleted = world.phase(
        f"DELETE study (+ hooks), {instances} instances", "instance", instances, delete
    )
    result.phases.append(phase)
    result.deleted = world.at_rest(deleted)
    return result


def cost_options(local_dir: Path, stable_age_seconds: int) -> Options:
    """The benchmarks' runtime (no snapshots, no scheduled runs) with the template's
    defaults instead of quiet hooks: every hook on, as a deployment runs."""
    return replace(bench_options(local_dir), stable_age_seconds=stable_age_seconds, parameter_overrides=())


def run(*, quick: bool = False, instances: int | None = None, out: Path | None = COST_DOC) -> str:
    count = instances or (30 if quick else 300)
    with tempfile.TemporaryDirectory() as local_dir:
        calls = Path(local_dir) / "backend-calls"
        os.environ[ENVIRONMENT_VARIABLE] = str(calls)  # inherited by the worker processes
        try:
            # A stable age long enough that no series is announced mid-upload on a busy machine.
            stack = LocalStack(cost_options(Path(local_dir), stable_age_seconds=15))
            stack.start()
            try:
                measurement = measure(stack, calls, instances=count, repeats=3 if quick else 5)
            finally:
                stack.stop()
        finally:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
    report = render(measurement)
    if out is not None:
        out.write_text(f"# What the store costs\n\n{GENERATED}\n\n{report}\n")
    return report
