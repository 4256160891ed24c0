"""Side by side with Orthanc: the same client and the same data against both DICOMweb servers.

Orthanc 1.10 and its DICOMweb plugin come from Debian, installed by the bench itself as CI
installs them (:mod:`infra.debian`), and run on loopback with the package's defaults
(:mod:`infra.orthanc`). Our side is the local runtime as ``make serve`` runs it (moto, the
gateway, the Lambda handlers in worker processes), started twice: with the hooks off
(de-identification and inference, as the other benchmarks run it) and with the template's
defaults (hooks on). Each runtime runs in a process of its own, as Orthanc does, so the
client never shares an interpreter with the server it measures.

Both sides get the same generated instances through one :class:`DICOMwebClient` each (one
``requests`` session, connections kept alive), and every figure is a median over repeats:

- STOW-RS instances/s: a 512 x 512 CT series in requests of 7 instances, and 64 x 64
  instances one per request (a gateway forwarding each instance as it arrives);
- QIDO-RS latency, selective (``PatientID``) and broad (one month of ``StudyDate``), at
  several numbers of studies (2 instances each). Orthanc receives them through STOW-RS; our
  index receives the study, series and posting items that STOW-RS would have written for
  the same attributes, put straight into moto (as :mod:`infra.bench.qido` does), because
  storing 10,000 studies through moto one instance at a time would take most of an hour;
- series metadata latency at 100 and 500 instances;
- latency of one native 512 x 512 frame (``application/octet-stream``, as stored);
- series retrieve MB/s (the CT series, ``application/dicom``).

Before reads are measured, each side is left to settle (our hook queues empty, the stable
age passed, so pre-built metadata exists). Our series body is built by the first retrieve
and read by the others; the median leaves that first one out. The ratio is Orthanc's time divided
by ours (ours divided by Orthanc's for throughput): above 1 we are faster.

Run alone with ``python -m infra.bench.versus_orthanc [--quick] [--studies N]``. A full run
rewrites docs/bench-vs-orthanc.md and docs/images/bench-vs-orthanc.png; every run saves its
figures to .local/bench-vs-orthanc.json, from which ``--from-results`` draws them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import requests
from dicomweb_client import DICOMwebClient
from moto.backends import get_backend
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomweb_core.index import items, keys
from dicomweb_core.index.models import InstanceItem, RegistryItem
from infra import debian, orthanc
from infra.accounting.invocations import ENVIRONMENT_VARIABLE
from infra.bench import qido
from infra.bench.stow import bench_options
from infra.datasets.generate import make_dataset, new_uid
from infra.local.provision import ACCOUNT_ID
from infra.local.serve import REGION, LocalStack

DOC = Path("docs/bench-vs-orthanc.md")
PLOT = Path("docs/images/bench-vs-orthanc.png")
LOG_DIR = Path(".local")  # the local runtimes' logs, as `make serve` keeps its own
RESULTS = LOG_DIR / "bench-vs-orthanc.json"
DEFAULT_STUDIES = 10_000
QUICK_STUDIES = 300
INSTANCES_PER_STUDY = 2  # one or two series per study (qido.plan_studies' modality mix)
CT_BATCH = 7
SETTLE_TIMEOUT_S = 900.0
# With a preamble, the client's pydicom.dcmwrite writes a Part 10 file (preamble, "DICM",
# file meta), as a modality would send it; without one, the bare data set.
PREAMBLE = bytes(128)
FRAME_MEDIA_TYPES = (("application/octet-stream", "*"),)  # as stored, as OHIF asks
ORTHANC = "Orthanc"
HOOKS_OFF = "ours, hooks off"
HOOKS_ON = "ours, hooks on"
SIDES = (ORTHANC, HOOKS_OFF, HOOKS_ON)
TIMES = "\N{MULTIPLICATION SIGN}"
NONE = "\N{EN DASH}"


# ------------------------------------------------------------------ figures and table
@dataclass(frozen=True)
class Figure:
    """One measured operation: its unit says which way is faster, ``goal`` is the issue's
    target for the hooks-off ratio."""

    key: str
    label: str
    unit: str  # "inst/s", "MB/s" (higher is faster) or "ms" (lower is faster)
    goal: float | None = None

    @property
    def higher_is_faster(self) -> bool:
        return self.unit != "ms"


FIGURES = (
    Figure("stow_ct", "STOW-RS, CT 512 x 512, 7 per request", "inst/s", 0.25),
    Figure("stow_small", "STOW-RS, 64 x 64, 1 per request", "inst/s", 0.25),
    Figure("qido_patient", "QIDO-RS PatientID", "ms", 0.5),
    Figure("qido_dates", "QIDO-RS StudyDate (one month)", "ms", 0.5),
    Figure("metadata", "Series metadata", "ms", 1.0),
    Figure("frame", "One frame, 512 x 512 native", "ms", 1.5),
    Figure("retrieve", "Series retrieve, CT 512 x 512", "MB/s", 1.0),
)
FIGURE = {figure.key: figure for figure in FIGURES}


@dataclass(frozen=True)
class Point:
    """Where a figure was measured: ``figure`` at ``size`` (studies for QIDO-RS, instances
    in the series for metadata and retrieval, instances sent for STOW-RS)."""

    figure: str
    size: int


Measurements = dict[Point, float]


def speed_ratio(figure: Figure, ours: float, theirs: float) -> float:
    """How many times faster we are: > 1 faster, < 1 slower (latency: theirs / ours)."""
    if ours <= 0 or theirs <= 0:
        raise ValueError(f"{figure.key}: figures must be positive, got ours={ours} and theirs={theirs}")
    return ours / theirs if figure.higher_is_faster else theirs / ours


def format_value(value: float, unit: str) -> str:
    """``12.3 ms``, ``285 inst/s``: three significant digits at most, one decimal below 100."""
    text = f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"
    return f"{text} {unit}"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}{TIMES}"


def row_label(point: Point) -> str:
    figure = FIGURE[point.figure]
    if point.figure.startswith("qido"):
        return f"{figure.label}, {point.size:,} studies"
    if point.figure in ("metadata", "retrieve"):
        return f"{figure.label}, {point.size:,} instances"
    return figure.label


def markdown_table(results: dict[str, Measurements]) -> str:
    """One row per point measured on Orthanc: each side's figure and our two ratios.

    ``results`` maps :data:`ORTHANC`, :data:`HOOKS_OFF` and :data:`HOOKS_ON` to their figures;
    a side may lack a point (shown as a dash)."""
    lines = [
        f"| Operation | {ORTHANC} | Ours, hooks off | Ratio, hooks off | Ours, hooks on | Ratio, hooks on "
        "| Goal (hooks off) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {figure.key: index for index, figure in enumerate(FIGURES)}
    for point in sorted(results[ORTHANC], key=lambda p: (order[p.figure], p.size)):
        figure = FIGURE[point.figure]
        theirs = results[ORTHANC][point]
        cells = [row_label(point), format_value(theirs, figure.unit)]
        ratio_off: float | None = None
        for side in (HOOKS_OFF, HOOKS_ON):
            ours = results.get(side, {}).get(point)
            if ours is None:
                cells += [NONE, NONE]
                continue
            ratio = speed_ratio(figure, ours, theirs)
            ratio_off = ratio if side == HOOKS_OFF else ratio_off
            cells += [format_value(ours, figure.unit), format_ratio(ratio)]
        goal = NONE
        if figure.goal is not None:
            verdict = "" if ratio_off is None else (" met" if ratio_off >= figure.goal else " **missed**")
            goal = f"≥ {figure.goal:g}{TIMES}{verdict}"
        cells.append(goal)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Measurements], path: Path) -> None:
    """Latency against dataset size: QIDO-RS against studies, metadata against instances."""
    from matplotlib.figure import Figure as PlotFigure  # noqa: PLC0415 (only a full run draws)
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    canvas = PlotFigure(figsize=(11, 4.2), layout="constrained")
    qido_axes, metadata_axes = canvas.subplots(1, 2)
    colours = {ORTHANC: "tab:orange", HOOKS_OFF: "tab:blue", HOOKS_ON: "tab:green"}
    for side, measured in results.items():
        for key, style in (("qido_patient", "-o"), ("qido_dates", "--s")):
            points = sorted((p.size, v) for p, v in measured.items() if p.figure == key)
            if points:
                sizes, values = zip(*points, strict=True)
                qido_axes.plot(
                    sizes, values, style, color=colours[side], label=f"{side}: {FIGURE[key].label[8:]}"
                )
        points = sorted((p.size, v) for p, v in measured.items() if p.figure == "metadata")
        if points:
            sizes, values = zip(*points, strict=True)
            metadata_axes.plot(sizes, values, "-o", color=colours[side], label=side)
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    qido_axes.set(
        xscale="log",
        yscale="log",
        xlabel="studies in the store",
        ylabel="median latency (ms, log scale)",
        title="QIDO-RS",
    )
    for axis in (qido_axes.xaxis, qido_axes.yaxis):
        axis.set_major_formatter(plain)
    metadata_axes.set(
        xlabel="instances in the series",
        ylabel="median latency (ms)",
        title="WADO-RS series metadata",
        xlim=(0, None),
        ylim=(0, None),
    )
    for axes in (qido_axes, metadata_axes):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.savefig(path, dpi=110)


# ------------------------------------------------------------------ generated data
def ct_series(count: int, *, size: int = 512, seed: int = 7) -> list[Dataset]:
    """An axial CT series: a water cylinder (0 HU) in air (-1000 HU) with noise, stored as
    unsigned 16-bit values with Rescale Intercept -1024, as scanners write it."""
    study, series, frame_of_reference = new_uid(), new_uid(), new_uid()
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size]
    half = size / 2
    body = ((rows - half) / (0.35 * size)) ** 2 + ((columns - half) / (0.45 * size)) ** 2 <= 1.0
    spacing = 500.0 / size
    datasets = []
    for index in range(count):
        hu = np.where(body, 0.0, -1000.0) + rng.normal(0.0, 15.0, size=(size, size))
        ds = make_dataset(
            study=study,
            series=series,
            rows=size,
            columns=size,
            PatientName="Bench^Versus",
            PatientID="BENCH-VS",
            FrameOfReferenceUID=frame_of_reference,
            InstanceNumber=index + 1,
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            ImagePositionPatient=[-250.0, -250.0, -index * 1.25],
            SliceThickness=1.25,
            PixelSpacing=[spacing, spacing],
            RescaleIntercept=-1024,
            RescaleSlope=1,
            BitsStored=12,
            HighBit=11,
        )
        ds.PixelData = np.clip(np.round(hu + 1024), 0, 4095).astype(np.uint16).tobytes()
        ds.preamble = PREAMBLE
        datasets.append(ds)
    return datasets


def part10_size(datasets: Sequence[Dataset]) -> int:
    """Bytes of the Part 10 files the client sends (and a series retrieve returns)."""
    total = 0
    for ds in datasets:
        with BytesIO() as buffer:
            pydicom.dcmwrite(buffer, ds)
            total += len(buffer.getvalue())
    return total


def study_dataset(plan: qido.StudyPlan, series_number: int, number: int) -> Dataset:
    """The instance whose index items :func:`infra.bench.qido.load` writes for ``plan``:
    the same study, series and instance attributes, as a Part 10 dataset with 4 x 4 pixels."""
    instance = qido.generated_instance(plan, series_number, number)
    with warnings.catch_warnings():  # the generated SPS ID is longer than SH allows; both sides get it
        warnings.simplefilter("ignore", UserWarning)
        ds = Dataset.from_json({**instance.study_json, **instance.series_json, **instance.instance_json})
    ds.SpecificCharacterSet = "ISO_IR 192"  # the names are Unicode (Müller, Zoë, ...)
    ds.Modality = instance.modality
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(32)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = PREAMBLE
    return ds


def study_datasets(plans: Sequence[qido.StudyPlan]) -> Iterator[Dataset]:
    for plan in plans:
        for series_number, (_, _, size) in enumerate(plan.series):
            for number in range(1, size + 1):
                yield study_dataset(plan, series_number, number)


@dataclass(frozen=True)
class Config:
    """How much is measured: a full run, or ``--quick`` for a smoke test."""

    studies: int
    ct_instances: int  # per STOW-RS repeat; the first series is also retrieved
    small_instances: int
    stow_repeats: int
    metadata_sizes: tuple[int, ...]
    runs: int  # requests per latency figure
    frame_runs: int
    retrieve_runs: int

    @property
    def study_sizes(self) -> tuple[int, ...]:
        """Numbers of studies QIDO-RS is measured at: N/100 (at least 10), N/10 and N."""
        return tuple(sorted({max(self.studies // 100, 10), max(self.studies // 10, 10), self.studies}))

    @classmethod
    def of(cls, *, quick: bool, studies: int | None = None) -> Config:
        if quick:
            return cls(studies or QUICK_STUDIES, 14, 20, 2, (20, 100), 5, 10, 2)
        return cls(studies or DEFAULT_STUDIES, 35, 150, 3, (100, 500), 15, 50, 3)


@dataclass
class Data:
    """Everything both sides receive, generated once."""

    ct: list[list[Dataset]]
    small: list[list[Dataset]]
    metadata: dict[int, list[Dataset]]
    ct_bytes: int

    @classmethod
    def generate(cls, config: Config) -> Data:
        ct = [ct_series(config.ct_instances, seed=r) for r in range(config.stow_repeats)]
        small = [ct_series(config.small_instances, size=64, seed=r) for r in range(config.stow_repeats)]
        metadata = {count: ct_series(count, size=64, seed=count) for count in config.metadata_sizes}
        return cls(ct, small, metadata, part10_size(ct[0]))


# ------------------------------------------------------------------ the two servers
@dataclass
class Side:
    """A DICOMweb server under test: a client, and how to load and settle it."""

    name: str
    client: DICOMwebClient
    load_studies: Callable[[int, int], None]  # (studies already loaded, studies wanted)
    settle: Callable[[], None] = field(default=lambda: None)
    pid: int | None = None  # the server's process, when it is ours (for a profiler)


@contextmanager
def orthanc_side() -> Iterator[Side]:
    """Orthanc from Debian on loopback (installed if missing), with an empty storage."""
    debian.ensure_packages(*orthanc.PACKAGES)
    with tempfile.TemporaryDirectory(prefix="bench-orthanc-") as directory:
        server = orthanc.launch(Path(directory), name="BENCH", verbose=False)
        session = requests.Session()
        try:
            client = DICOMwebClient(server.dicomweb_url, session=session, timeout=120)

            def load(loaded: int, wanted: int) -> None:
                plans = qido.plan_studies(wanted, INSTANCES_PER_STUDY)[loaded:]
                batch: list[Dataset] = []
                for ds in study_datasets(plans):
                    batch.append(ds)
                    if len(batch) == 100:
                        client.store_instances(batch)
                        batch = []
                if batch:
                    client.store_instances(batch)

            yield Side(ORTHANC, client, load)
        finally:
            session.close()
            server.stop()


def _settle_local(stack: LocalStack, timeout_s: float) -> float:
    """Wait until the runtime is idle, twice in a row a second apart: the change feed has
    read every record of the index tables' streams (the runtime trims the records every
    consumer has passed) and every hook queue is empty (visible, in flight, delayed: the
    stability queue holds each instance for the stable age). The seconds it took."""
    started = time.monotonic()
    sqs, dynamodb = stack.stack.client("sqs"), get_backend("dynamodb")[ACCOUNT_ID][REGION]
    urls = [stack.stack.physical_ids[source.queue] for source in stack.template.queue_sources()]
    stream_arns = (
        {stack.stack.attributes[source.table]["StreamArn"] for source in stack.template.stream_sources()}
        if stack.options.change_feed
        else set()
    )
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]

    def unread(arn: str) -> bool:
        # moto runs in this process; its shard keeps the records a consumer has not passed
        # (the runtime trims the rest). Read-only: a GetRecords from here would race the trim.
        table = dynamodb.tables.get(arn.split(":", 5)[5].split("/")[1])
        shard = getattr(table, "stream_shard", None)
        return bool(shard is not None and shard.items)

    time.sleep(1.0)
    quiet = 0
    while quiet < 2:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"the local runtime was still busy after {timeout_s:.0f} s")
        busy = any(unread(arn) for arn in stream_arns) or any(
            int(value)
            for url in urls
            for value in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"].values()
        )
        quiet = 0 if busy else quiet + 1
        time.sleep(1.0)
    return time.monotonic() - started


def _load_local(stack: LocalStack, loaded: int, wanted: int) -> None:
    """Put the index items of studies ``loaded`` to ``wanted`` straight into moto (no S3).

    Study, series, posting and registry items only: the queries measured are study-level.
    The runtime runs without the change feed (it would announce every item written here,
    and an instance item as an ``InstanceStored`` for an object that is not in the bucket)."""
    plans = qido.plan_studies(wanted, INSTANCES_PER_STUDY)
    table = stack.stack.physical_ids["IndexTable"]
    backend = get_backend("dynamodb")[ACCOUNT_ID][REGION]
    with stack.gateway.activity.running():  # direct moto access, like an invocation
        for item in qido.index_items(plans[loaded:]):
            if not isinstance(item, InstanceItem):
                backend.put_item(table, item.serialize())
        # The registries (months, modality combinations) name every study loaded so far.
        months = {keys.month_of(keys.text_value(p.study_json, keys.STUDY_DATE)) for p in plans}
        combos = {"\\".join(sorted({m for _, m, _ in p.series})) for p in plans}
        for name, values in ((items.STUDY_MONTHS, months), (items.MODALITY_COMBOS, combos)):
            backend.put_item(table, RegistryItem(*RegistryItem.key(name), values=values).serialize())


def _serve_local(
    conn: Connection, hooks: bool, change_feed: bool, log_file: Path, count_calls: Path | None = None
) -> None:
    """The child process: a local runtime (hooks off, or the template's defaults), then
    commands from the parent until "stop". Its output, and its workers', goes to ``log_file``;
    with ``count_calls``, the gateway and the workers record each request's time there."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if count_calls is not None:
        os.environ[ENVIRONMENT_VARIABLE] = str(count_calls)  # read by the gateway and the workers
    with open(log_file, "w") as log, tempfile.TemporaryDirectory(prefix="bench-ours-") as directory:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        options = bench_options(Path(directory), change_feed=change_feed)
        if hooks:
            options = dataclasses.replace(options, parameter_overrides=())
        stack = LocalStack(options)
        stack.start()
        try:
            conn.send((stack.base_url, stack.tokens["admin"]))
            while True:
                command, arguments = conn.recv()
                if command == "stop":
                    break
                try:
                    if command == "load":
                        _load_local(stack, *arguments)
                        conn.send(("ok", None))
                    elif command == "settle":
                        conn.send(("ok", _settle_local(stack, SETTLE_TIMEOUT_S)))
                    else:
                        conn.send(("error", f"unknown command {command!r}"))
                except Exception:  # the parent raises it with the child's traceback
                    conn.send(("error", traceback.format_exc()))
        finally:
            stack.stop()


@contextmanager
def local_side(*, hooks: bool, change_feed: bool = True, count_calls: Path | None = None) -> Iterator[Side]:
    """Our local runtime in a child process; the client here, with the admin role's token.

    ``change_feed=False``: without the index tables' change feed, for index items loaded
    straight into moto (:meth:`Side.load_studies`); STOW-RS then announces nothing.
    ``count_calls``: a directory where the gateway and the workers record every request's
    time and AWS calls (``COUNT_BACKEND_CALLS``, :mod:`infra.accounting`)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    log_file = (
        LOG_DIR / f"bench-vs-orthanc-hooks-{'on' if hooks else 'off'}{'' if change_feed else '-qido'}"
        f"{'-counted' if count_calls is not None else ''}.log"
    )
    process = context.Process(
        target=_serve_local,
        args=(child, hooks, change_feed, log_file, count_calls),
        name="bench-local-runtime",
    )
    process.start()
    try:
        if parent not in wait([parent, process.sentinel], timeout=300):
            raise RuntimeError(f"the local runtime did not start (see {log_file})")
        base_url, token = parent.recv()

        def call(command: str, *arguments: Any) -> Any:
            parent.send((command, arguments))
            status, value = parent.recv()
            if status != "ok":
                raise RuntimeError(f"local runtime: {command} failed (see {log_file}):\n{value}")
            return value

        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            client = DICOMwebClient(base_url, session=session, timeout=120)
            yield Side(
                HOOKS_ON if hooks else HOOKS_OFF,
                client,
                lambda loaded, wanted: call("load", loaded, wanted),
                lambda: call("settle"),
                process.pid,
            )
    finally:
        if process.is_alive():
            parent.send(("stop", ()))
            process.join(30)
        if process.is_alive() and process.pid is not None:  # busy (leaving on an error): interrupt it
            os.kill(process.pid, signal.SIGINT)  # so it stops its runtime and workers; our own child
            process.join(60)
        if process.is_alive():
            process.terminate()
            process.join(30)


# ------------------------------------------------------------------ measuring
def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _median_ms(calls: Sequence[Callable[[], object]]) -> float:
    calls[0]()  # warm: connection, caches, worker
    return statistics.median(_timed(call) * 1000 for call in calls)


def _uids(series: Sequence[Dataset]) -> tuple[str, str, str]:
    first = series[0]
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.SOPInstanceUID)


def measure_stored(
    side: Side, data: Data, config: Config, log: Callable[[str], None] = print
) -> Measurements:
    """STOW-RS, then frame, retrieve and metadata of what was stored, after settling."""
    client, found = side.client, Measurements()

    def stow(series: list[Dataset], batch: int) -> float:
        elapsed = _timed(
            lambda: [client.store_instances(series[i : i + batch]) for i in range(0, len(series), batch)]
        )
        side.settle()  # the next repeat starts from a quiet server
        return len(series) / elapsed

    found[Point("stow_ct", config.ct_instances)] = statistics.median(stow(s, CT_BATCH) for s in data.ct)
    log(f"{side.name}: STOW-RS CT {found[Point('stow_ct', config.ct_instances)]:.1f} inst/s")
    small = statistics.median(stow(s, 1) for s in data.small)
    found[Point("stow_small", config.small_instances)] = small
    log(f"{side.name}: STOW-RS small {small:.1f} inst/s")

    study, series, sop = _uids(data.ct[0])
    frame = partial(client.retrieve_instance_frames, study, series, sop, [1], media_types=FRAME_MEDIA_TYPES)
    found[Point("frame", 1)] = _median_ms([frame] * config.frame_runs)
    retrieve = partial(client.retrieve_series, study, series)
    seconds = statistics.median(_timed(retrieve) for _ in range(config.retrieve_runs))
    rate = found[Point("retrieve", config.ct_instances)] = data.ct_bytes / 1e6 / seconds
    log(f"{side.name}: frame {found[Point('frame', 1)]:.1f} ms, retrieve {rate:.0f} MB/s")

    for count, instances in data.metadata.items():
        for start in range(0, count, 50):
            client.store_instances(instances[start : start + 50])
    side.settle()
    for count, instances in data.metadata.items():
        study, series, _ = _uids(instances)
        metadata = partial(client.retrieve_series_metadata, study, series)
        found[Point("metadata", count)] = _median_ms([metadata] * config.runs)
        log(f"{side.name}: metadata of {count} instances {found[Point('metadata', count)]:.1f} ms")
    return found


def measure_qido(side: Side, config: Config, log: Callable[[str], None] = print) -> Measurements:
    """QIDO-RS latency at each number of studies, loaded in steps."""
    client, found = side.client, Measurements()
    loaded = 0
    rng = random.Random(3)
    for studies in config.study_sizes:
        started = time.monotonic()
        side.load_studies(loaded, studies)
        side.settle()
        loaded = studies
        plans = qido.plan_studies(studies, INSTANCES_PER_STUDY)
        log(f"{side.name}: {studies:,} studies loaded in {time.monotonic() - started:.0f} s")
        patients = [str(rng.choice(plans).study_json["00100020"]["Value"][0]) for _ in range(config.runs)]
        months = [str(rng.choice(plans).study_json["00080020"]["Value"][0])[:6] for _ in range(config.runs)]
        found[Point("qido_patient", studies)] = _median_ms(
            [partial(client.search_for_studies, search_filters={"PatientID": p}) for p in patients]
        )
        found[Point("qido_dates", studies)] = _median_ms(
            [
                partial(client.search_for_studies, search_filters={"StudyDate": f"{m}01-{m}28"}, limit=100)
                for m in months
            ]
        )
        selective, broad = found[Point("qido_patient", studies)], found[Point("qido_dates", studies)]
        log(f"{side.name}: QIDO-RS, {studies:,} studies: PatientID {selective:.1f} ms, dates {broad:.1f} ms")
    return found


# ------------------------------------------------------------------ report
METHOD = """\
How it is measured (infra/bench/versus_orthanc.py):

- **Orthanc** 1.10 with its DICOMweb plugin, from Debian, installed by the bench if missing,
  on loopback with the package's defaults (SQLite index, `StorageAccessOnFind: Always`,
  keep-alive, 50 HTTP threads). **Ours**: the local runtime as `make serve` runs it (moto,
  the gateway, the Lambda handlers in worker processes), in a process of its own.
