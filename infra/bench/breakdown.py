"""Where the time goes: the operations that miss their goal against Orthanc, split and priced.

The side by side (:mod:`infra.bench.versus_orthanc`) measures each operation as a whole.
This section measures the operations that miss their goal again, on the local runtime
with the hooks off, the same generated data and the same client, with
``COUNT_BACKEND_CALLS`` set: the gateway records each request's time and the workers each
invocation's, with every AWS call it made and the time it took (:mod:`infra.accounting`).
Each operation's time is then split (:mod:`infra.accounting.breakdown`) into the client
side, the gateway, the exchange with the worker, the handler's own code and its AWS calls
(answered by moto), and the same calls are priced at typical in-region latencies
(:mod:`infra.accounting.latency`) to estimate what the cloud path would take instead,
beside Orthanc's figure from the last side by side (.local/bench-vs-orthanc.json).

Operations: STOW-RS of the CT series in requests of 7 and of 64 x 64 instances one per
request; QIDO-RS by ``PatientID`` and by a month of ``StudyDate`` at 100 and 1,000 studies;
the metadata of a 100-instance series; the retrieve of the CT series (its body built by a
first retrieve that is not measured). Recording costs a little (a JSON line per request
and per invocation, the counter's bookkeeping, which is left out of the handlers' time):
the figures measured here sit beside the side by side's. Each operation then repeats for
a few seconds under py-spy (:mod:`infra.bench.spy`), which says what the runtime's
process (moto, the gateway, the pollers) and the workers spend their CPU on.

Run alone with ``python -m infra.bench.breakdown [--quick] [--no-profile]``; a full run
rewrites the "Where the time goes" part of docs/bench-vs-orthanc.md (the rest of it is the
side by side's), and every run saves its figures to .local/bench-breakdown.json, from which
``--from-results`` writes the part again (the cloud estimate priced anew) without measuring.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from itertools import cycle, repeat
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from infra.accounting.breakdown import SERVICE_NAMES, Breakdown, breakdown
from infra.accounting.gateway import load_gateway_records
from infra.accounting.invocations import load_invocations
from infra.accounting.latency import CloudEstimate, CloudLatencies, cloud_estimate
from infra.bench import qido
from infra.bench.spy import HANDLERS, RATE_HZ, RUNTIME, WORKERS, profiled, summarise
from infra.bench.versus_orthanc import (
    BREAKDOWN_END,
    BREAKDOWN_START,
    CT_BATCH,
    DOC,
    FIGURE,
    HOOKS_OFF,
    INSTANCES_PER_STUDY,
    LOG_DIR,
    ORTHANC,
    TIMES,
    Measurements,
    Point,
    Side,
    ct_series,
    format_ratio,
    format_value,
    load_results,
    local_side,
    part10_size,
    speed_ratio,
    with_breakdown,
)
from infra.bench.versus_orthanc import RESULTS as VERSUS_RESULTS
from infra.samtemplate import load_template

RESULTS = LOG_DIR / "bench-breakdown.json"
PROFILE_S = 3.0  # each operation repeated this long under py-spy
NONE = "\N{EN DASH}"


@dataclass(frozen=True)
class Config:
    ct_instances: int  # STOW-RS in requests of CT_BATCH; the series is then retrieved
    small_instances: int  # STOW-RS one per request
    metadata_instances: int
    study_sizes: tuple[int, ...]
    runs: int  # requests per latency figure, after one warm-up
    retrieve_runs: int  # after the first, which builds the series body

    @classmethod
    def of(cls, *, quick: bool) -> Config:
        if quick:
            return cls(14, 10, 20, (100,), 5, 2)
        return cls(35, 50, 100, (100, 1_000), 15, 3)


@dataclass
class Window:
    """One operation measured: the client's time for each of its runs, and when they ran."""

    point: Point
    client_ms: list[float]
    since: float  # seconds since the epoch
    until: float
    per_run: float  # instances per STOW-RS request, bytes per retrieve, else 1


def _window(point: Point, calls: Sequence[Callable[[], object]], *, per_run: float = 1.0) -> Window:
    since = time.time()
    timings = []
    for call in calls:
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return Window(point, timings, since, time.time(), per_run)


