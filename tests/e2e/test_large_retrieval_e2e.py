"""Retrievals far above the Lambda response limit, with dicomweb-client and plain HTTP, through `make serve`.

A 200 MB series (200 MR images of 1 MiB, stored through STOW-RS in batches) and a 100 MB
multi-frame instance (stored through an upload session by the folder uploader, as no
STOW-RS request can carry it). The first retrieval orders its body, waits for
BundleFunction to build it, and answers 303 to a presigned path on the API's own host,
which dicomweb-client follows even though it pins its Host header. The runtime is this module's own (no
snapshots, no de-identification), so its 600 MB of objects stay out of the shared one.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import MRImageStorage

from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.upload.uploader import upload_folder
from tests.e2e.conftest import Runtime, start_runtime
from tests.e2e.helpers import stow

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERIES_INSTANCES = 200
INSTANCE_BYTES = 512 * 1024 * 2  # 512 x 1024, 16 bits: 1 MiB of pixel data
FRAMES = 50  # x 2 MiB = 100 MiB
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    started = start_runtime(
        tmp_path_factory.mktemp("large-runtime"), persist=False, parameters="DeidModalities=none"
    )
    try:
        yield started
    finally:
        assert started.stop() == 0, started.log_tail()


def _client(runtime: Runtime) -> DICOMwebClient:
    return DICOMwebClient(runtime.base_url, headers={"Authorization": f"Bearer {runtime.tokens['viewer']}"})


def _redirect(runtime: Runtime, path: str) -> str:
    """Where a retrieval of ``path`` is redirected (its body being built already)."""
    headers = {"Authorization": f"Bearer {runtime.tokens['viewer']}", "Accept": DICOM_MULTIPART}
    answer = requests.get(runtime.base_url + path, headers=headers, allow_redirects=False, timeout=60)
    assert answer.status_code == 303, answer.text
    return str(answer.headers["Location"])


def test_a_200_mb_series_with_dicomweb_client_and_plain_http(runtime: Runtime) -> None:
    # Given a 200 MB series stored through STOW-RS
    study, series = new_uid(), new_uid()
    datasets = []
    for number in range(1, SERIES_INSTANCES + 1):
        ds = make_dataset(
            study=study, series=series, modality="MR", sop_class=MRImageStorage, rows=512, columns=1024
        )
        ds.InstanceNumber = number
        ds.PixelData = os.urandom(INSTANCE_BYTES)
        datasets.append(ds)
    payloads = [to_part10(ds) for ds in datasets]
    for start in range(0, len(payloads), 3):
        response = stow(runtime.base_url, payloads[start : start + 3], token=runtime.tokens["uploader"])
        assert response.status_code == 200, response.text
    total_mb = sum(len(p) for p in payloads) / 1e6
    assert total_mb > 200

    # When dicomweb-client retrieves it at once (its body is built on this first request,
    # which waits, and is redirected to itself while it waits longer)
    started = time.perf_counter()
    retrieved = _client(runtime).retrieve_series(study_instance_uid=study, series_instance_uid=series)
    first = time.perf_counter() - started
    # Then it has all 200 instances, byte for byte in their pixel data
    expected = {ds.SOPInstanceUID: hashlib.sha256(ds.PixelData).hexdigest() for ds in datasets}
    assert {ds.SOPInstanceUID: hashlib.sha256(ds.PixelData).hexdigest() for ds in retrieved} == expected
    # And the retrieval now redirects at once to the built body, on the API's host
    assert _redirect(runtime, f"/studies/{study}/series/{series}").startswith(runtime.base_url + "/bundles/")
    started = time.perf_counter()
    again = _client(runtime).retrieve_series(study_instance_uid=study, series_instance_uid=series)
    elapsed = time.perf_counter() - started
    assert len(again) == SERIES_INSTANCES
    print(
        f"\n200 MB series via dicomweb-client: {total_mb:.0f} MB in {first:.1f} s the first time "
        f"(body built), {elapsed:.1f} s again ({total_mb / elapsed:.0f} MB/s)"
    )

    # And plain HTTP (requests follows the 303) gets the same multipart body
    answer = requests.get(
        f"{runtime.base_url}/studies/{study}/series/{series}",
        headers={"Authorization": f"Bearer {runtime.tokens['viewer']}", "Accept": DICOM_MULTIPART},
        timeout=300,
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("multipart/related")
    assert len(answer.content) > sum(len(p) for p in payloads)
    for payload in payloads[:3] + payloads[-3:]:
        assert payload[132:] in answer.content


def test_a_100_mb_multiframe_instance_with_dicomweb_client_and_plain_http(
    runtime: Runtime, tmp_path: Path
) -> None:
    # Given a 100 MB multi-frame instance, stored through an upload session (presigned parts)
    study, series = new_uid(), new_uid()
    ds = make_dataset(
        study=study, series=series, modality="MR", sop_class=MRImageStorage, rows=1024, columns=1024
    )
    ds.NumberOfFrames = FRAMES
    ds.PixelData = os.urandom(1024 * 1024 * 2 * FRAMES)
    data = to_part10(ds)
    path = tmp_path / "large.dcm"
    path.write_bytes(data)
    report = upload_folder(tmp_path, base_url=runtime.base_url, token=runtime.tokens["uploader"])
    assert report.exit_code == 0 and report.sessions == 1, report.summary()
    instance_path = f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"

    # When dicomweb-client's retrieve_instance (multipart) asks for it, Then it gets it whole
    started = time.perf_counter()
    retrieved = _client(runtime).retrieve_instance(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uid=ds.SOPInstanceUID
    )
    elapsed = time.perf_counter() - started
    print(f"\n100 MB instance via dicomweb-client: {len(data) / 1e6:.0f} MB in {elapsed:.1f} s (body built)")
    assert retrieved.PixelData == ds.PixelData
    assert int(retrieved.NumberOfFrames) == FRAMES
    assert _redirect(runtime, instance_path).startswith(runtime.base_url + "/bundles/")

    # And plain HTTP asking for application/dicom follows a redirect to the stored object itself
    answer = requests.get(
        runtime.base_url + instance_path,
        headers={"Authorization": f"Bearer {runtime.tokens['viewer']}", "Accept": "application/dicom"},
        allow_redirects=False,
        timeout=60,
    )
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith(f"{runtime.base_url}/studies/{study}/")
    followed = requests.get(answer.headers["Location"], timeout=300)
    assert followed.status_code == 200
    assert followed.content == data

    # And its frames are still served by range, one at a time, without the bundle
    frame = requests.get(
        f"{runtime.base_url}{instance_path}/frames/7",
        headers={
            "Authorization": f"Bearer {runtime.tokens['viewer']}",
            "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*",
        },
        timeout=60,
    )
    assert frame.status_code == 200
    assert ds.PixelData[6 * 2 * 1024 * 1024 : 7 * 2 * 1024 * 1024] in frame.content


def test_a_presigned_path_expires_and_needs_its_signature(runtime: Runtime) -> None:
    # A path on the object routes without a signature, or with an expired one, is refused as S3 would
    bare = requests.get(f"{runtime.base_url}/bundles/{new_uid()}/x", timeout=30)
    assert bare.status_code == 403
    expired = requests.get(
        f"{runtime.base_url}/studies/{new_uid()}/x.dcm",
        params={"X-Amz-Date": "20200101T000000Z", "X-Amz-Expires": "300", "X-Amz-Signature": "00"},
        timeout=30,
    )
    assert expired.status_code == 403
    assert b"expired" in expired.content
