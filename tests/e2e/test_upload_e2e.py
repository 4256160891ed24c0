"""The folder uploader (`make upload`, `python -m infra.upload`) and `make serve LOAD=DIR`
against the local runtime, as a user runs them; and dicomweb-client's `store_instances`
with batches sized by the uploader's own helper.

The runtime is this module's own (no snapshots, no de-identification or inference), so the
300 MB of large instances stay out of the shared one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from infra.bench.upload import write_ct_series, write_multiframe
from infra.datasets import synthetic_ct
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.upload import stow_batches
from infra.upload.batches import encoded_size
from infra.upload.journal import DEFAULT_NAME
from tests.e2e.conftest import (
    _RUNTIME_ENV_OVERRIDES,
    LOG_NAME,
    REPO_ROOT,
    START_TIMEOUT_S,
    Runtime,
    free_port,
    start_runtime,
)

pytestmark = pytest.mark.e2e

UPLOAD_TIMEOUT_S = 600
# De-identification and inference would compete for the machine's two cores (and add
# derived series to the studies); they have tests of their own.
QUIET_HOOKS = "DeidModalities=none InferenceModels=none"
SOP_INSTANCE_UID = "00080018"
NUMBER_OF_FRAMES = "00280008"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    started = start_runtime(tmp_path_factory.mktemp("upload-runtime"), persist=False, parameters=QUIET_HOOKS)
    try:
        yield started
    finally:
        assert started.stop() == 0, started.log_tail()


def _env(**extra: str) -> dict[str, str]:
    drop = {
        *_RUNTIME_ENV_OVERRIDES,
        "DICOMWEB_URL",
        "DICOMWEB_TOKEN",
        "DICOMWEB_CLIENT_ID",
        "DICOMWEB_CLIENT_SECRET",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(["layers/core/python", "."])
    return {**env, **extra}


def upload(runtime: Runtime, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m infra.upload ARGS`, by default into the local stack (its tokens file)."""
    return subprocess.run(
        [sys.executable, "-m", "infra.upload", *map(str, args)],
        cwd=REPO_ROOT,
        env=_env(LOCAL_DIR=str(runtime.local_dir)),
        capture_output=True,
        text=True,
        timeout=UPLOAD_TIMEOUT_S,
        check=False,
    )


def instances_in_study(runtime: Runtime, study: str, series: str | None = None) -> dict[str, dict[str, Any]]:
    """QIDO-RS: the study's (or one series') instances by SOP Instance UID."""
    path = f"/studies/{study}" + (f"/series/{series}" if series else "") + "/instances"
    answer = requests.get(
        runtime.base_url + path,
        params={"limit": "1000", "includefield": "NumberOfFrames"},
        headers={**runtime.auth("viewer"), "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return {item[SOP_INSTANCE_UID]["Value"][0]: item for item in answer.json()}


def _uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _phantom_zip(path: Path) -> tuple[str, str, list[str]]:
    """The synthetic CT phantom (infra/datasets/synthetic_ct.py) in a new study, zipped: its
    study, its series (the inference hook adds its results to the study) and its instances."""
    study, series = new_uid(), new_uid()
    volume = synthetic_ct.hu_volume()
    uids = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(synthetic_ct.SLICES):
            ds = synthetic_ct.ct_slice(index, volume, series_uid=series)
            ds.StudyInstanceUID = study
            archive.writestr(f"phantom/{index:03d}.dcm", to_part10(ds))
            uids.append(str(ds.SOPInstanceUID))
    return study, series, uids


def test_a_folder_and_a_zip_go_in_and_every_instance_is_searchable(runtime: Runtime, tmp_path: Path) -> None:
    # Given a folder with a 40-slice 512x512 CT series (21 MB: five requests' worth) and a
    # note, and beside it a zip of the synthetic CT phantom
    folder = tmp_path / "series"
    paths = write_ct_series(folder, 40)
    (folder / "README.txt").write_text("exported from the PACS")
    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    phantom_study, phantom_series, phantom_uids = _phantom_zip(tmp_path / "phantom.zip")

    # When both are uploaded with the command line's defaults (the local stack)
    done = upload(runtime, folder, tmp_path / "phantom.zip", "--no-progress")

    # Then it exits 0 with a summary that accounts for every file
    assert done.returncode == 0, done.stdout + done.stderr
    assert "60 stored, 0 failed, 1 skipped, 0 already stored" in done.stdout
    assert "README.txt: not a DICOM Part 10 file" in done.stdout
    # And every instance is visible in QIDO-RS
    assert set(instances_in_study(runtime, study)) == {_uid_of(p) for p in paths}
    assert set(instances_in_study(runtime, phantom_study, phantom_series)) == set(phantom_uids)


def test_an_interrupted_upload_resumes_from_its_journal(runtime: Runtime, tmp_path: Path) -> None:
    # Given a folder uploaded once: its journal records each file stored
    folder = tmp_path / "series"
    first = write_ct_series(folder, 6, size=128, seed=1)
    assert upload(runtime, folder, "--no-progress").returncode == 0
    journal = folder / DEFAULT_NAME
    assert [json.loads(line)["outcome"] for line in journal.read_text().splitlines()] == ["stored"] * 6
    # And a second run that was killed after storing two files, before journaling them
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:4]) + lines[4][:20])
    # And new files added since
    added = write_ct_series(folder / "later", 3, size=128, seed=2)

    # When the upload is run again
    done = upload(runtime, folder, "--no-progress")

    # Then only the files not journaled as stored are sent, and all are stored
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 stored, 0 failed, 0 skipped, 4 already stored" in done.stdout
    sent = [json.loads(line) for line in journal.read_text().splitlines()[5:]]
    assert sorted(r["path"] for r in sent) == sorted(str(p) for p in [*first[4:], *added])
    assert {r["outcome"] for r in sent} == {"stored"}
    # And the study holds each instance once
    study = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
    assert len(instances_in_study(runtime, study)) == 6


