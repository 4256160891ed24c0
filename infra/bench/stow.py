"""STOW-RS throughput through the local runtime, and the handler's own CPU per instance."""

from __future__ import annotations

import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests

from dicomweb_core.config import Limits
from dicomweb_core.dicom.instance import read_instance
from dicomweb_core.web.multipart import encode_multipart, multipart_content_type
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.serve import LocalStack, Options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ct_series(count: int, *, size: int) -> list[bytes]:
    """A CT series of ``count`` instances of ``size``x``size`` 16-bit noise images."""
    study, series = new_uid(), new_uid()
    rng = np.random.default_rng(7)
    instances = []
    for number in range(1, count + 1):
        ds = make_dataset(study=study, series=series, rows=size, columns=size, InstanceNumber=number)
        ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
        instances.append(to_part10(ds))
    return instances


def _post(session: requests.Session, url: str, batch: Sequence[bytes]) -> None:
    if len(batch) == 1:
        body, content_type = batch[0], "application/dicom"
    else:
        body, boundary = encode_multipart(({"Content-Type": "application/dicom"}, b) for b in batch)
        content_type = multipart_content_type(boundary, "application/dicom")
    response = session.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:300]}")


def _batches(instances: Sequence[bytes], max_bytes: int) -> list[list[bytes]]:
    batches: list[list[bytes]] = [[]]
    size = 0
    for data in instances:
        if batches[-1] and size + len(data) > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(data)
        size += len(data)
    return batches


def _throughput(
    stack: LocalStack, instances: Sequence[bytes], batches: list[list[bytes]]
) -> tuple[float, float]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.tokens['uploader']}"
    started = time.perf_counter()
    for batch in batches:
        _post(session, f"{stack.base_url}/studies", batch)
    elapsed = time.perf_counter() - started
    total_mb = sum(len(i) for i in instances) / 1e6
    return len(instances) / elapsed, total_mb / elapsed


def _handler_cpu_ms(instances: Sequence[bytes]) -> float:
    limits = Limits()
    samples = []
    for data in instances:
        started = time.process_time()
        read_instance(data, limits=limits)
        samples.append((time.process_time() - started) * 1000)
    return statistics.median(samples)


# Hooks that would compete with the measured requests for the machine's two cores are off:
# de-identification and inference. Stability, series metadata and bundles stay on (the
# WADO figures for pre-built metadata depend on them).
QUIET_HOOKS = (("DeidModalities", "none"), ("InferenceModels", "none"))


def bench_options(local_dir: Path, *, change_feed: bool = True) -> Options:
    """The local runtime as the benchmarks run it: no snapshots, no competing hooks, no
    scheduled runs; ``change_feed=False`` for benchmarks that write index items directly."""
    return Options(
        host="127.0.0.1",
        port=free_port(),
        local_dir=local_dir,
        auth=True,
        load=None,
        cors_origins=(),
        persist=False,
        parameter_overrides=QUIET_HOOKS,
        change_feed=change_feed,
        schedules=False,
    )


def run(*, quick: bool = False) -> str:
    count = 20 if quick else 100
    with tempfile.TemporaryDirectory() as local_dir:
        stack = LocalStack(bench_options(Path(local_dir)))
        stack.start()
        try:
            rows = []
            for label, size in (("CT 256x256 (131 kB)", 256), ("CT 512x512 (525 kB)", 512)):
                single = ct_series(count, size=size)
                per_request = _throughput(stack, single, [[d] for d in single])
                batched_series = ct_series(count, size=size)
                batched = _throughput(stack, batched_series, _batches(batched_series, 4 * 1024 * 1024))
                cpu = _handler_cpu_ms(single)
                rows.append(
                    f"| {label} | {count} | {per_request[0]:.1f} | {per_request[1]:.1f} | "
                    f"{batched[0]:.1f} | {batched[1]:.1f} | {cpu:.2f} |"
                )
        finally:
            stack.stop()
    return "\n".join(
        [
            "## STOW-RS (local runtime: moto server, handler in a worker process)",
            "",
            "| instances | count | inst/s (1 per request) | MB/s (1 per request) | inst/s (≤4 MiB multipart) "
            "| MB/s (≤4 MiB multipart) | handler CPU ms/instance (parse+validate, median) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
