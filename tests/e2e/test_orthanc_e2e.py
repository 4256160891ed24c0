"""A hospital PACS in front of the store: Orthanc 1.10 and its DICOMweb plugin, from Debian.

Orthanc receives a CT study of 100 slices of 512 x 512 (52 MB, far over the 4.4 MB that one
API request carries), forwards each instance alone to our STOW-RS through its DICOMweb client
(the Lua hook of :mod:`tests.e2e.orthanc`), searches the store through the same client
(QIDO-RS, including a search that matches nothing), forgets the study, and retrieves it back
(WADO-RS): every file it then holds is the file it first received, byte for byte.

The second test shows why the hook is there: the plugin's own "send this study" is one
request, which the API refuses.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pydicom
import pytest
import requests

from infra.datasets.generate import make_dataset, new_uid, to_part10
from tests.e2e.conftest import Runtime, start_runtime
from tests.e2e.debian import ensure_packages_fixture  # noqa: F401 (fixture)
from tests.e2e.helpers import API_LIMIT_BYTES
from tests.e2e.orthanc import READ_SERVER, WRITE_SERVER, Orthanc, orthanc_fixture  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLICES = 100
ROWS = COLUMNS = 512
SLICE_SPACING_MM = 1.25
INTERCEPT = -1024
PUSH_TIMEOUT_S = 120.0
STUDY_ROUTE = "POST /studies"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """This module's own runtime, without the hooks that add to a stable study or copy it.

    Inference adds a SEG and an SR to a stable CT study, which changes the study and rebuilds
    its retrieval while Orthanc retrieves it; de-identification copies 52 MB. Neither is what
    this module tests, and both would load the session's shared runtime."""
    started = start_runtime(
        tmp_path_factory.mktemp("orthanc-runtime"),
        persist=False,
        parameters="InferenceModels=none DeidModalities=none",
    )
    try:
        yield started
    finally:
        assert started.stop() == 0, started.log_tail()


def ct_study(slices: int, *, seed: int) -> dict[str, bytes]:
    """An axial CT study (one series), Part 10 bytes by SOP Instance UID.

    Each slice is a water cylinder (0 HU) in air (-1000 HU) with noise, stored as unsigned
    16-bit values with Rescale Intercept -1024, as CT scanners write them."""
    study, series, frame_of_reference = new_uid(), new_uid(), new_uid()
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:ROWS, 0:COLUMNS]
    body = ((rows - 256) / 180.0) ** 2 + ((columns - 256) / 230.0) ** 2 <= 1.0
    files: dict[str, bytes] = {}
    for index in range(slices):
        hu = np.where(body, 0.0, -1000.0) + rng.normal(0.0, 15.0, size=(ROWS, COLUMNS))
        ds = make_dataset(
            study=study,
            series=series,
            rows=ROWS,
            columns=COLUMNS,
            PatientName="Orthanc^Push",
            PatientID="ORTHANC-E2E",
            PatientBirthDate="19600101",
            PatientSex="O",
            ReferringPhysicianName="",
            Manufacturer="Synthetic",
            StudyDescription="CT chest (pushed by a PACS)",
            SeriesDescription="Axial 1.25 mm",
            FrameOfReferenceUID=frame_of_reference,
            InstanceNumber=index + 1,
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            ImagePositionPatient=[-250.0, -250.0, -index * SLICE_SPACING_MM],
            SliceThickness=SLICE_SPACING_MM,
            PixelSpacing=[0.9765625, 0.9765625],
            RescaleIntercept=INTERCEPT,
            RescaleSlope=1,
            KVP=120,
            BitsStored=12,
            HighBit=11,
        )
        ds.PixelData = np.clip(np.round(hu - INTERCEPT), 0, 4095).astype(np.uint16).tobytes()
        files[str(ds.SOPInstanceUID)] = to_part10(ds)
    return files


def study_uid(files: dict[str, bytes]) -> str:
    first = pydicom.dcmread(io.BytesIO(next(iter(files.values()))), stop_before_pixels=True)
    return str(first.StudyInstanceUID)