def test_every_failure_is_listed_with_its_reason_and_the_exit_code_is_1(
    runtime: Runtime, tmp_path: Path
) -> None:
    # Given an instance already stored, and a different object reusing its SOP Instance UID
    original = make_dataset(rows=16, columns=16)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "original.dcm").write_bytes(to_part10(original))
    assert upload(runtime, tmp_path / "a", "--no-progress").returncode == 0
    changed = make_dataset(sop=original.SOPInstanceUID, study=original.StudyInstanceUID, rows=16, columns=16)
    changed.SeriesInstanceUID = original.SeriesInstanceUID
    changed.PatientName = "Other^Name"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "changed.dcm").write_bytes(to_part10(changed))
    (tmp_path / "b" / "fine.dcm").write_bytes(to_part10(make_dataset(rows=16, columns=16)))

    # When the folder with the conflicting object is uploaded
    done = upload(runtime, tmp_path / "b", "--no-progress")

    # Then the duplicate fails with its DICOM reason (the store's DuplicatePolicy is reject)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 stored, 1 failed" in done.stdout
    assert (
        f"changed.dcm ({original.SOPInstanceUID}): 0x0111 (duplicate SOP instance): an instance"
        in done.stdout
    )


def test_a_bad_token_is_a_usage_error_with_exit_code_2(runtime: Runtime, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "in", 1, size=16)
    done = upload(runtime, tmp_path / "in", "--no-progress", "--token", "not-a-token")
    assert done.returncode == 2
    assert "HTTP 401" in done.stdout


@dataclass(frozen=True)
class BigFolder:
    """A 300 MB folder: two 105 MB multi-frame instances, a 180-slice CT series, a zip, a note."""

    path: Path
    multiframes: tuple[Path, ...]
    slices: tuple[Path, ...]
    phantom_study: str
    phantom_series: str
    phantom_uids: tuple[str, ...]

    @property
    def instances(self) -> int:
        return len(self.multiframes) + len(self.slices) + len(self.phantom_uids)


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> BigFolder:
    path = tmp_path_factory.mktemp("big-folder")
    multiframes = tuple(write_multiframe(path, frames=200, name=f"multiframe-{n}.dcm") for n in (1, 2))
    slices = tuple(write_ct_series(path / "ct", 180))
    phantom_study, phantom_series, phantom_uids = _phantom_zip(path / "phantom.zip")
    (path / "notes.txt").write_text("not DICOM")
    folder = BigFolder(path, multiframes, slices, phantom_study, phantom_series, tuple(phantom_uids))
    assert sum(p.stat().st_size for p in path.rglob("*")) > 300_000_000
    return folder


def assert_all_searchable(runtime: Runtime, folder: BigFolder) -> None:
    """Every instance of the folder is visible in QIDO-RS; the large ones stored byte for byte."""
    first = pydicom.dcmread(folder.slices[0], stop_before_pixels=True)
    series = instances_in_study(runtime, first.StudyInstanceUID, first.SeriesInstanceUID)
    assert set(series) == {_uid_of(p) for p in folder.slices}
    phantom = instances_in_study(runtime, folder.phantom_study, folder.phantom_series)
    assert set(phantom) == set(folder.phantom_uids)
    for path in folder.multiframes:
        sop = _uid_of(path)
        found = instances_in_study(
            runtime, str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        )
        assert found[sop][NUMBER_OF_FRAMES]["Value"] == [200]
        assert runtime.instance_bytes(sop) == path.read_bytes()


