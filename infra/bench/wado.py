"""WADO-RS through the local runtime: series metadata, frames, series retrieval.

Latency is measured over HTTP (authorizer, Lambda worker, moto); storage reads and the
bytes read from S3 per byte returned are measured in-process with the same service and
an :class:`ObjectReader` that counts them.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests

from dicomweb_core.config import settings
from dicomweb_core.index.models import SeriesItem
from dicomweb_core.index.table import use_by_default
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.service import Request, RetrieveService
from dicomweb_core.web.multipart import split_parts
from dicomweb_core.web.uri import DicomWebURI
from infra.bench.stow import _batches, _post, bench_options, ct_series
from infra.datasets.dicom_files import test_file
from infra.local.serve import LocalStack


def _median_ms(call: Callable[[], requests.Response], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        response = call()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    return statistics.median(samples)


def _store(stack: LocalStack, instances: list[bytes]) -> None:
    """Store through STOW-RS in 1 MB requests: hundreds of small instances per 4 MB request
    would keep one request near the 29 s timeout on two cores while the hooks run."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.tokens['uploader']}"
    for batch in _batches(instances, 1024 * 1024):
        _post(session, f"{stack.base_url}/studies", batch)


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@dataclass
class _Bench:
    stack: LocalStack
    service: RetrieveService
    reader: ObjectReader
    viewer: requests.Session

    def get(self, url: str, headers: dict[str, str] | None = None) -> Callable[[], requests.Response]:
        return lambda: self.viewer.get(url, headers=headers or {})

    def metadata_row(self, count: int, runs: int) -> str:
        series = ct_series(count, size=64)
        _store(self.stack, series)
        study, series_uid, _ = _uids(series[0])
        url = f"{self.stack.base_url}/studies/{study}/series/{series_uid}/metadata"
        cold = _median_ms(self.get(url, {"Accept-Encoding": "gzip"}), 1)
        _wait_for_prebuilt_metadata(study, series_uid)  # SeriesStable → SeriesMetadataFunction
        cached = _median_ms(self.get(url, {"Accept-Encoding": "gzip"}), runs)
        self.reader.requests = 0
        uri = DicomWebURI(self.stack.base_url, study=study, series=series_uid)
        self.service.metadata(Request(uri, None, {}, None, True), base_url=self.stack.base_url)
        return (
            f"| series metadata, {count} instances | cold {cold:.0f} ms, cached {cached:.0f} ms "
            f"| 1 index read + {self.reader.requests} S3 read(s) when cached |"
        )

    def frame_row(self, label: str, data: bytes, accept: str | None, runs: int) -> str:
        _store(self.stack, [data])
        study, series_uid, sop = _uids(data)
        url = f"{self.stack.base_url}/studies/{study}/series/{series_uid}/instances/{sop}/frames/1"
        latency = _median_ms(self.get(url, {"Accept": accept} if accept else None), runs)
        self.reader.requests = self.reader.bytes_read = 0
        uri = DicomWebURI(self.stack.base_url, study=study, series=series_uid, instance=sop, frames=(1,))
        returned = _frame_payload(self.service.frames(Request(uri, accept, {}, None, False)).body)
        ratio = self.reader.bytes_read / max(returned, 1)
        return (
            f"| frame 1, {label} | {latency:.0f} ms median of {runs} "
            f"| {self.reader.requests} S3 read(s), {ratio:.2f} bytes read per frame byte |"
        )

    def series_row(self) -> str:
        series = ct_series(30, size=256)
        _store(self.stack, series)
        study, series_uid, _ = _uids(series[0])
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        started = time.perf_counter()
        body = self.viewer.get(
            f"{self.stack.base_url}/studies/{study}/series/{series_uid}", headers={"Accept": accept}
        )
        elapsed = time.perf_counter() - started
        megabytes = len(body.content) / 1e6
        return (
            f"| series retrieve, 30 x 131 kB | {megabytes / elapsed:.1f} MB/s "
            f"({megabytes:.1f} MB in {elapsed * 1000:.0f} ms) | {len(series)} S3 reads |"
        )


def _wait_for_prebuilt_metadata(study: str, series: str, timeout_s: float = 120.0) -> None:
    """Until the metadata hook has built the series' document (after the stable age)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = SeriesItem.get(*SeriesItem.key(study, series), consistent_read=True)
        if item.metadata_version == item.version:
            return
        time.sleep(0.5)
    raise RuntimeError(f"series {series}: no pre-built metadata after {timeout_s:.0f} s")


def _bench(stack: LocalStack) -> _Bench:
    """The service in-process, reading the runtime's moto, for counting storage reads."""
    wado = stack.template.functions()["WadoFunction"]
    os.environ.update({"AWS_ENDPOINT_URL": stack.moto_url, **stack.stack.function_environment(wado)})
    use_by_default(stack.stack.physical_ids["IndexTable"])
    settings.cache_clear()
    reader = ObjectReader(settings().bucket_name)
    service = RetrieveService(settings=settings(), reader=reader)
    viewer = requests.Session()
    viewer.headers["Authorization"] = f"Bearer {stack.tokens['viewer']}"
    return _Bench(stack, service, reader, viewer)


def run(*, quick: bool = False) -> str:
    runs, frame_runs = (5, 10) if quick else (20, 50)
    ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    compressed = test_file("emri_small_jpeg_2k_lossless.dcm").read_bytes()
    with tempfile.TemporaryDirectory() as local_dir:
        stack = LocalStack(bench_options(Path(local_dir)))
        stack.start()
        try:
            bench = _bench(stack)
            rows = [bench.metadata_row(count, runs) for count in ((20, 100) if quick else (100, 500))]
            rows.append(bench.frame_row("native 512x512x16", ct_series(1, size=512)[0], None, frame_runs))
            rows.append(bench.frame_row("JPEG 2000, as stored (OHIF)", compressed, ohif, frame_runs))
            rows.append(bench.frame_row("JPEG 2000, decompressed", compressed, None, frame_runs))
            rows.append(bench.series_row())
        finally:
            stack.stop()
    return "\n".join(
        ["## WADO-RS (local runtime)", "", "| what | time | storage reads |", "|---|---|---|", *rows]
    )


def _frame_payload(body: bytes | str | None) -> int:
    """Bytes of frame data in a multipart response (part bodies only)."""
    raw = body if isinstance(body, bytes) else (body or "").encode()
    boundary = raw.split(b"\r\n", 1)[0][2:].decode()
    return sum(len(p.body) for p in split_parts(raw, boundary))