- **Same client, same data**: one `DICOMwebClient` per side with one `requests` session
  (connections kept alive), fed the same generated instances: a 512 x 512 CT series
  (water cylinder in air, 16-bit, about 525 kB an instance) sent in requests of 7,
  64 x 64 instances sent one per request, series of 100 and 500 instances for metadata.
- **QIDO-RS**: the same studies (2 instances each) on both sides; Orthanc receives them
  through STOW-RS, our index receives the study, series and posting items that STOW-RS
  writes for them, put straight into moto (storing 10,000 studies through moto would take
  most of an hour), on a runtime without the change feed, so no hook runs on them.
  Selective: `PatientID` (2 studies match); broad: one month of `StudyDate`, `limit=100`.
- **Hooks off**: de-identification and inference off (`DeidModalities=none
  InferenceModels=none`), as the other benchmarks run. **Hooks on**: the template's
  defaults. Stability and pre-built metadata run in both (our series retrieve's body is
  built by its first run; the figure is the median of the runs), and each side is left to
  settle (hook queues empty, change feed read) before a read is measured or a STOW-RS
  repeat starts.
- A shared 2-core machine: Orthanc and our runtime are measured one after the other, and
  other work on the machine moves single figures by tens of percent between runs.
"""


def report(results: dict[str, Measurements], config: Config, *, took_s: float) -> str:
    asked = "" if config.studies >= DEFAULT_STUDIES else f"; the issue asks for {DEFAULT_STUDIES:,}"
    return "\n".join(
        [
            "## Side by side with Orthanc 1.10 + DICOMweb plugin (same client, same data, loopback)",
            "",
            "Ratio = Orthanc's time ÷ ours (ours ÷ Orthanc's for inst/s and MB/s): > 1 means we are "
            "faster. **Hooks off**: de-identification and inference off; **hooks on**: the template's "
            f"defaults. QIDO-RS at {', '.join(f'{n:,}' for n in config.study_sizes)} studies "
            f"({INSTANCES_PER_STUDY} instances each{asked}). STOW-RS: median of {config.stow_repeats} "
            f"series; latencies: median of {config.runs} requests ({config.frame_runs} for the frame) "
            f"after one warm-up; retrieve: median of {config.retrieve_runs}. "
            f"Measured in {took_s / 60:.0f} min.",
            "",
            markdown_table(results),
        ]
    )


def save_results(path: Path, results: dict[str, Measurements], config: Config, took_s: float) -> None:
    """The figures as measured, so the report and plot can be drawn again (``--from-results``)."""
    document = {
        "config": dataclasses.asdict(config),
        "took_s": took_s,
        "results": {
            side: [{"figure": p.figure, "size": p.size, "value": v} for p, v in measured.items()]
            for side, measured in results.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def load_results(path: Path) -> tuple[dict[str, Measurements], Config, float]:
    document = json.loads(path.read_text())
    config = dict(document["config"])
    config["metadata_sizes"] = tuple(config["metadata_sizes"])
    results = {
        side: {Point(str(row["figure"]), int(row["size"])): float(row["value"]) for row in rows}
        for side, rows in document["results"].items()
    }
    return results, Config(**config), float(document["took_s"])


# The "Where the time goes" part of the document, written by infra/bench/breakdown.py between
# these markers; a rewrite of the rest keeps it.
BREAKDOWN_START = "<!-- where-the-time-goes: written by infra/bench/breakdown.py -->"
BREAKDOWN_END = "<!-- /where-the-time-goes -->"


def breakdown_block(text: str) -> str:
    """The marked "Where the time goes" block of a document ("" when it has none)."""
    start, end = text.find(BREAKDOWN_START), text.find(BREAKDOWN_END)
    return text[start : end + len(BREAKDOWN_END)] if 0 <= start < end else ""


def with_breakdown(text: str, block: str) -> str:
    """``text`` with its marked block replaced by ``block`` (appended when it has none)."""
    old = breakdown_block(text)
    if old:
        return text.replace(old, block)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_docs(results: dict[str, Measurements], section: str) -> None:
    """docs/bench-vs-orthanc.md (the method, the plot, the table) and the plot itself; the
    "Where the time goes" block an earlier run of infra/bench/breakdown.py wrote is kept."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    kept = breakdown_block(DOC.read_text()) if DOC.exists() else ""
    text = (
        "# Benchmark: side by side with Orthanc\n\n"
        "Written by `make bench` (alone: `python -m infra.bench.versus_orthanc`; `--studies N` "
        "for another number of studies, `--quick` for a smoke test).\n\n"
        + section.split("\n", 2)[2]
        + f"\n\n![Latency against dataset size](images/{PLOT.name})\n\n"
        + METHOD
    )
    DOC.write_text(with_breakdown(text, kept) if kept else text)
    plot(results, PLOT)