def upload(orthanc: Orthanc, files: dict[str, bytes]) -> str:
    """POST each file to Orthanc's REST API (as a modality's C-STORE lands); its study id."""
    parents: set[str] = set()
    for data in files.values():
        answer = orthanc.post("/instances", data)
        assert answer.status_code == 200, f"{answer.status_code} {answer.text}\n{orthanc.log_tail()}"
        parents.add(str(answer.json()["ParentStudy"]))
    assert len(parents) == 1
    return parents.pop()


def wait_until(condition: Callable[[], bool], timeout: float, explain: Callable[[], str]) -> float:
    """Poll ``condition`` until it holds; the seconds it took (a failure says ``explain()``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, explain()
        time.sleep(0.25)
    return time.monotonic() - started


def our_instances(runtime: Runtime, study: str) -> list[dict[str, Any]]:
    """Our QIDO-RS, with the viewer's token: the study's instances."""
    answer = requests.get(
        f"{runtime.base_url}/studies/{study}/instances",
        headers=runtime.auth("viewer"),
        params={"limit": "1000"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def stow_audits(runtime: Runtime, study: str) -> list[dict[str, Any]]:
    """The audit records of STOW-RS requests that stored into ``study`` (one per request)."""
    records = []
    for line in (runtime.local_dir / "audit.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        objects = record.get("ParticipantObjectIdentification", [])
        if record.get("Route") == STUDY_ROUTE and any(o.get("ParticipantObjectID") == study for o in objects):
            records.append(record)
    return records


def stow_jobs(orthanc: Orthanc) -> dict[str, dict[str, Any]]:
    """Orthanc's DICOMweb STOW-RS client jobs, by id."""
    answer = orthanc.get("/jobs?expand")
    assert answer.status_code == 200, answer.text
    return {job["ID"]: job for job in answer.json() if job["Type"] == "DicomWebStowClient"}


def access_log_count(runtime: Runtime, line: str) -> int:
    return runtime.log_file.read_text(errors="replace").count(line)