def _uids(series: Sequence[Dataset]) -> tuple[str, str]:
    return str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)


@dataclass
class Profile:
    """Where the runtime's process and its workers spent their CPU while ``point`` repeated."""

    point: Point
    seconds: float
    shares: dict[str, dict[str, float]]  # spy.RUNTIME / WORKERS / HANDLERS -> % of one core


def _each(calls: Iterable[Callable[[], object]]) -> Callable[[], bool]:
    """One call per use, False once there is none left."""
    remaining = iter(calls)

    def again() -> bool:
        call = next(remaining, None)
        if call is None:
            return False
        call()
        return True

    return again


def _profile(side: Side, point: Point, again: Callable[[], bool], directory: Path | None) -> Profile | None:
    """py-spy on the runtime while ``again`` repeats (at most PROFILE_S); None without py-spy."""
    if directory is None or side.pid is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{point.figure}-{point.size}.txt"
    with profiled(side.pid, output) as recorded:
        deadline = time.monotonic() + PROFILE_S
        while time.monotonic() < deadline and again():
            pass
    seconds = recorded()
    if not seconds:
        return None
    return Profile(point, seconds, summarise(output.read_text(), seconds=seconds))


def measure_stored(
    side: Side, config: Config, log: Callable[[str], None] = print, *, profiles: Path | None = None
) -> tuple[list[Window], list[Profile]]:
    """STOW-RS of both kinds, then the series retrieve and the series metadata: the windows,
    then each operation again under the profiler (``profiles``: where py-spy writes)."""
    client, windows = side.client, []
    ct = ct_series(config.ct_instances, seed=0)
    batches = [ct[i : i + CT_BATCH] for i in range(0, len(ct), CT_BATCH)]
    windows.append(
        _window(
            Point("stow_ct", config.ct_instances),
            [partial(client.store_instances, batch) for batch in batches],
            per_run=config.ct_instances / len(batches),
        )
    )
    side.settle()
    small = ct_series(config.small_instances, size=64, seed=0)
    windows.append(
        _window(
            Point("stow_small", config.small_instances),
            [partial(client.store_instances, [ds]) for ds in small],
        )
    )
    side.settle()
    log("breakdown: STOW-RS measured")

    ct_bytes = part10_size(ct)
    retrieve = partial(client.retrieve_series, *_uids(ct))
    retrieve()  # builds the series body
    side.settle()
    windows.append(
        _window(
            Point("retrieve", config.ct_instances), [retrieve] * config.retrieve_runs, per_run=float(ct_bytes)
        )
    )

    series = ct_series(config.metadata_instances, size=64, seed=config.metadata_instances)
    for start in range(0, len(series), 50):
        client.store_instances(series[start : start + 50])
    side.settle()
    metadata = partial(client.retrieve_series_metadata, *_uids(series))
    metadata()  # warm
    windows.append(_window(Point("metadata", config.metadata_instances), [metadata] * config.runs))
    log("breakdown: retrieve and metadata measured")
    if profiles is None:
        return windows, []

    found = [
        _profile(side, windows[2].point, _each(repeat(retrieve)), profiles),
        _profile(side, windows[3].point, _each(repeat(metadata)), profiles),
    ]
    fresh_ct = ct_series(config.ct_instances, seed=1)
    fresh_small = ct_series(config.small_instances, size=64, seed=1)
    stores = (
        (windows[0].point, [fresh_ct[i : i + CT_BATCH] for i in range(0, len(fresh_ct), CT_BATCH)]),
        (windows[1].point, [[ds] for ds in fresh_small]),
    )
    for point, requests in stores:
        side.settle()
        stored = _each(partial(client.store_instances, r) for r in requests)
        found.append(_profile(side, point, stored, profiles))
    side.settle()
    log("breakdown: profiles of STOW-RS, retrieve and metadata recorded")
    return windows, [profile for profile in found if profile is not None]


