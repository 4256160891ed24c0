"""Raw curl against `make serve`: the commands the README and our error messages give people.

curl is what an engineer reaches for first, and what gateway scripts are written with.
Each test runs the real curl binary and checks what the store made of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from infra.datasets.generate import make_instance, new_uid
from tests.e2e.conftest import Runtime

pytestmark = pytest.mark.e2e

CURL = shutil.which("curl")


def _curl(*arguments: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl; the status, response headers (lower-case) and body."""
    assert CURL, "curl is part of the test toolchain (Debian package curl)"
    done = subprocess.run([CURL, "-sS", "-D", "-", *arguments], capture_output=True, check=True, timeout=120)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    while head.split(b" ", 2)[1:2] == [b"100"]:  # curl -T sends Expect: 100-continue
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _files(tmp_path: Path, count: int, study: str) -> list[Path]:
    paths = []
    for number in range(count):
        path = tmp_path / f"image{number}.dcm"
        path.write_bytes(make_instance(study=study, rows=16, columns=16))
        paths.append(path)
    return paths


def _instances(runtime: Runtime, study: str) -> int:
    found = requests.get(
        f"{runtime.base_url}/studies/{study}/instances", headers=runtime.auth("viewer"), timeout=60
    )
    assert found.status_code == 200, found.text
    return len(found.json())


def test_one_file_as_application_dicom(runtime: Runtime, tmp_path: Path) -> None:
    study = new_uid()
    (path,) = _files(tmp_path, 1, study)

    status, headers, body = _curl(
        "-X", "POST", f"{runtime.base_url}/studies",
        "-H", f"Authorization: Bearer {runtime.tokens['uploader']}",
        "-H", "Content-Type: application/dicom",
        "--data-binary", f"@{path}",
    )  # fmt: skip

    assert status == 200, body
    assert headers["content-type"].startswith("application/dicom+json")
    assert _instances(runtime, study) == 1


def test_several_files_with_dash_f_and_the_type_our_hint_gives(runtime: Runtime, tmp_path: Path) -> None:
    # Given curl -F, with the Content-Type override the 415 message tells people to add
    study = new_uid()
    paths = _files(tmp_path, 3, study)
    forms = [arg for p in paths for arg in ("-F", f"file=@{p};type=application/dicom")]

    status, _, body = _curl(
        f"{runtime.base_url}/studies",
        "-H", f"Authorization: Bearer {runtime.tokens['uploader']}",
        "-H", 'Content-Type: multipart/related; type="application/dicom"',
        *forms,
    )  # fmt: skip

    # Then every part is stored (curl kept its boundary and its form-data part headers)
    assert status == 200, body
    assert _instances(runtime, study) == 3


def test_plain_dash_f_is_refused_with_the_command_that_works(runtime: Runtime, tmp_path: Path) -> None:
    (path,) = _files(tmp_path, 1, new_uid())

    status, _, body = _curl(
        f"{runtime.base_url}/studies",
        "-H", f"Authorization: Bearer {runtime.tokens['uploader']}",
        "-F", f"file=@{path}",
    )  # fmt: skip

    assert status == 415
    assert "multipart/related" in body.decode() and "-F" in body.decode()


def test_an_upload_session_with_curl(runtime: Runtime, tmp_path: Path) -> None:
    # Given a session opened with curl for one file
    study = new_uid()
    (path,) = _files(tmp_path, 1, study)
    declared = {
        "files": [
            {
                "name": path.name,
                "size": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        ]
    }
    status, _, body = _curl(
        "-X", "POST", f"{runtime.base_url}/upload-sessions",
        "-H", f"Authorization: Bearer {runtime.tokens['uploader']}",
        "-H", "Content-Type: application/json",
        "--data", json.dumps(declared),
    )  # fmt: skip
    assert status == 201, body
    session = json.loads(body)

    # When the file goes up with curl -T (a PUT, no token) and the status is polled
    put_status, _, put_body = _curl("-T", str(path), session["files"][0]["url"])
    assert put_status == 200, put_body
    deadline = time.monotonic() + 60
    while True:
        _, _, status_body = _curl(
            session["status"], "-H", f"Authorization: Bearer {runtime.tokens['uploader']}"
        )
        document = json.loads(status_body)
        if document["counts"]["pending"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    # Then the instance is stored
    assert document["counts"]["stored"] == 1, document
    assert _instances(runtime, study) == 1