def test_orthanc_pushes_a_100_slice_ct_study_queries_it_and_retrieves_it_byte_for_byte(
    orthanc: Orthanc, runtime: Runtime
) -> None:
    # Given a CT study of 100 slices, over the API's request ceiling as a whole
    files = ct_study(SLICES, seed=13)
    study = study_uid(files)
    total = sum(len(data) for data in files.values())
    assert total > 10 * API_LIMIT_BYTES
    jobs_before = set(stow_jobs(orthanc))

    # When it arrives in Orthanc, whose hook forwards each instance alone to our store
    started = time.monotonic()
    orthanc_study = upload(orthanc, files)
    received = time.monotonic() - started
    pushed = received + wait_until(
        lambda: len(our_instances(runtime, study)) == SLICES,
        PUSH_TIMEOUT_S,
        lambda: f"{len(our_instances(runtime, study))} of {SLICES} instances arrived\n{orthanc.log_tail()}",
    )

    # Then every forward succeeded, one STOW-RS request per instance, each under the ceiling
    jobs = {k: v for k, v in stow_jobs(orthanc).items() if k not in jobs_before}
    wait_until(
        lambda: all(job["State"] == "Success" for job in stow_jobs(orthanc).values() if job["ID"] in jobs),
        PUSH_TIMEOUT_S,
        lambda: f"jobs not all successful: {stow_jobs(orthanc)}\n{orthanc.log_tail()}",
    )
    assert len(jobs) == SLICES
    audits = stow_audits(runtime, study)
    assert len(audits) == SLICES
    assert all(a["EventIdentification"]["EventOutcomeDescription"] == "200" for a in audits)
    forwarded = [
        o["ParticipantObjectDescription"]["instance"]
        for a in audits
        for o in a["ParticipantObjectIdentification"]
        if o.get("ParticipantObjectDescription")
    ]
    assert sorted(forwarded) == sorted(files)
    assert max(len(data) for data in files.values()) < API_LIMIT_BYTES
    print(
        f"\nOrthanc push: {SLICES} instances, {total / 1e6:.1f} MB in {SLICES} requests of "
        f"{min(map(len, files.values())) / 1e6:.2f}-{max(map(len, files.values())) / 1e6:.2f} MB; "
        f"received by Orthanc in {received:.1f} s, all in our store after {pushed:.1f} s"
    )

    # And Orthanc's QIDO-RS client finds the study and its instances (viewer token)
    found = orthanc.post(
        f"/dicom-web/servers/{READ_SERVER}/qido",
        {"Uri": "/studies", "Arguments": {"StudyInstanceUID": study}},
    )
    assert found.status_code == 200, f"{found.text}\n{orthanc.log_tail()}"
    # (Orthanc's client simplifies each attribute to its first string value)
    assert [s["0020000D"]["Value"] for s in found.json()] == [study]
    instances = orthanc.post(f"/dicom-web/servers/{READ_SERVER}/qido", {"Uri": f"/studies/{study}/instances"})
    assert instances.status_code == 200, f"{instances.text}\n{orthanc.log_tail()}"
    assert sorted(i["00080018"]["Value"] for i in instances.json()) == sorted(files)

    # And a search that matches nothing is an empty answer, not an error (200 [], CP-2473)
    nobody = orthanc.post(
        f"/dicom-web/servers/{READ_SERVER}/qido", {"Uri": "/studies", "Arguments": {"PatientID": "NOBODY"}}
    )
    assert nobody.status_code == 200, f"{nobody.text}\n{orthanc.log_tail()}"
    assert nobody.json() == []

    # When Orthanc forgets the study and retrieves it back with its WADO-RS client (our
    # store builds the study's body on this first retrieval, and redirects to it)
    assert orthanc.delete(f"/studies/{orthanc_study}").status_code == 200
    assert orthanc.get("/instances").json() == []
    started = time.monotonic()
    retrieved = orthanc.post(
        f"/dicom-web/servers/{READ_SERVER}/retrieve",
        {"Resources": [{"Study": study}], "Synchronous": True},
    )
    retrieve_s = time.monotonic() - started
    assert retrieved.status_code == 200, f"{retrieved.text}\n{orthanc.log_tail()}"

    # Then Orthanc holds every instance again, each the very file it first received
    held: dict[str, bytes] = {}
    for instance_id in orthanc.get("/instances").json():
        tags = orthanc.get(f"/instances/{instance_id}/simplified-tags").json()
        held[tags["SOPInstanceUID"]] = orthanc.get(f"/instances/{instance_id}/file").content
    assert sorted(held) == sorted(files)
    different = [sop for sop, data in files.items() if held[sop] != data]
    assert not different, f"{len(different)} instances came back changed, e.g. {different[0]}"
    print(f"Orthanc retrieve: {total / 1e6:.1f} MB in {retrieve_s:.1f} s (the study's body built on the way)")


def test_orthancs_own_study_stow_is_one_request_the_api_refuses(orthanc: Orthanc, runtime: Runtime) -> None:
    # Given a 10-slice study (5 MB) in Orthanc, forwarded instance by instance by the hook
    files = ct_study(10, seed=17)
    study = study_uid(files)
    assert sum(len(data) for data in files.values()) > API_LIMIT_BYTES
    orthanc_study = upload(orthanc, files)
    wait_until(
        lambda: len(our_instances(runtime, study)) == len(files),
        PUSH_TIMEOUT_S,
        lambda: f"the hook did not forward the study\n{orthanc.log_tail()}",
    )
    refused_before = access_log_count(runtime, f'"{STUDY_ROUTE} HTTP/1.1" 413')

    # When Orthanc's DICOMweb client is asked to send the whole study (its explorer's
    # "Send to DICOMweb server")
    answer = orthanc.post(
        f"/dicom-web/servers/{WRITE_SERVER}/stow", {"Resources": [orthanc_study], "Synchronous": True}
    )

    # Then it sends one request for all of it, which the API refuses as too large
    assert answer.status_code == 500, answer.text
    assert access_log_count(runtime, f'"{STUDY_ROUTE} HTTP/1.1" 413') == refused_before + 1
    # And nothing already stored is lost
    assert len(our_instances(runtime, study)) == len(files)
