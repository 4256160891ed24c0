"""Folder uploader throughput through the local runtime: a CT series and a 100 MB instance,
and a 1,000-slice CT study loaded as ``make serve LOAD=`` loads it.

Each figure is end to end, as a user waits for it: from the start of ``python -m
infra.upload``'s run (scanning the headers) until the last instance is stored and indexed;
for the multi-frame instance that includes the upload session's presigned PUTs and the
S3-event ingest; for the study, until QIDO-RS lists it with all its instances (its counts
are recounted from the table's stream). Run alone with ``python -m infra.bench.upload [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import requests
from pydicom.uid import CTImageStorage

from infra.bench.stow import bench_options
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.local.serve import LocalStack
from infra.upload.uploader import Report, upload_folder

CT_SIZE = 512  # 512x512 16-bit: 525 kB per instance
MULTIFRAME_FRAMES = 200  # x 512 KiB = 100 MiB of pixel data


def write_ct_series(folder: Path, count: int, *, size: int = CT_SIZE, seed: int = 7) -> list[Path]:
    """A CT series of ``count`` ``size``x``size`` 16-bit noise slices as Part 10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = new_uid(), new_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(1, count + 1):
        ds = make_dataset(study=study, series=series, rows=size, columns=size, InstanceNumber=number)
        ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
        path = folder / f"CT{number:04d}.dcm"
        path.write_bytes(to_part10(ds))
        paths.append(path)
    return paths


def write_multiframe(
    folder: Path, *, frames: int = MULTIFRAME_FRAMES, size: int = CT_SIZE, name: str = "multiframe.dcm"
) -> Path:
    """One multi-frame ``size``x``size`` 16-bit instance of random frames (200 frames: 105 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(sop_class=CTImageStorage, rows=size, columns=size)
    ds.NumberOfFrames = frames
    ds.PixelData = os.urandom(size * size * 2 * frames)
    path = folder / name
    path.write_bytes(to_part10(ds))
    return path


def _row(label: str, report: Report) -> str:
    if report.exit_code != 0:
        raise RuntimeError(f"{label}: the upload failed\n{report.summary()}")
    mb = report.bytes_stored / 1e6
    return (
        f"| {label} | {report.stored} | {mb:.1f} | {report.elapsed_s:.1f} | {mb / report.elapsed_s:.1f} | "
        f"{report.stored / report.elapsed_s:.1f} | {report.stow_requests} | {report.sessions} |"
    )


def listed_after(stack: LocalStack, study: str, count: int, started: float, *, timeout: float = 600) -> float:
    """Seconds from ``started`` until QIDO-RS lists ``study`` with ``count`` instances."""
    headers = {"Authorization": f"Bearer {stack.tokens['viewer']}"}
    params = {"StudyInstanceUID": study, "includefield": "00201208"}
    while time.perf_counter() - started < timeout:
        found = requests.get(f"{stack.base_url}/studies", params=params, headers=headers, timeout=30).json()
        if found and found[0].get("00201208", {}).get("Value") == [count]:
            return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError(f"study {study} not listed with {count} instances after {timeout:.0f} s")


def run(*, quick: bool = False) -> str:
    count = 40 if quick else 200
    frames = 40 if quick else MULTIFRAME_FRAMES
    with tempfile.TemporaryDirectory() as local_dir, tempfile.TemporaryDirectory() as data:
        series_folder, instance_folder = Path(data) / "series", Path(data) / "instance"
        write_ct_series(series_folder, count)
        write_multiframe(instance_folder, frames=frames)
        study_folder, slices = Path(data) / "study", 100 if quick else 1000
        study = pydicom.dcmread(write_ct_series(study_folder, slices, seed=11)[0], stop_before_pixels=True)
        stack = LocalStack(bench_options(Path(local_dir)))
        stack.start()
        try:
            rows = []
            for label, folder in (
                (f"CT series, {count} x 512x512 (525 kB)", series_folder),
                (f"multi-frame instance, {frames} frames of 512x512 16-bit", instance_folder),
            ):
                report = upload_folder(folder, base_url=stack.base_url, token=stack.tokens["uploader"])
                rows.append(_row(label, report))
            # What `make serve LOAD=folder` does once the stack is up, then QIDO-RS polled
            started = time.perf_counter()
            report = upload_folder(study_folder, base_url=stack.base_url, token=stack.tokens["uploader"])
            rows.append(_row(f"CT study, {slices} x 512x512 (`make serve LOAD=`)", report))
            listed = listed_after(stack, str(study.StudyInstanceUID), slices, started)
        finally:
            stack.stop()
    return "\n".join(
        [
            "## Folder uploader (python -m infra.upload, concurrency 4, local runtime)",
            "",
            "| folder | instances | MB | s (until indexed) | MB/s | instances/s | STOW-RS requests "
            "| upload sessions |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"The {slices}-slice study is listed by QIDO-RS with all its instances {listed:.1f} s after "
            "its upload started (hooks off: de-identification and inference; goal 60 s for 1,000).",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(quick=parser.parse_args().quick))
