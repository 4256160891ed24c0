"""A hospital PACS for the end-to-end tests: Orthanc from Debian, with its DICOMweb plugin.

Orthanc (package ``orthanc``) and the DICOMweb plugin (``orthanc-dicomweb``) are installed by
the ``ensure_packages`` fixture and started on loopback by :mod:`infra.orthanc` (which
``make bench`` shares) with a configuration written into a temporary directory, configured
as a hospital would configure it to push to our store:
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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import orthanc as _orthanc
from infra.orthanc import LOG_NAME, PACKAGES, PLUGIN_PATH, REQUEST_TIMEOUT_S, Orthanc, OrthancError
from tests.e2e.conftest import Runtime, free_port

__all__ = [
    "FORWARD_EACH_INSTANCE",
    "LOG_NAME",
    "PACKAGES",
    "PLUGIN_PATH",
    "READ_SERVER",
    "REQUEST_TIMEOUT_S",
    "WRITE_SERVER",
    "Orthanc",
    "configuration",
    "orthanc_fixture",
    "start_orthanc",
]

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

    config = _orthanc.configuration(
        directory,
        http_port=http_port,
        dicom_port=dicom_port,
        name="E2E-PACS",
        lua_scripts=[directory / "forward.lua"],
        dicomweb_servers={WRITE_SERVER: server(write_token), READ_SERVER: server(read_token)},
    )
    config.update({"ConcurrentJobs": 4, "SaveJobs": False, "JobsHistorySize": 1000})  # forwards in flight
    return config


def start_orthanc(directory: Path, config: dict[str, Any], *, lua: str = FORWARD_EACH_INSTANCE) -> Orthanc:
    """Write the configuration and the Lua hook, start Orthanc, wait until ``/system`` answers."""
    try:
        return _orthanc.start_orthanc(directory, config, files={"forward.lua": lua})
    except OrthancError as error:
        pytest.fail(str(error))


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
