"""Parallel senders into one study (issue 14): 16 STOW-RS clients, 1,000 instances, one study.

Every instance write commits only its own items (index/writer.py), so the senders share no
item once the study and its series exist; the study's and series' counts are recounted from
the table's stream (index/aggregates.py). This section measures, on the local runtime with
every backend call counted (infra/accounting):

- the wall time of the 16 senders, and instances per second;
- the index transactions that were cancelled (only the first stores of a new series can
  race: the losers read again) and the transactions that named an item other than the
  instance's own two (the study and series creations);
- that every instance is stored once, and how long after the last store a QIDO-RS search
  of the study shows the exact ``NumberOfStudyRelatedInstances`` / ``NumberOfSeriesRelatedInstances``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from infra.accounting.invocations import ENVIRONMENT_VARIABLE, load_invocations
from infra.bench.stow import _post, bench_options
from infra.datasets.generate import make_instance, new_uid
from infra.local.serve import LocalStack

SENDERS = 16
SERIES = 4
PER_REQUEST = 5  # instances per STOW request (a router's small batches)


def _send(stack: LocalStack, payloads: list[bytes], errors: list[BaseException]) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.tokens['uploader']}"
    try:
        for start in range(0, len(payloads), PER_REQUEST):
            _post(session, f"{stack.base_url}/studies", payloads[start : start + PER_REQUEST])
    except BaseException as error:  # reported after the run
        errors.append(error)


def _counts(stack: LocalStack, study: str) -> tuple[int, dict[str, int]]:
    """NumberOfStudyRelatedInstances and each series' NumberOfSeriesRelatedInstances, by QIDO-RS."""
    headers = {"Authorization": f"Bearer {stack.tokens['viewer']}", "Accept": "application/dicom+json"}
    studies = requests.get(f"{stack.base_url}/studies?StudyInstanceUID={study}", headers=headers, timeout=30)
    series = requests.get(f"{stack.base_url}/studies/{study}/series", headers=headers, timeout=30)
    rows = studies.json() if studies.status_code == 200 else []
    total = int(rows[0]["00201208"]["Value"][0]) if rows else 0
    per_series = {
        s["0020000E"]["Value"][0]: int(s["00201209"]["Value"][0])
        for s in (series.json() if series.status_code == 200 else [])
    }
    return total, per_series


def measure(stack: LocalStack, calls: Path, *, instances: int) -> dict[str, object]:
    study = new_uid()
    series = [new_uid() for _ in range(SERIES)]
    payloads = [
        make_instance(study=study, series=series[n % SERIES], InstanceNumber=n + 1) for n in range(instances)
    ]
    shares = [payloads[n::SENDERS] for n in range(SENDERS)]
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_send, args=(stack, share, errors)) for share in shares]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored_at = time.time()
    if errors:
        raise RuntimeError(f"{len(errors)} senders failed: {errors[0]!r}")
    expected = {uid: len(payloads[n::SERIES]) for n, uid in enumerate(series)}
    while (found := _counts(stack, study)) != (instances, expected):
        if time.time() - stored_at > 120:
            raise RuntimeError(f"counts did not converge: {found}")
        time.sleep(0.1)
    converged_at = time.time()
    stow = [
        i for i in load_invocations(calls, since=started, until=stored_at) if i.trigger.startswith("POST")
    ]
    transactions: Counter[str] = Counter()
    for invocation in stow:
        transactions["calls"] += invocation.tally.calls["dynamodb.TransactWriteItems"]
        for key, count in invocation.tally.errors.items():
            if key.startswith("dynamodb.TransactWriteItems."):
                transactions[key.rsplit(".", 1)[1]] += count
        for write in invocation.tally.writes:
            if write["tx"] and write["ok"] and write["op"] != "check" and _shared(write):
                transactions["shared"] += 1
    return {
        "instances": instances,
        "seconds": stored_at - started,
        "converged_s": converged_at - stored_at,
        "transactions": transactions,
    }


def _shared(write: dict[str, Any]) -> bool:
    """A write of an item other than an instance's own SOP or instance item."""
    key = write.get("key") or write["item"]
    pk, sk = str(key["pk"]["S"]), str(key["sk"]["S"])
    return not (pk.startswith("SOP#") or sk.startswith("INSTANCE#"))


def run(*, quick: bool = False) -> str:
    instances = 160 if quick else 1000
    with tempfile.TemporaryDirectory() as local_dir:
        calls = Path(local_dir) / "backend-calls"
        os.environ[ENVIRONMENT_VARIABLE] = str(calls)
        try:
            stack = LocalStack(bench_options(Path(local_dir)))
            stack.start()
            try:
                result = measure(stack, calls, instances=instances)
            finally:
                stack.stop()
        finally:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
    tx: Counter[str] = result["transactions"]  # type: ignore[assignment]
    cancelled = {k: v for k, v in tx.items() if k not in ("calls", "shared")}
    seconds = float(result["seconds"])  # type: ignore[arg-type]
    return "\n".join(
        [
            f"## {SENDERS} parallel STOW-RS senders into one study (local runtime)",
            "",
            f"{instances} small instances in {SERIES} series of one new study, {PER_REQUEST} per request, "
            f"sent by {SENDERS} threads at once (infra/bench/parallel.py).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| wall time | {seconds:.1f} s ({instances / seconds:.0f} instances/s) |",
            f"| index transactions | {tx['calls']} |",
            f"| cancelled (any reason) | {sum(cancelled.values())} {dict(cancelled) or ''} |",
            f"| committed transactional writes of a shared item (the study's and series' creation) | "
            f"{tx['shared']} |",
            f"| exact counts in QIDO-RS after the last store | {float(result['converged_s']):.1f} s |",  # type: ignore[arg-type]
        ]
    )
