"""Orthanc from Debian, with its DICOMweb plugin, run on loopback: for the e2e tests and the bench.

Orthanc (package ``orthanc``, 1.10 on Debian 12) and the DICOMweb plugin (``orthanc-dicomweb``)
are installed with :func:`infra.debian.ensure_packages`. :func:`configuration` writes what
differs from Orthanc's built-in defaults: a storage directory of its own, loopback-only HTTP on
a free port, no authentication, the DICOM (DIMSE) server off, the plugin loaded. Everything
else (SQLite index, 50 HTTP threads, keep-alive with TCP_NODELAY, ``StorageAccessOnFind``) is
as the package ships it. :func:`start_orthanc` starts it in a process group of its own and
waits until its REST API answers; :meth:`Orthanc.stop` ends it.

Failures raise :class:`OrthancError` with the end of Orthanc's log; the tests turn that into a
test failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

PACKAGES = ("orthanc", "orthanc-dicomweb")
PLUGIN_PATH = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 300
LOG_NAME = "orthanc.log"


class OrthancError(RuntimeError):
    """Orthanc did not start, or exited, or did not answer."""

    def __init__(self, message: str = "Orthanc did not start") -> None:
        super().__init__(message)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configuration(
    directory: Path,
    *,
    http_port: int,
    dicom_port: int,
    name: str = "LOCAL-ORTHANC",
    lua_scripts: Sequence[Path] = (),
    dicomweb_servers: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Orthanc's configuration: loopback only, storage in ``directory``, the DICOMweb plugin on.

    ``dicomweb_servers``: the plugin's ``DicomWeb.Servers`` (remote DICOMweb servers its
    client may push to and pull from)."""
    return {
        "Name": name,
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "StorageCompression": False,  # files as received
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # answer loopback clients only
        "AuthenticationEnabled": False,
        # Orthanc 1.10 cannot bind its DICOM server to loopback: leave it off (nothing here
        # speaks DIMSE), on a free port should it be turned on.
        "DicomServerEnabled": False,
        "DicomPort": dicom_port,
        "LuaScripts": [str(path) for path in lua_scripts],
        "Plugins": [str(PLUGIN_PATH)],
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "Servers": {key: dict(value) for key, value in (dicomweb_servers or {}).items()},
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
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), without a trailing slash."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

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


def start_orthanc(
    directory: Path,
    config: Mapping[str, Any],
    *,
    files: Mapping[str, str] | None = None,
    verbose: bool = True,
) -> Orthanc:
    """Write the configuration (and ``files``: name -> text, e.g. Lua scripts) into
    ``directory``, start Orthanc, and wait until ``/system`` answers.

    ``verbose``: Orthanc's ``--verbose`` log (every request); off, warnings and errors only."""
    executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (directory / name).write_text(text, encoding="utf-8")
    config_file = directory / "orthanc.json"
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log = open(directory / LOG_NAME, "ab")  # noqa: SIM115 (closed by Orthanc.stop)
    process = subprocess.Popen(  # noqa: S603 (the Orthanc executable, no shell)
        [executable, *(["--verbose"] if verbose else []), str(config_file)],
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
            raise OrthancError(f"Orthanc exited with {process.returncode} at start.\n{orthanc.log_tail()}")
        try:
            if orthanc.get("/system").status_code == 200:
                return orthanc
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            orthanc.stop()
            raise OrthancError(
                f"Orthanc did not answer /system within {START_TIMEOUT_S:.0f} s.\n{orthanc.log_tail()}"
            )
        time.sleep(0.2)


def launch(directory: Path, *, name: str = "LOCAL-ORTHANC", verbose: bool = True) -> Orthanc:
    """Orthanc on free loopback ports with its own storage in ``directory``, started and ready.

    The packages must be installed (:func:`infra.debian.ensure_packages` with :data:`PACKAGES`).
    ``verbose=False`` keeps the log to warnings and errors, as a benchmark wants."""
    config = configuration(directory, http_port=free_port(), dicom_port=free_port(), name=name)
    return start_orthanc(directory, config, verbose=verbose)