def measure_qido(
    side: Side, config: Config, log: Callable[[str], None] = print, *, profiles: Path | None = None
) -> tuple[list[Window], list[Profile]]:
    """QIDO-RS by PatientID and by a month of StudyDate at each number of studies, each
    measured, then repeated under the profiler (``profiles``: where py-spy writes)."""
    client, windows, loaded = side.client, [], 0
    found: list[Profile | None] = []
    rng = random.Random(3)
    for studies in config.study_sizes:
        side.load_studies(loaded, studies)
        side.settle()
        loaded = studies
        plans = qido.plan_studies(studies, INSTANCES_PER_STUDY)
        chosen = [rng.choice(plans).study_json for _ in range(config.runs + 1)]
        patients = [str(study["00100020"]["Value"][0]) for study in chosen]
        months = [str(study["00080020"]["Value"][0])[:6] for study in chosen]
        by_patient = [partial(client.search_for_studies, search_filters={"PatientID": p}) for p in patients]
        by_month = [
            partial(client.search_for_studies, search_filters={"StudyDate": f"{m}01-{m}28"}, limit=100)
            for m in months
        ]
        for key, calls in (("qido_patient", by_patient), ("qido_dates", by_month)):
            calls[0]()  # warm
            windows.append(_window(Point(key, studies), calls[1:]))
            found.append(_profile(side, Point(key, studies), _each(cycle(calls)), profiles))
        log(f"breakdown: QIDO-RS at {studies:,} studies measured")
    return windows, [profile for profile in found if profile is not None]


# ------------------------------------------------------------------ figures
@dataclass
class Row:
    """One operation: its local split, its cloud estimate, and the figures to compare."""

    point: Point
    measured: Breakdown
    cloud: CloudEstimate
    per_run: float
    orthanc: float | None = None  # Orthanc's figure from the last side by side
    side_by_side: float | None = None  # ours (hooks off) from the same side by side

    def value(self, ms: float) -> float:
        """A time per run in the figure's unit (inst/s and MB/s for throughput)."""
        figure = FIGURE[self.point.figure]
        if figure.unit == "inst/s":
            return self.per_run / ms * 1000
        if figure.unit == "MB/s":
            return self.per_run / 1e6 / (ms / 1000)
        return ms


def label(point: Point) -> str:
    figure = FIGURE[point.figure]
    if point.figure.startswith("qido"):
        return f"{figure.label}, {point.size:,} studies"
    if point.figure == "metadata":
        return f"Series metadata, {point.size:,} instances"
    if point.figure == "retrieve":
        return f"Series retrieve, {point.size:,} CT instances"
    return figure.label


def _side_by_side(figures: Measurements, point: Point) -> float | None:
    """The figure for ``point``, or for the same throughput figure at another size."""
    if point in figures:
        return figures[point]
    if FIGURE[point.figure].higher_is_faster:
        return next((v for p, v in figures.items() if p.figure == point.figure), None)
    return None


def rows_of(
    windows: Sequence[Window],
    calls: Path,
    *,
    memory_mb: dict[str, int],
    side_by_side: dict[str, Measurements] | None = None,
    latencies: CloudLatencies | None = None,
) -> list[Row]:
    gateway = load_gateway_records(calls)
    invocations = load_invocations(calls)
    rows = []
    for window in windows:
        inside = [r for r in gateway if window.since <= r.started < window.until]
        invoked = [i for i in invocations if window.since <= i.started < window.until]
        measured = breakdown(window.client_ms, inside, invoked)
        rows.append(
            Row(
                window.point,
                measured,
                cloud_estimate(measured, memory_mb, latencies),
                window.per_run,
                _side_by_side((side_by_side or {}).get(ORTHANC, {}), window.point),
                _side_by_side((side_by_side or {}).get(HOOKS_OFF, {}), window.point),
            )
        )
    return rows


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _calls(measured: Breakdown) -> str:
    """``DynamoDB 3 (21.0 ms: Query 2, GetItem 1)``, per service, largest first."""
    parts = []
    for service, (count, ms) in sorted(measured.by_service().items(), key=lambda kv: -kv[1][1]):
        operations = ", ".join(
            f"{name.split('.', 1)[1]} {_count(n)}"
            for name, n in sorted(measured.calls.items())
            if name.startswith(f"{service}.")
        )
        parts.append(f"{SERVICE_NAMES.get(service, service)} {_count(count)} ({ms:.1f} ms: {operations})")
    return "; ".join(parts) or NONE


