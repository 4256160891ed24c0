"""Upload sessions through `make serve`: presigned PUTs and parts on the API's own host,
the bucket's event through the ingest queue, the status in the Store Instances Response form.

Plain HTTP (requests) plays the client, as any language's HTTP library would: nothing
here knows about S3 beyond the links the session hands out.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import pytest
import requests
from pydicom.uid import MRImageStorage

from infra.datasets.generate import make_dataset, make_instance, new_uid, to_part10
from tests.e2e.conftest import Runtime

pytestmark = pytest.mark.e2e

WAIT_S = 120


def _open(runtime: Runtime, files: list[bytes]) -> dict[str, Any]:
    declared = [
        {"name": f"f{i}.dcm", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for i, data in enumerate(files)
    ]
    answer = requests.post(
        f"{runtime.base_url}/upload-sessions",
        json={"files": declared},
        headers=runtime.auth("uploader"),
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"] == answer.json()["status"]
    return dict(answer.json())


def _wait_done(runtime: Runtime, status_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = requests.get(status_url, headers=runtime.auth("uploader"), timeout=60)
        assert answer.status_code == 200, answer.text
        document = dict(answer.json())
        if document["counts"]["pending"] == 0:
            return document
        assert answer.headers["Retry-After"]
        assert time.monotonic() < deadline, f"still pending after {WAIT_S} s\n{runtime.log_tail()}"
        time.sleep(0.5)


def test_small_files_go_in_by_presigned_put_and_are_searchable(runtime: Runtime) -> None:
    # Given a session for two instances of one new study
    study = new_uid()
    files = [make_instance(study=study, rows=32, columns=32) for _ in range(2)]
    session = _open(runtime, files)

    # When each is PUT to its link, with no token (the signature is the authorization)
    for link, data in zip(session["files"], files, strict=True):
        assert link["url"].startswith(runtime.base_url + "/ingest/")
        put = requests.put(link["url"], data=data, timeout=60)
        assert put.status_code == 200, put.text

    # Then the status reports both stored, and QIDO finds them
    document = _wait_done(runtime, session["status"])
    assert document["counts"] == {"declared": 2, "pending": 0, "stored": 2, "failed": 0}
    found = requests.get(
        f"{runtime.base_url}/studies/{study}/instances", headers=runtime.auth("viewer"), timeout=60
    )
    assert found.status_code == 200 and len(found.json()) == 2


def test_a_large_instance_goes_in_by_parts(runtime: Runtime) -> None:
    # Given a 70 MB multi-frame instance (over the single-PUT size, far over STOW's ceiling)
    ds = make_dataset(modality="MR", sop_class=MRImageStorage, rows=512, columns=512)
    ds.NumberOfFrames = 140
    ds.PixelData = os.urandom(512 * 512 * 2 * 140)
    data = to_part10(ds)
    session = _open(runtime, [data])
    file = session["files"][0]

    # When each part is PUT and the upload completed with the parts' ETags
    size = file["partSize"]
    etags = []
    for part in file["parts"]:
        offset = (part["partNumber"] - 1) * size
        put = requests.put(part["url"], data=data[offset : offset + size], timeout=120)
        assert put.status_code == 200, put.text
        etags.append({"partNumber": part["partNumber"], "etag": put.headers["ETag"]})
    done = requests.post(
        file["complete"], json={"parts": etags}, headers=runtime.auth("uploader"), timeout=120
    )
    assert done.status_code == 202, done.text

    # Then the instance is stored, byte for byte
    document = _wait_done(runtime, session["status"])
    assert document["files"][0]["state"] == "stored", document
    assert runtime.instance_bytes(str(ds.SOPInstanceUID)) == data


def test_links_are_signed_for_their_own_object_and_method(runtime: Runtime) -> None:
    # Given a session's link for one file
    data = make_instance()
    session = _open(runtime, [data])
    url = session["files"][0]["url"]

    # When it is used for another key, or tampered with, or for an object path that is read-only
    other_key = url.replace("/0000?", "/0001?")
    tampered = url.replace("X-Amz-Expires=", "X-Amz-Expires=1")
    read_only = runtime.base_url + "/studies/x/series/y/instances/z/w.dcm?" + url.split("?", 1)[1]

    # Then S3's refusals come back and nothing is ingested
    assert requests.put(other_key, data=data, timeout=60).status_code == 403
    assert requests.put(tampered, data=data, timeout=60).status_code in {400, 403}
    assert requests.put(read_only, data=data, timeout=60).status_code in {403, 404, 405}
    status = requests.get(session["status"], headers=runtime.auth("uploader"), timeout=60).json()
    assert status["counts"]["pending"] == 1


def test_sessions_need_the_write_scope(runtime: Runtime) -> None:
    answer = requests.post(
        f"{runtime.base_url}/upload-sessions",
        json={"files": [{"name": "a", "size": 10}]},
        headers=runtime.auth("viewer"),
        timeout=60,
    )
    assert answer.status_code == 403
