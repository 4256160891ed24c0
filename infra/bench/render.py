"""Rendered frames and thumbnails through the local runtime (PS3.18 §10.4.1.1.3, §10.4.4).

A 512x512 CT (pydicom-data's 693_UNCR.dcm, native) and the same image as lossless JPEG
2000 (693_J2KR.dcm) are stored several times under fresh UIDs, so that each copy's first
request is a cold one for that instance (nothing kept, its pixels read and decoded):

- **cold**: the first ``/frames/1/rendered`` of each copy, the render worker already warm
  (the very first request of the run, which also starts the worker, is reported apart);
- **304**: the same request again with ``If-None-Match`` of its ETag (no pixel is read);
- **repeat**: the same request again without a validator (rendered again: rendered frames
  are not kept, only thumbnails are);
- **thumbnail, kept**: ``/thumbnail`` of an instance after its first request rendered and
  kept it in S3 (later requests read the kept object and decode nothing).

Latency is over HTTP with the viewer's token (authorizer, Lambda worker, moto), median of
the runs.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import requests
from pydicom.uid import UID

from infra.bench.stow import _batches, _post, bench_options
from infra.datasets.dicom_files import test_file
from infra.datasets.generate import new_uid
from infra.local.serve import LocalStack

JPEG = {"Accept": "image/jpeg"}


def copies(name: str, count: int) -> list[bytes]:
    """``count`` copies of a test file, each a new instance of one new series (pixel data as is)."""
    original = test_file(name).read_bytes()
    study, series = new_uid(), new_uid()
    found = []
    for _ in range(count):
        ds = pydicom.dcmread(io.BytesIO(original))
        sop = UID(new_uid())
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        buffer = io.BytesIO()
        ds.save_as(buffer)
        found.append(buffer.getvalue())
    return found


def _url(base: str, data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _timed(call: Callable[[], requests.Response], status: int) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != status:
        raise RuntimeError(f"HTTP {response.status_code} (expected {status}): {response.text[:200]}")
    return elapsed, response


class _Bench:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.viewer = requests.Session()
        self.viewer.headers["Authorization"] = f"Bearer {stack.tokens['viewer']}"
        uploader = requests.Session()
        uploader.headers["Authorization"] = f"Bearer {stack.tokens['uploader']}"
        self.uploader = uploader

    def store(self, instances: list[bytes]) -> list[str]:
        for batch in _batches(instances, 1024 * 1024):
            _post(self.uploader, f"{self.stack.base_url}/studies", batch)
        return [_url(self.stack.base_url, data) for data in instances]

    def get(self, url: str, headers: dict[str, str]) -> Callable[[], requests.Response]:
        return lambda: self.viewer.get(url, headers=headers, timeout=60)

    def rendered_rows(self, label: str, urls: list[str], runs: int) -> list[str]:
        """Cold (first request per instance), 304 and repeat latencies of frame 1 rendered."""
        cold, validated, repeated = [], [], []
        for url in urls:
            elapsed, response = _timed(self.get(f"{url}/frames/1/rendered", JPEG), 200)
            cold.append(elapsed)
            etag = {**JPEG, "If-None-Match": response.headers["ETag"]}
            validated += [_timed(self.get(f"{url}/frames/1/rendered", etag), 304)[0] for _ in range(runs)]
            repeated += [_timed(self.get(f"{url}/frames/1/rendered", JPEG), 200)[0] for _ in range(runs)]
        return [
            f"| {label}: first request per instance | {statistics.median(cold):.0f} ms "
            f"| median of {len(cold)} instances |",
            f"| {label}: again, `If-None-Match` → 304 | {statistics.median(validated):.0f} ms "
            f"| median of {len(validated)} |",
            f"| {label}: again, no validator (rendered again) | {statistics.median(repeated):.0f} ms "
            f"| median of {len(repeated)} |",
        ]

    def thumbnail_rows(self, label: str, urls: list[str], runs: int) -> list[str]:
        first, kept = [], []
        for url in urls:
            first.append(_timed(self.get(f"{url}/thumbnail", JPEG), 200)[0])
            kept += [_timed(self.get(f"{url}/thumbnail", JPEG), 200)[0] for _ in range(runs)]
        return [
            f"| {label}: thumbnail, first (rendered and kept) | {statistics.median(first):.0f} ms "
            f"| median of {len(first)} instances |",
            f"| {label}: thumbnail, kept | {statistics.median(kept):.0f} ms | median of {len(kept)} |",
        ]


def run(*, quick: bool = False) -> str:
    instances, runs = (4, 5) if quick else (10, 20)
    with tempfile.TemporaryDirectory() as local_dir:
        stack = LocalStack(bench_options(Path(local_dir)))
        stack.start()
        try:
            bench = _Bench(stack)
            native = bench.store(copies("693_UNCR.dcm", instances + 1))
            j2k = bench.store(copies("693_J2KR.dcm", instances))
            # The run's first render request also starts the render worker (its cold start).
            start, _ = _timed(bench.get(f"{native[0]}/frames/1/rendered", JPEG), 200)
            rows = [f"| first render request of the run (starts the worker) | {start:.0f} ms | 1 |"]
            rows += bench.rendered_rows("CT 512x512, native", native[1:], runs)
            rows += bench.rendered_rows("CT 512x512, JPEG 2000 lossless", j2k, runs)
            rows += bench.thumbnail_rows("CT 512x512, native", native[1:], runs)
            rows += bench.thumbnail_rows("CT 512x512, JPEG 2000 lossless", j2k, runs)
        finally:
            stack.stop()
    return "\n".join(
        [
            "## Rendered frames and thumbnails (local runtime)",
            "",
            "`image/jpeg`, quality 90, frame 1 of pydicom-data's 693 CT image; over HTTP with the "
            "viewer's token.",
            "",
            "| what | time | samples |",
            "|---|---|---|",
            *rows,
        ]
    )