def run(*, quick: bool = False, studies: int | None = None, write: bool | None = None) -> str:
    """Measure Orthanc, then our runtime with the hooks off and on; the Markdown section.

    The figures are saved to :data:`RESULTS`; a full run (or ``write=True``) also writes
    :data:`DOC` and :data:`PLOT`."""
    config = Config.of(quick=quick, studies=studies)
    started = time.monotonic()
    data = Data.generate(config)
    results: dict[str, Measurements] = {}
    with orthanc_side() as side:
        results[ORTHANC] = measure_stored(side, data, config) | measure_qido(side, config)
    for hooks in (False, True):
        with local_side(hooks=hooks) as side:
            results[side.name] = measure_stored(side, data, config)
        with local_side(hooks=hooks, change_feed=False) as side:
            results[side.name] |= measure_qido(side, config)
    took_s = time.monotonic() - started
    save_results(RESULTS, results, config, took_s)
    section = report(results, config, took_s=took_s)
    if write if write is not None else not quick:
        write_docs(results, section)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"a smoke test ({QUICK_STUDIES} studies)")
    parser.add_argument(
        "--studies", type=int, default=None, help=f"studies for QIDO-RS (default {DEFAULT_STUDIES:,})"
    )
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"write {DOC} and {PLOT} (default: on a full run)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help=f"measure nothing: write the docs from figures saved by an earlier run ({RESULTS})",
    )
    args = parser.parse_args(argv)
    if args.from_results is not None:
        results, config, took_s = load_results(args.from_results)
        section = report(results, config, took_s=took_s)
        write_docs(results, section)
    else:
        section = run(quick=args.quick, studies=args.studies, write=args.write_docs)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
