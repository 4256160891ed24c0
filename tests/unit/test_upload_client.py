"""The folder uploader against a small in-process server that keeps the HTTP contract of
STOW-RS (PS3.18 §10.5) and of upload sessions (docs/upload-sessions.md): retries, resume,
failure reasons, multipart uploads reassembled byte for byte, exit codes, credentials."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pydicom
import pytest

from dicomweb_core.web.mediatype import parse_media_type
from dicomweb_core.web.multipart import boundary_of, split_parts
from infra.datasets.generate import make_dataset, new_uid, to_part10
from infra.upload import uploader as uploader_module
from infra.upload.__main__ import main
from infra.upload.auth import AuthError, ClientCredentials, StaticToken, resolve_target
from infra.upload.client import RetryPolicy, UploadClient
from infra.upload.journal import Journal
from infra.upload.uploader import Uploader, UploadOptions

TOKEN = "test-token"
SINGLE_PUT_LIMIT = 6 * 1024 * 1024  # the fake's: files above it are uploaded in parts
PART_SIZE = 2 * 1024 * 1024


@dataclass
class FakeStore:
    """What the fake server saw and holds, and how it misbehaves."""

    base_url: str = ""
    stored: dict[str, bytes] = field(default_factory=dict)
    stow_requests: int = 0
    stow_instances: list[str] = field(default_factory=list)
    unavailable: int = 0  # answer this many next requests with 503
    refuse: set[str] = field(default_factory=set)  # SOP Instance UIDs answered 0xC000
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    token_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _item(uid: str, **extra: Any) -> dict[str, Any]:
    return {"00081155": {"vr": "UI", "Value": [uid]}, **extra}


class Handler(BaseHTTPRequestHandler):
    store: FakeStore

    def log_message(self, *args: Any) -> None:
        return None

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self, status: int, document: Any = None, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode() if document is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization", "").removeprefix("Bearer ") in self.store.tokens:
            return True
        self._answer(401, {"message": "Unauthorized"})
        return False

    def _unavailable(self) -> bool:
        with self.store.lock:
            if self.store.unavailable > 0:
                self.store.unavailable -= 1
                self._answer(503, {"message": "Service Unavailable"}, {"Retry-After": "0"})
                return True
        return False

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/token":
            self._token(body)
        elif self._unavailable() or not self._authorised():
            return
        elif self.path == "/studies":
            self._stow(body)
        elif self.path == "/upload-sessions":
            self._open(json.loads(body))
        elif self.path.endswith("/complete"):
            _, _, session, _, index, _ = self.path.split("/")
            self._complete(session, int(index), json.loads(body))
        else:
            self._answer(404, {"message": "no route"})

    def do_GET(self) -> None:
        if not self._authorised():
            return
        session = self.store.sessions.get(self.path.rsplit("/", 1)[-1])
        if session is None:
            self._answer(404, {"message": "no such session"})
            return
        files = []
        for index, declared in enumerate(session["files"]):
            data = self.store.objects.get(f"{session['id']}/{index}")
            if data is None:
                files.append({"index": index, "name": declared["name"], "state": "pending"})
            elif hashlib.sha256(data).hexdigest() != declared["sha256"] or len(data) != declared["size"]:
                message = "the upload does not match its declared size or sha256"
                files.append({"index": index, "state": "failed", "failureReason": 0xA900, "message": message})
            else:
                self.store.stored[pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID] = data
                files.append({"index": index, "state": "stored"})
        pending = sum(1 for f in files if f["state"] == "pending")
        self._answer(
            200, {"sessionId": session["id"], "state": "open", "counts": {"pending": pending}, "files": files}
        )

    def do_PUT(self) -> None:
        data = self._body()
        if self._unavailable():
            return
        key = self.path.removeprefix("/put/").split("?")[0]
        self.store.objects[key] = data
        self._answer(200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _token(self, body: bytes) -> None:
        form = parse_qs(body.decode())
        expected = "Basic " + base64.b64encode(b"machine:secret").decode()
        if self.headers.get("Authorization") != expected or form.get("grant_type") != ["client_credentials"]:
            self._answer(400, {"error": "invalid_client"})
            return
        assert form["scope"] == ["dicomweb/write"]
        self.store.token_requests += 1
        token = f"issued-{self.store.token_requests}"
        self.store.tokens.add(token)
        self._answer(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _stow(self, body: bytes) -> None:
        media = parse_media_type(self.headers["Content-Type"])
        parts = split_parts(body, boundary_of(media, body=body))
        referenced, failed = [], []
        with self.store.lock:
            self.store.stow_requests += 1
            for part in parts:
                uid = pydicom.dcmread(io.BytesIO(bytes(part.body))).SOPInstanceUID
                self.store.stow_instances.append(uid)
                if uid in self.store.refuse:
                    comment = {"vr": "LO", "Value": ["cannot read the data set"]}
                    failed.append(
                        _item(uid, **{"00081197": {"vr": "US", "Value": [0xC000]}, "00000902": comment})
                    )
                else:
                    self.store.stored[uid] = bytes(part.body)
                    referenced.append(_item(uid))
        document: dict[str, Any] = {}
        if referenced:
            document["00081199"] = {"vr": "SQ", "Value": referenced}
        if failed:
            document["00081198"] = {"vr": "SQ", "Value": failed}
        self._answer(200 if not failed else 202 if referenced else 409, document)

    def _open(self, document: dict[str, Any]) -> None:
        session_id = new_uid()
        self.store.sessions[session_id] = {"id": session_id, "files": document["files"]}
        base = self.store.base_url
        described = []
        for index, declared in enumerate(document["files"]):
            item: dict[str, Any] = {"index": index, "name": declared["name"], "size": declared["size"]}
            if declared["size"] <= SINGLE_PUT_LIMIT:
                item.update(method="PUT", url=f"{base}/put/{session_id}/{index}?X-Amz-Signature=x")
            else:
                count = -(-declared["size"] // PART_SIZE)
                item["partSize"] = PART_SIZE
                item["parts"] = [
                    {"partNumber": n, "url": f"{base}/put/{session_id}/{index}/{n}?X-Amz-Signature=x"}
                    for n in range(1, count + 1)
                ]
                item["complete"] = f"{base}/upload-sessions/{session_id}/files/{index}/complete"
            described.append(item)
        status = f"{base}/upload-sessions/{session_id}"
        self._answer(
            201, {"sessionId": session_id, "status": status, "files": described}, {"Location": status}
        )

    def _complete(self, session: str, index: int, document: dict[str, Any]) -> None:
        chunks = []
        for part in document["parts"]:
            data = self.store.objects[f"{session}/{index}/{part['partNumber']}"]
            assert part["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
            chunks.append(data)
        self.store.objects[f"{session}/{index}"] = b"".join(chunks)
        self._answer(202, {"index": index, "state": "pending"})


@pytest.fixture
def server() -> Iterator[FakeStore]:
    store = FakeStore()
    handler = type("BoundHandler", (Handler,), {"store": store})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    store.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield store
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(url: str, token: str = TOKEN) -> UploadClient:
    return UploadClient(url, StaticToken(token), retry=RetryPolicy(attempts=4, base_delay_s=0.01))


def _run(store: FakeStore, folder: Path, journal: Journal | None = None, token: str = TOKEN) -> Any:
    client = _client(store.base_url, token)
    options = UploadOptions(concurrency=3, progress=False, poll_interval_s=0.01, index_timeout_s=10)
    try:
        return Uploader(client, journal=journal, options=options).run([folder])
    finally:
        client.close()


def _write_series(folder: Path, count: int, *, rows: int = 64) -> list[pydicom.Dataset]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = new_uid(), new_uid()
    datasets = []
    for number in range(count):
        ds = make_dataset(study=study, series=series, rows=rows, columns=rows, InstanceNumber=number + 1)
        (folder / f"{number:04d}.dcm").write_bytes(to_part10(ds))
        datasets.append(ds)
    return datasets


def test_small_and_large_files_are_stored_byte_for_byte(server: FakeStore, tmp_path: Path) -> None:
    # Given a folder with 60 small instances, a zip of two more, and a 9 MiB multi-frame instance
    small = _write_series(tmp_path / "in", 60)
    zipped = [make_dataset(), make_dataset()]
    with zipfile.ZipFile(tmp_path / "in" / "more.zip", "w") as archive:
        for n, ds in enumerate(zipped):
            archive.writestr(f"z{n}.dcm", to_part10(ds))
    big = make_dataset(rows=512, columns=512)
    big.NumberOfFrames = 18
    big.PixelData = bytes(range(256)) * (512 * 512 * 2 * 18 // 256)
    big_bytes = to_part10(big)
    (tmp_path / "in" / "big.dcm").write_bytes(big_bytes)

    # When the folder is uploaded
    report = _run(server, tmp_path / "in")

    # Then every instance is stored, the large one through a multipart session, byte for byte
    assert report.exit_code == 0, report.summary()
    assert report.stored == 63
    assert server.stored[big.SOPInstanceUID] == big_bytes
    assert set(server.stored) == {ds.SOPInstanceUID for ds in [*small, *zipped, big]}
    assert report.sessions == 1
    # And the small ones went as STOW-RS batches (each under 50 instances), not one by one
    assert server.stow_requests == 2
    assert "63 stored, 0 failed, 0 skipped" in report.summary()


def test_requests_are_retried_on_503_and_the_same_instances_are_sent_again(
    server: FakeStore, tmp_path: Path
) -> None:
    # Given a server that answers the first two requests with 503
    datasets = _write_series(tmp_path / "in", 5)
    server.unavailable = 2
    # When the folder is uploaded
    report = _run(server, tmp_path / "in")
    # Then the request was retried until it was stored, with nothing lost
    assert report.exit_code == 0, report.summary()
    assert set(server.stored) == {ds.SOPInstanceUID for ds in datasets}
    assert server.stow_requests == 1  # the 503s never reached the store


def test_an_interrupted_upload_resumes_from_its_journal(server: FakeStore, tmp_path: Path) -> None:
    # Given a folder uploaded once, with its journal
    first = _write_series(tmp_path / "in", 4)
    with Journal(tmp_path / "journal.jsonl") as journal:
        assert _run(server, tmp_path / "in", journal).exit_code == 0
    # When files are added and the upload is run again
    second = _write_series(tmp_path / "in" / "later", 3)
    with Journal(tmp_path / "journal.jsonl") as journal:
        report = _run(server, tmp_path / "in", journal)
    # Then only the new files are sent
    assert report.exit_code == 0
    assert (report.stored, report.already_stored) == (3, 4)
    assert server.stow_instances == [ds.SOPInstanceUID for ds in first + second]


def test_each_failure_is_listed_with_its_reason_and_the_exit_code_is_1(
    server: FakeStore, tmp_path: Path
) -> None:
    # Given a folder where the store refuses one instance, and a file that is not DICOM
    datasets = _write_series(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.txt").write_text("hello")
    server.refuse.add(datasets[1].SOPInstanceUID)
    # When it is uploaded
    report = _run(server, tmp_path / "in")
    # Then the run says exactly what failed and why, and what was skipped
    assert report.exit_code == 1
    summary = report.summary()
    assert f"{datasets[1].SOPInstanceUID}): 0xC000 (cannot understand): cannot read the data set" in summary
    assert "notes.txt: not a DICOM Part 10 file" in summary
    assert "2 stored, 1 failed, 1 skipped" in summary


def test_an_unreachable_server_stops_the_run_with_exit_code_2(tmp_path: Path) -> None:
    _write_series(tmp_path / "in", 2)
    client = UploadClient("http://127.0.0.1:9", StaticToken(TOKEN), retry=RetryPolicy(2, 0.0))
    report = Uploader(client, options=UploadOptions(progress=False)).run([tmp_path / "in"])
    assert report.exit_code == 2
    assert "Stopped early" in report.summary()


def test_a_refused_token_stops_the_run_with_exit_code_2(server: FakeStore, tmp_path: Path) -> None:
    _write_series(tmp_path / "in", 2)
    report = _run(server, tmp_path / "in", token="wrong")
    assert report.exit_code == 2
    assert report.aborted is not None and "HTTP 401" in report.aborted


def test_client_credentials_get_a_token_and_renew_it_when_refused(server: FakeStore, tmp_path: Path) -> None:
    # Given a machine client's credentials and a token endpoint
    datasets = _write_series(tmp_path / "in", 2)
    auth = ClientCredentials(f"{server.base_url}/token", "machine", "secret", "dicomweb/write")
    client = UploadClient(server.base_url, auth)
    uploader = Uploader(client, options=UploadOptions(progress=False))
    # When the upload runs, and again after the API stopped accepting the first token
    assert uploader.run([tmp_path / "in"]).exit_code == 0
    server.tokens = {TOKEN}
    assert uploader.run([tmp_path / "in"]).exit_code == 0
    # Then a token was obtained once, then renewed once after the 401
    assert server.token_requests == 2
    assert set(server.stored) == {ds.SOPInstanceUID for ds in datasets}


def test_the_command_line_uses_the_local_stack_tokens_and_writes_the_journal(
    server: FakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the tokens file `make serve` writes, naming the server
    local = tmp_path / "local"
    local.mkdir()
    document = {"base_url": server.base_url, "tokens": {"uploader": TOKEN, "viewer": "v"}}
    (local / "tokens.json").write_text(json.dumps(document))
    monkeypatch.setenv("LOCAL_DIR", str(local))
    for name in ("DICOMWEB_URL", "DICOMWEB_TOKEN", "DICOMWEB_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    _write_series(tmp_path / "in", 3)
    # When `python -m infra.upload DIR --no-progress` runs
    code = main([str(tmp_path / "in"), "--no-progress"])
    # Then it exits 0 with a summary, and the journal is in the folder
    assert code == 0
    assert "3 stored, 0 failed" in capsys.readouterr().out
    lines = (tmp_path / "in" / ".dicomweb-upload.jsonl").read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in lines] == ["stored"] * 3
    # And a missing folder is a usage error
    with pytest.raises(SystemExit) as raised:
        main([str(tmp_path / "missing")])
    assert raised.value.code == 2


def test_the_local_token_is_never_sent_to_another_url(tmp_path: Path) -> None:
    # Given the local stack's tokens file
    (tmp_path / "tokens.json").write_text(
        json.dumps({"base_url": "http://127.0.0.1:8080", "tokens": {"uploader": "t"}})
    )
    environ = {"LOCAL_DIR": str(tmp_path)}
    # When no credentials are given, the local stack is the target, with its uploader token
    target = resolve_target(
        url=None, token=None, client_id=None, client_secret=None, token_url=None, scope="s", environ=environ
    )
    assert (target.base_url, target.auth.token()) == ("http://127.0.0.1:8080", "t")
    # But a deployed URL without credentials is refused rather than sent the local token
    with pytest.raises(AuthError, match=r"no credentials for https://dicom\.example"):
        resolve_target(
            url="https://dicom.example",
            token=None,
            client_id=None,
            client_secret=None,
            token_url=None,
            scope="s",
            environ=environ,
        )
    # And client credentials need all their parts
    with pytest.raises(AuthError, match="--client-secret, --token-url"):
        resolve_target(
            url="https://dicom.example",
            token=None,
            client_id="id",
            client_secret=None,
            token_url=None,
            scope="s",
            environ=environ,
        )


def test_a_file_gone_since_the_scan_fails_alone(
    server: FakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a folder of small files and two large ones, two of which vanish after the scan
    datasets = _write_series(tmp_path / "in", 3)
    for name in ("big-1.dcm", "big-2.dcm"):
        big = make_dataset(rows=512, columns=512)
        big.NumberOfFrames = 9
        big.PixelData = bytes(512 * 512 * 2 * 9)
        (tmp_path / "in" / name).write_bytes(to_part10(big))
    real_scan = uploader_module.scan

    def scan_then_delete(*args: Any, **kwargs: Any) -> Any:
        found = real_scan(*args, **kwargs)
        (tmp_path / "in" / "0001.dcm").unlink()
        (tmp_path / "in" / "big-1.dcm").unlink()
        return found

    monkeypatch.setattr(uploader_module, "scan", scan_then_delete)
    # When the folder is uploaded
    report = _run(server, tmp_path / "in")
    # Then the vanished files fail with the reason, and every other file is stored
    assert report.exit_code == 1
    assert sorted(Path(f.name).name for f in report.failures) == ["0001.dcm", "big-1.dcm"]
    assert all("cannot be read" in f.outcome.message for f in report.failures)
    assert report.stored == 3
    assert datasets[0].SOPInstanceUID in server.stored