@pytest.mark.slow
def test_a_300_mb_folder_with_100_mb_instances_goes_through_make_upload_with_a_progress_bar(
    runtime: Runtime, big_folder: BigFolder
) -> None:
    # Given a 300 MB folder with two 105 MB multi-frame instances (200 frames of 512x512)
    # When `make upload DIR=...` runs against the local stack (the venv as it is)
    started = time.monotonic()
    done = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            ".venv/.installed",
            "upload",
            f"DIR={big_folder.path}",
            f"LOCAL_DIR={runtime.local_dir}",
        ],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=UPLOAD_TIMEOUT_S,
        check=False,
    )
    elapsed = time.monotonic() - started

    # Then it exits 0; the large instances went through an upload session, the rest by STOW-RS
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"{big_folder.instances} stored, 0 failed, 1 skipped" in done.stdout
    assert "1 upload session" in done.stdout
    # And the progress bar counted the bytes up to the total
    assert "upload: 100%" in done.stderr
    print(f"\n300 MB folder via make upload: {elapsed:.1f} s\n{done.stdout}")
    # And every instance is searchable, the large ones stored byte for byte
    assert_all_searchable(runtime, big_folder)


def test_dicomweb_client_store_instances_with_batches_sized_by_the_uploader(runtime: Runtime) -> None:
    # Given a 16-slice 512x512 CT series: 8.4 MB
    study, series = new_uid(), new_uid()
    rng = np.random.default_rng(16)
    datasets = []
    for number in range(1, 17):
        ds = make_dataset(study=study, series=series, rows=512, columns=512, InstanceNumber=number)
        ds.PixelData = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes()
        ds.preamble = b"\0" * 128  # as read from a file: dcmwrite then writes Part 10
        datasets.append(ds)
    assert sum(encoded_size(ds) for ds in datasets) > 8_000_000
    client = DICOMwebClient(runtime.base_url, headers=runtime.auth("uploader"))

    # When it is stored in one request, the API refuses it as too large
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances(datasets)
    assert refused.value.response.status_code == 413

    # When it is stored in the batches the uploader's helper sizes
    batches = stow_batches(datasets)
    assert len(batches) > 1
    for batch in batches:
        response = client.store_instances(batch)
        # Then every request is accepted, every instance in it stored
        assert len(response.ReferencedSOPSequence) == len(batch)
        assert "FailedSOPSequence" not in response
    assert set(instances_in_study(runtime, study)) == {ds.SOPInstanceUID for ds in datasets}


@pytest.mark.slow
def test_make_serve_load_stores_every_file_of_any_size(tmp_path: Path, big_folder: BigFolder) -> None:
    # Given the 300 MB folder (with the journal an earlier `make upload` may have left in it)
    # When a runtime starts with LOAD=<folder>, as `make serve LOAD=...` starts it
    loaded = _start_with_load(tmp_path / "local", big_folder.path)
    try:
        # Then its log reports every file stored, none skipped for its size
        log = loaded.log_file.read_text()
        assert f"{big_folder.instances} stored, 0 failed, 1 skipped" in log, loaded.log_tail()
        assert "notes.txt: not a DICOM Part 10 file" in log
        assert "over the API request limit" not in log
        # And every file is visible in QIDO-RS
        assert_all_searchable(loaded, big_folder)
    finally:
        assert loaded.stop() == 0, loaded.log_tail()


def _start_with_load(local_dir: Path, folder: Path) -> Runtime:
    """`python -m infra.local.serve` with LOAD set, waiting until its LOAD summary is logged."""
    local_dir.mkdir(parents=True)
    port = free_port()
    log = open(local_dir / LOG_NAME, "ab")  # noqa: SIM115 (closed by Runtime.stop)
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.local.serve", "--port", str(port), "--local-dir", str(local_dir)],
        cwd=REPO_ROOT,
        env=_env(LOAD=str(folder), PERSIST="off", PARAMETER_OVERRIDES=QUIET_HOOKS, PYTHONUNBUFFERED="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runtime = Runtime(process, local_dir, port, {}, {}, log)
    deadline = time.monotonic() + START_TIMEOUT_S + UPLOAD_TIMEOUT_S
    while f"LOAD {folder}:" not in runtime.log_file.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            runtime.stop()
            pytest.fail(f"no LOAD summary:\n{runtime.log_tail()}")
        time.sleep(0.5)
    time.sleep(0.5)  # the rest of the summary, printed in the same call
    runtime.info = json.loads((local_dir / "runtime.json").read_text())
    runtime.tokens = dict(json.loads(Path(runtime.info["tokens_file"]).read_text())["tokens"])
    return runtime