def _count(value: float) -> str:
    """Calls per request: whole numbers plain, fractions to one decimal (two below 0.1)."""
    if 0 < value < 0.095:
        return f"{value:.2f}"
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _largest(parts: dict[str, float]) -> str:
    name, ms = max(parts.items(), key=lambda kv: kv[1])
    total = sum(parts.values())
    return f"{name} ({ms / total:.0%})" if total else NONE


def local_table(rows: Sequence[Row]) -> str:
    lines = [
        "| Operation (per request) | Measured here | Client side | Gateway | Worker exchange "
        "| Handler's own code | AWS calls (moto), wall | AWS calls: count (summed ms: per operation) "
        "| Largest part |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row.measured
        parts = {
            "client side": m.client_side_ms,
            "gateway": m.gateway_ms,
            "worker exchange": m.exchange_ms,
            "handler's own code": m.own_ms,
            "AWS calls": m.aws_ms,
        }
        cells = [
            label(row.point),
            f"{_ms(m.client_ms)} ms",
            *(_ms(v) for v in parts.values()),
            _calls(m),
            _largest(parts),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cloud_table(rows: Sequence[Row]) -> str:
    lines = [
        f"| Operation | {ORTHANC} | Ours, side by side | Ours, measured here | Cloud estimate "
        "| Cloud ÷ Orthanc | Goal "
        "| Cloud estimate: client, API + Lambda, own code, AWS calls, objects (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        figure = FIGURE[row.point.figure]
        cloud = row.value(row.cloud.total_ms)
        ratio = NONE
        goal = f"≥ {figure.goal:g}{TIMES}" if figure.goal is not None else NONE
        if row.orthanc is not None:
            speed = speed_ratio(figure, cloud, row.orthanc)
            ratio = format_ratio(speed)
            if figure.goal is not None:
                goal += " met" if speed >= figure.goal else " **missed**"
        c = row.cloud
        split = " + ".join(_ms(v) for v in (c.client_side_ms, c.api_ms, c.own_ms, c.aws_ms, c.objects_ms))
        lines.append(
            "| "
            + " | ".join(
                [
                    label(row.point),
                    format_value(row.orthanc, figure.unit) if row.orthanc is not None else NONE,
                    format_value(row.side_by_side, figure.unit) if row.side_by_side is not None else NONE,
                    format_value(row.value(row.measured.client_ms), figure.unit),
                    format_value(cloud, figure.unit),
                    ratio,
                    goal,
                    split,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def background_lines(rows: Sequence[Row]) -> list[str]:
    """The hooks that ran beside an operation, per request (they compete for the cores)."""
    lines = []
    for row in rows:
        work = sorted(row.measured.background.items(), key=lambda kv: -kv[1][1])
        total = sum(ms for _, (_, ms) in work)
        if total >= 1.0:
            named = ", ".join(f"{name} {ms:.1f} ms" for name, (_, ms) in work if ms >= 0.1)
            lines.append(f"- {label(row.point)}: {total:.1f} ms of hook handlers per request ({named}).")
    return lines


ASSUMED = """\
The cloud estimate keeps what does not depend on where the stack runs (the client's own
work, the handlers' own code, the number and kind of AWS calls) and prices the rest at
typical in-region figures, for a client in the stack's region and warm functions
(infra/accounting/latency.py says where each figure comes from):

- API Gateway HTTP API and a warm Lambda invocation: {request_ms:g} ms per request, bodies
  at {payload_mb_s:g} MB/s; the handlers' own code at their Lambda CPU share (scaled by
  1,769 MB / MemorySize: QIDO-RS 512 MB, STOW-RS 1,024 MB, WADO-RS 1,769 MB);
- DynamoDB: {dynamodb};
- S3: {s3}, bytes at {s3_mb_s:g} MB/s; object links (a series body) {object_first_byte_ms:g} ms
  to the first byte, then {object_mb_s:g} MB/s;
- calls that overlapped locally overlap as much in the cloud."""


def assumed_text(latencies: CloudLatencies) -> str:
    def listed(service: str) -> str:
        return ", ".join(
            f"{name.split('.', 1)[1]} {ms:g} ms"
            for name, ms in latencies.call_ms.items()
            if name.startswith(f"{service}.")
        )

    return ASSUMED.format(
        request_ms=latencies.request_ms,
        payload_mb_s=latencies.payload_mb_s,
        dynamodb=listed("dynamodb"),
        s3=listed("s3"),
        s3_mb_s=latencies.s3_mb_s,
        object_first_byte_ms=latencies.object_first_byte_ms,
        object_mb_s=latencies.object_mb_s,
    )


def _shares(shares: dict[str, float], *, least: float = 1.0) -> str:
    named = [f"{name} {pct:.0f}%" for name, pct in shares.items() if pct >= least]
    return ", ".join(named) or NONE


def profile_table(profiles: Sequence[Profile]) -> str:
    lines = [
        "| Operation, repeated | Runtime's process (gateway, moto, pollers; one lock) "
        "| Workers (the handlers) | Workers by handler |",
        "|---|---|---|---|",
    ]
    for profile in profiles:
        runtime, workers = profile.shares[RUNTIME], profile.shares[WORKERS]
        lines.append(
            f"| {label(profile.point)} | {sum(runtime.values()):.0f}%: {_shares(runtime)} "
            f"| {sum(workers.values()):.0f}%: {_shares(workers)} | {_shares(profile.shares[HANDLERS])} |"
        )
    return "\n".join(lines)


def _range(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.0%}" if round(low * 100) == round(high * 100) else f"{low:.0%} to {high:.0%}"


def reading(rows: Sequence[Row], latencies: CloudLatencies) -> list[str]:
    """What the tables say, computed from them (so that it stays true from run to run)."""
    if not rows:
        return []
    lines = []
    shares: dict[str, list[float]] = {"aws": [], "own": [], "gateway": [], "client": []}
    for row in rows:
        m = row.measured
        shares["aws"].append(m.aws_ms / m.client_ms)
        shares["own"].append(m.own_ms / m.client_ms)
        shares["gateway"].append((m.gateway_ms + m.exchange_ms) / m.client_ms)
        shares["client"].append(m.client_side_ms / m.client_ms)
    lines.append(
        f"- Here, AWS calls answered by moto take {_range(shares['aws'])} of each operation's time, "
        f"the handlers' own code {_range(shares['own'])}, the gateway and the worker exchange "
        f"{_range(shares['gateway'])}, the client side {_range(shares['client'])}."
    )
    per_call = []
    for service in ("dynamodb", "s3"):
        calls = ms = assumed = 0.0
        for row in rows:
            for name, count in row.measured.calls.items():
                if name.startswith(f"{service}."):
                    calls += count
                    ms += row.measured.call_ms.get(name, 0.0)
                    assumed += count * latencies.latency_of(name)
        if calls:
            per_call.append(
                f"{SERVICE_NAMES[service]} {ms / calls:.1f} ms ({assumed / calls:.1f} ms assumed below)"
            )
    slower = [r for r in rows if r.cloud.total_ms > r.measured.client_ms]
    faster = [label(r.point) for r in rows if r not in slower]
    verdict = (
        "moto is not what keeps them from their goals: on the cloud path each would take longer."
        if not faster
        else f"it would be faster for {', '.join(faster)}."
    )
    lines.append(
        f"- A call to moto took {' and '.join(per_call)} on average here, the machine's load "
        f"included. Priced at the figures below, the cloud path is slower than the local runtime "
        f"for {len(slower)} of the {len(rows)} operations; {verdict}"
    )
    sequential = [
        r for r in rows if r.measured.call_ms and r.measured.aws_ms >= 0.95 * sum(r.measured.call_ms.values())
    ]
    lines.append(
        f"- {len(sequential)} of the {len(rows)} operations make their AWS calls one after another "
        "(their wall time in calls is at least 95% of the calls' summed time)."
    )
    floor = latencies.request_ms + latencies.latency_of("dynamodb.GetItem")
    below = [
        r
        for r in rows
        if r.orthanc is not None and not FIGURE[r.point.figure].higher_is_faster and r.orthanc < floor
    ]
    if below:
        lines.append(
            f"- One request through API Gateway and Lambda with a single DynamoDB read takes about "
            f"{floor:g} ms at these figures, more than Orthanc's whole answer on loopback in "
            f"{len(below)} of the latency figures above: at these figures no request through "
            "API Gateway and Lambda reaches a ratio of 0.5 to those."
        )
    return lines


def report(
    rows: Sequence[Row],
    config: Config,
    *,
    took_s: float,
    latencies: CloudLatencies,
    profiles: Sequence[Profile] = (),
) -> str:
    sentences = [f"- {label(row.point)}: {row.measured.summary()}." for row in rows]
    background = background_lines(rows)
    return "\n".join(
        [
            "## Where the time goes",
            "",
            "Written by `make bench` (section `breakdown`; alone: `python -m infra.bench.breakdown`). "
            "The operations that miss their goal, again on the local runtime with the hooks off, "
            "with every request's time recorded (`COUNT_BACKEND_CALLS`): the gateway times each "
            "request, each worker its handler and every AWS call the handler makes. Means per "
            "request (per STOW-RS request of 7 CT instances or of one 64 x 64 instance; per "
            "DICOMweb call otherwise) over "
            f"{config.runs} requests ({config.retrieve_runs} retrieves after the one that builds the "
            f"series body; {config.ct_instances} and {config.small_instances} instances stored). "
            f"Measured in {took_s / 60:.0f} min.",
            "",
            "**Client side**: the client library (encoding the STOW-RS body, parsing the answer) and "
            "loopback, measured by the client minus the gateway's time. **Gateway**: the local API "
            "gateway (reading the body, the authorizer, building the event, the payload checks, "
            "writing the answer, and series bodies it serves from moto's memory). **Worker "
            "exchange**: the event and the answer through the worker's pipe. **Handler's own "
            "code**: the handler's run minus its AWS calls. **AWS calls**: the wall time with at "
            "least one call open, answered by moto in the runtime's process; per operation, the "
            "calls and their summed time (more than the wall time when calls run in parallel).",
            "",
            local_table(rows),
            "",
            *sentences,
            "",
            *(
                ["Hooks that ran beside the requests (on the same two cores):", "", *background, ""]
                if background
                else []
            ),
            *(
                [
                    "### Profile",
                    "",
                    f"Each operation repeated for up to {PROFILE_S:g} s (STOW-RS: a fresh series "
                    "once) while py-spy sampled the runtime's process and its workers "
                    f"(infra/bench/spy.py, {RATE_HZ} Hz, the thread holding each interpreter's lock): "
                    "percent of one core over that time, by component (time holding the lock, which "
                    "on a loaded machine includes moments preempted with it). **moto: backend**: storing "
                    "items and evaluating key conditions, filters and queries; **moto: requests and "
                    "answers**: parsing each request and serialising its answer (JSON, XML); "
                    "**moto: HTTP server and dispatch**: werkzeug and moto's routing around them.",
                    "",
                    profile_table(profiles),
                    "",
                ]
                if profiles
                else []
            ),
            "### What the cloud path would take instead",
            "",
            assumed_text(latencies),
            "",
            f'{ORTHANC} and "ours, side by side" are the last side by side\'s figures (hooks off, '
            'not recording); "measured here" is this run\'s, while recording.',
            "",
            cloud_table(rows),
            "",
            "What the tables say (computed from them):",
            "",
            *reading(rows, latencies),
        ]
    )


def save(
    path: Path, rows: Sequence[Row], config: Config, took_s: float, profiles: Sequence[Profile] = ()
) -> None:
    document: dict[str, Any] = {
        "config": asdict(config),
        "took_s": took_s,
        "profiles": [
            {"figure": p.point.figure, "size": p.point.size, "seconds": p.seconds, "shares": p.shares}
            for p in profiles
        ],
        "rows": [
            {
                "figure": row.point.figure,
                "size": row.point.size,
                "per_run": row.per_run,
                "orthanc": row.orthanc,
                "side_by_side": row.side_by_side,
                "measured": asdict(row.measured),
                "cloud": asdict(row.cloud),
            }
            for row in rows
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def load(
    path: Path, latencies: CloudLatencies | None = None
) -> tuple[list[Row], Config, float, list[Profile]]:
    """The figures :func:`save` wrote, the cloud estimates priced again (with ``latencies``)."""
    document = json.loads(path.read_text())
    config = dict(document["config"])
    config["study_sizes"] = tuple(config["study_sizes"])
    memory_mb = {name: spec.memory for name, spec in load_template().functions().items()}
    rows = []
    for row in document["rows"]:
        fields = dict(row["measured"])
        fields["background"] = {name: (float(n), float(ms)) for name, (n, ms) in fields["background"].items()}
        measured = Breakdown(**fields)
        rows.append(
            Row(
                Point(str(row["figure"]), int(row["size"])),
                measured,
                cloud_estimate(measured, memory_mb, latencies),
                float(row["per_run"]),
                row.get("orthanc"),
                row.get("side_by_side"),
            )
        )
    profiles = [
        Profile(Point(str(p["figure"]), int(p["size"])), float(p["seconds"]), p["shares"])
        for p in document.get("profiles", [])
    ]
    return rows, Config(**config), float(document["took_s"]), profiles


def write_doc(section: str) -> None:
    """The section between the markers of docs/bench-vs-orthanc.md (appended the first time)."""
    block = f"{BREAKDOWN_START}\n{section}\n{BREAKDOWN_END}"
    DOC.write_text(with_breakdown(DOC.read_text(), block) if DOC.exists() else block + "\n")


def run(*, quick: bool = False, write: bool | None = None, profile: bool = True) -> str:
    """Measure the missed operations while recording, then profile them; the Markdown section.

    A full run (or ``write=True``) writes it into :data:`DOC`."""
    config = Config.of(quick=quick)
    latencies = CloudLatencies()
    started = time.monotonic()
    side_by_side = load_results(VERSUS_RESULTS)[0] if VERSUS_RESULTS.exists() else None
    memory_mb = {name: spec.memory for name, spec in load_template().functions().items()}
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as directory:
        calls = Path(directory)
        spied = LOG_DIR / "bench-breakdown-profiles" if profile else None
        with local_side(hooks=False, count_calls=calls) as side:
            windows, profiles = measure_stored(side, config, profiles=spied)
        with local_side(hooks=False, change_feed=False, count_calls=calls) as side:
            more, more_profiles = measure_qido(side, config, profiles=spied)
        windows += more
        profiles += more_profiles
        order = [f.key for f in FIGURE.values()]
        windows.sort(key=lambda w: (order.index(w.point.figure), w.point.size))
        profiles.sort(key=lambda p: (order.index(p.point.figure), p.point.size))
        rows = rows_of(windows, calls, memory_mb=memory_mb, side_by_side=side_by_side, latencies=latencies)
    took_s = time.monotonic() - started
    save(RESULTS, rows, config, took_s, profiles)
    section = report(rows, config, took_s=took_s, latencies=latencies, profiles=profiles)
    if write if write is not None else not quick:
        write_doc(section)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test (fewer runs, 100 studies)")
    parser.add_argument(
        "--profile", action=argparse.BooleanOptionalAction, default=True, help="profile with py-spy"
    )
    parser.add_argument(
        "--write-docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"write the section into {DOC} (default: on a full run)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help=f"measure nothing: write the section from figures saved by an earlier run ({RESULTS})",
    )
    args = parser.parse_args(argv)
    if args.from_results is not None:
        latencies = CloudLatencies()
        rows, config, took_s, profiles = load(args.from_results, latencies)
        section = report(rows, config, took_s=took_s, latencies=latencies, profiles=profiles)
        write_doc(section)
        print(section)
        return 0
    print(run(quick=args.quick, write=args.write_docs, profile=args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
