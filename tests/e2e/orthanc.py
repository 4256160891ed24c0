"""A hospital PACS for the end-to-end tests: Orthanc from Debian, with its DICOMweb plugin.

Orthanc (package ``orthanc``) and the DICOMweb plugin (``orthanc-dicomweb``) are installed by
:func:`tests.e2e.debian.ensure_packages` and started on loopback with a configuration written
into a temporary directory, configured as a hospital would configure it to push to our store:
one DICOMweb server entry per token (the uploader's write scope for STOW-RS, the viewer's
read scope for QIDO-RS and WADO-RS), and a Lua hook that forwards each instance alone as it
arrives (:data:`FORWARD_EACH_INSTANCE`).

Why a hook: the plugin's STOW-RS client (``POST /dicom-web/servers/{name}/stow``) sends every
instance of the resources it is given in one multipart request (one ``StowClientJob``, one
HTTP request whose body streams the instances one after the other). No configuration option
splits it (1.7 and later: ``ChunkedTransfers`` only chooses between a chunked and a buffered
body), so a study over the API's request ceiling (about 4.4 MB of DICOM) is refused with 413
however the server entry is configured. One instance per request stays under the ceiling for
every instance that fits in any STOW-RS request at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Runtime, free_port

PACKAGES = ("orthanc", "orthanc-dicomweb")
PLUGIN_PATH = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 300
LOG_NAME = "orthanc.log"

WRITE_SERVER = "ours"  # the uploader's token: STOW-RS only
READ_SERVER = "ours-read"  # the viewer's token: QIDO-RS and WADO-RS

# OnStoredInstance runs on Orthanc's Lua event thread once the instance is stored. Each
# instance that came from a modality (DICOM C-STORE) or an upload (REST API) is handed to the
# plugin's STOW-RS client alone, as an asynchronous job: the jobs engine sends up to
# "ConcurrentJobs" of them at once, and Orthanc goes on receiving meanwhile (a synchronous
# call would hold the Lua lock, which every incoming instance waits for). Instances that the
# DICOMweb client itself stores (a retrieve from our store: origin "Plugins") are not sent
# back. A failed forward stays in /jobs as a failed DicomWebStowClient job (resubmit it with
# POST /jobs/{id}/resubmit) and is written to Orthanc's log.
FORWARD_EACH_INSTANCE = f"""
function OnStoredInstance(instanceId, tags, metadata, origin)
  local from = origin['RequestOrigin']
  if from ~= 'DicomProtocol' and from ~= 'RestApi' then
    return
  end
  local request = {{}}
  request['Resources'] = {{ instanceId }}
  request['Synchronous'] = false
  if RestApiPost('/dicom-web/servers/{WRITE_SERVER}/stow', DumpJson(request, true), false) == nil then
    print('forward to {WRITE_SERVER} not submitted: instance ' .. instanceId)
  end
end

function OnJobFailure(jobId)
  print('job failed: ' .. (RestApiGet('/jobs/' .. jobId) or jobId))
end
"""


def configuration(
    directory: Path, *, http_port: int, dicom_port: int, base_url: str, write_token: str, read_token: str
) -> dict[str, Any]:
    """Orthanc's configuration: loopback only, storage in ``directory``, our store as two servers."""

    def server(token: str) -> dict[str, Any]:
        return {
            "Url": base_url.rstrip("/") + "/",
            "HttpHeaders": {"Authorization": f"Bearer {token}"},
            "HasDelete": False,
            "Timeout": 60,
        }

    return {
        "Name": "E2E-PACS",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "StorageCompression": False,  # files as received: the byte-for-byte comparison needs it
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # answer loopback clients only
        "AuthenticationEnabled": False,
        # Orthanc 1.10 cannot bind its DICOM server to loopback: leave it off (nothing here
        # speaks DIMSE), on a free port should it be turned on.
        "DicomServerEnabled": False,
        "DicomPort": dicom_port,
        "ConcurrentJobs": 4,  # forwards in flight at once
        "SaveJobs": False,
        "JobsHistorySize": 1000,
        "LuaScripts": [str(directory / "forward.lua")],
        "Plugins": [str(PLUGIN_PATH)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {WRITE_SERVER: server(write_token), READ_SERVER: server(read_token)},
        },
    }


@dataclass
class Orthanc:
    """A running Orthanc and a small client of its REST API."""

    process: subprocess.Popen[bytes]
    directory: Path
    http_port: int
    _log_handle: Any = field(repr=False)
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_file(self) -> Path:
        return self.directory / LOG_NAME

    def log_tail(self, lines: int = 60) -> str:
        """The end of Orthanc's log, and where the whole of it is, for failure messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no Orthanc log at {self.log_file})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"Orthanc log ({self.log_file}), last {lines} lines:\n{tail}"

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=REQUEST_TIMEOUT_S)

    def post(self, path: str, body: bytes | dict[str, Any]) -> requests.Response:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return self.session.post(self.url + path, data=data, timeout=REQUEST_TIMEOUT_S)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.url + path, timeout=REQUEST_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM (Orthanc closes its database), then wait; SIGKILL our own group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # our own process group only
                self.process.wait(timeout=10)
        self.session.close()
        self._log_handle.close()


def start_orthanc(directory: Path, config: dict[str, Any], *, lua: str = FORWARD_EACH_INSTANCE) -> Orthanc:
    """Write the configuration and the Lua hook, start Orthanc, wait until ``/system`` answers."""
    executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "forward.lua").write_text(lua, encoding="utf-8")
    config_file = directory / "orthanc.json"
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log = open(directory / LOG_NAME, "ab")  # noqa: SIM115 (closed by Orthanc.stop)
    process = subprocess.Popen(
        [executable, "--verbose", str(config_file)],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: cleanup never touches anything else
    )
    orthanc = Orthanc(process, directory, int(config["HttpPort"]), log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            orthanc.stop()
            pytest.fail(f"Orthanc exited with {process.returncode} at start.\n{orthanc.log_tail()}")
        try:
            if orthanc.get("/system").status_code == 200:
                return orthanc
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            orthanc.stop()
            pytest.fail(
                f"Orthanc did not answer /system within {START_TIMEOUT_S:.0f} s.\n{orthanc.log_tail()}"
            )
        time.sleep(0.2)


@pytest.fixture(scope="module", name="orthanc")
def orthanc_fixture(
    ensure_packages: Any, runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orthanc]:
    """Orthanc on loopback, its DICOMweb client pointed at the session's runtime."""
    ensure_packages(*PACKAGES)
    directory = tmp_path_factory.mktemp("orthanc")
    config = configuration(
        directory,
        http_port=free_port(),
        dicom_port=free_port(),
        base_url=runtime.base_url,
        write_token=runtime.tokens["uploader"],
        read_token=runtime.tokens["viewer"],
    )
    started = start_orthanc(directory, config)
    try:
        yield started
    finally:
        started.stop()
