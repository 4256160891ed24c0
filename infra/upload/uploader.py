"""The upload run: scan, skip what the journal says is stored, plan, send in parallel, report.

Upload sessions go first, each opened just before its files are sent (so its presigned
URLs are fresh), with their files and parts spread over the worker threads; then the
STOW-RS batches; then each session's status is polled until every file in it is stored or
failed (files are indexed asynchronously, from S3 events). Each outcome is written to the
journal as it is known. A connection that keeps failing, or a token the API refuses, stops
the run early: what is done is in the journal, and a rerun resumes.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from infra.upload.auth import AuthError, StaticToken
from infra.upload.batches import Plan, plan
from infra.upload.client import (
    ConnectionFailure,
    OpenSession,
    PayloadTooLarge,
    Refused,
    SessionFile,
    Unauthorized,
    UploadClient,
)
from infra.upload.files import READ_ERRORS, DicomFile, Skipped, scan
from infra.upload.journal import DEFAULT_NAME as JOURNAL_NAME
from infra.upload.journal import Journal
from infra.upload.outcomes import Outcome

HASH_CHUNK_BYTES = 4 * 1024 * 1024
MAX_NAME_CHARS = 255
SHOWN_SKIPPED = 50


@dataclass(frozen=True, slots=True)
class UploadOptions:
    concurrency: int = 4
    progress: bool = True
    # How long to wait for a session's files to be indexed after the last one was sent.
    index_timeout_s: float = 600.0
    poll_interval_s: float = 0.5


@dataclass(frozen=True, slots=True)
class Failure:
    name: str
    sop_instance_uid: str
    outcome: Outcome


@dataclass
class Report:
    """What a run did; :meth:`summary` for people, :attr:`exit_code` for scripts."""

    url: str
    journal: Path | None = None
    stored: int = 0
    already_stored: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    bytes_stored: int = 0
    elapsed_s: float = 0.0
    stow_requests: int = 0
    sessions: int = 0
    aborted: str | None = None

    @property
    def exit_code(self) -> int:
        """0: every file stored; 1: some failed; 2: the run stopped (connection, credentials)."""
        if self.aborted is not None:
            return 2
        return 1 if self.failures else 0

    def summary(self) -> str:
        elapsed = max(self.elapsed_s, 1e-9)
        lines = [
            f"Upload to {self.url}: {self.stored} stored, {len(self.failures)} failed, "
            f"{len(self.skipped)} skipped, {self.already_stored} already stored"
            + (f" (journal {self.journal})" if self.journal else ""),
            f"  {self.bytes_stored / 1e6:.1f} MB in {self.elapsed_s:.1f} s: "
            f"{self.bytes_stored / 1e6 / elapsed:.1f} MB/s, {self.stored / elapsed:.1f} instances/s; "
            f"{_count(self.stow_requests, 'STOW-RS request')}, {_count(self.sessions, 'upload session')}",
        ]
        if self.aborted:
            lines.append(f"Stopped early: {self.aborted}. Rerun the same command to resume.")
        if self.failures:
            lines.append("Failed:")
            lines += [f"  {f.name} ({f.sop_instance_uid}): {f.outcome.describe()}" for f in self.failures]
        if self.skipped:
            lines.append("Skipped:")
            lines += [f"  {s.name}: {s.reason}" for s in self.skipped[:SHOWN_SKIPPED]]
            if len(self.skipped) > SHOWN_SKIPPED:
                lines.append(f"  ... and {len(self.skipped) - SHOWN_SKIPPED} more")
        return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


@dataclass
class _PendingSession:
    opened: OpenSession
    files: dict[int, DicomFile]
    deadline: float = 0.0


class _Bar:
    """The progress bar (bytes), updated from the worker threads."""

    def __init__(self, total: int, *, enabled: bool, stream: IO[str]) -> None:
        self._lock = threading.Lock()
        self._bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="upload",
            disable=not enabled,
            file=stream,
            dynamic_ncols=True,
        )

    def advance(self, count: int) -> None:
        with self._lock:
            self._bar.update(count)

    def counts(self, stored: int, failed: int) -> None:
        with self._lock:
            self._bar.set_postfix(stored=stored, failed=failed, refresh=False)

    def close(self) -> None:
        with self._lock:
            self._bar.close()


class Uploader:
    """Sends files to one DICOMweb API through an :class:`UploadClient`."""

    def __init__(
        self,
        client: UploadClient,
        *,
        journal: Journal | None = None,
        options: UploadOptions | None = None,
        progress_stream: IO[str] = sys.stderr,
    ) -> None:
        self.client = client
        self.journal = journal
        self.options = options or UploadOptions()
        self.progress_stream = progress_stream
        self._sleep: Callable[[float], None] = time.sleep
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ the run
    def run(self, paths: Sequence[Path]) -> Report:
        started = time.monotonic()
        self.report = Report(self.client.base_url, journal=self.journal.path if self.journal else None)
        found = scan(paths, ignore=[self.journal.path] if self.journal else [], ignore_names={JOURNAL_NAME})
        self.report.skipped = found.skipped
        todo = []
        for file in found.files:
            if self.journal is not None and self.journal.is_stored(file, self.client.base_url):
                self.report.already_stored += 1
            else:
                todo.append(file)
        sends = plan(todo)
        self._bar = _Bar(sends.bytes, enabled=self.options.progress, stream=self.progress_stream)
        for file, reason in sends.unsendable:
            self._finish(file, Outcome.failed(reason))
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="upload")
        try:
            self._send(pool, sends)
        except (ConnectionFailure, Unauthorized, AuthError) as exc:
            self.report.aborted = str(exc)
        except KeyboardInterrupt:
            # Ctrl-C: the requests under way finish (their outcomes are not journaled, so a
            # rerun sends them again, harmlessly); the summary still says what was done.
            self.report.aborted = "interrupted"
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._bar.close()
            self.report.elapsed_s = time.monotonic() - started
        return self.report

    def _send(self, pool: ThreadPoolExecutor, sends: Plan) -> None:
        pending = []
        for group in sends.sessions:
            session = self._send_session(pool, group)
            if session is not None:
                pending.append(session)
        self._send_stow(pool, sends.stow)
        self._await_sessions(pending)

    def _finish(self, file: DicomFile, outcome: Outcome) -> None:
        if self.journal is not None:
            self.journal.record(file, self.client.base_url, outcome)
        if outcome.stored:
            self.report.stored += 1
            self.report.bytes_stored += file.size
        else:
            self.report.failures.append(Failure(file.name, file.sop_instance_uid, outcome))
        self._bar.counts(self.report.stored, len(self.report.failures))

    # ------------------------------------------------------------------ STOW-RS
    def _send_stow(self, pool: ThreadPoolExecutor, batches: list[list[DicomFile]]) -> None:
        futures = {pool.submit(self._stow_batch, batch): batch for batch in batches}
        for future in as_completed(futures):
            for file, outcome in future.result():  # ConnectionFailure and Unauthorized stop the run
                self._finish(file, outcome)
            self._bar.advance(sum(f.size for f in futures[future]))

    def _stow_batch(self, batch: list[DicomFile]) -> list[tuple[DicomFile, Outcome]]:
        """One STOW-RS request; a 413 splits the batch in two (the ceiling is a guess at the
        server's, which may be lower)."""
        outcomes: list[tuple[DicomFile, Outcome]] = []
        readable, payloads = [], []
        for file in batch:
            try:
                payloads.append(file.source.read())
                readable.append(file)
            except READ_ERRORS as exc:  # gone or changed since the scan
                outcomes.append((file, Outcome.failed(f"cannot be read: {exc}")))
        if not readable:
            return outcomes
        with self._count_lock:
            self.report.stow_requests += 1
        try:
            answer = self.client.stow(payloads)
        except PayloadTooLarge as exc:
            if len(readable) == 1:
                return [*outcomes, (readable[0], Outcome.failed(f"too large for a STOW-RS request ({exc})"))]
            middle = len(readable) // 2
            return outcomes + self._stow_batch(readable[:middle]) + self._stow_batch(readable[middle:])
        except Unauthorized:
            raise
        except Refused as exc:
            return outcomes + [(f, Outcome.failed(f"STOW-RS refused the request: {exc}")) for f in readable]
        return outcomes + [(f, answer.response.outcome_of(f.sop_instance_uid)) for f in readable]

    # ------------------------------------------------------------------ upload sessions
    def _send_session(self, pool: ThreadPoolExecutor, group: list[DicomFile]) -> _PendingSession | None:
        """Open a session for ``group``, upload every file (parts in parallel), complete the
        multipart ones; the session, to poll, or None when nothing in it is left to wait for."""
        digests = list(pool.map(_sha256, group))
        for file, digest in zip(group, digests, strict=True):
            if isinstance(digest, Exception):
                self._finish(file, Outcome.failed(f"cannot be read: {digest}"))
                self._bar.advance(file.size)
        group = [f for f, d in zip(group, digests, strict=True) if isinstance(d, str)]
        if not group:
            return None
        declared = [
            {"name": _display_name(file), "size": file.size, "sha256": digest}
            for file, digest in zip(group, (d for d in digests if isinstance(d, str)), strict=True)
        ]
        try:
            opened = self.client.open_session(declared)
        except Unauthorized:
            raise
        except Refused as exc:
            for file in group:
                self._finish(file, Outcome.failed(f"the upload session was refused: {exc}"))
            self._bar.advance(sum(f.size for f in group))
            return None
        self.report.sessions += 1
        by_index = {f.index: f for f in opened.files}
        files: dict[int, DicomFile] = {}
        uploads: dict[int, list[tuple[int, Future[str]]]] = {}
        for index, file in enumerate(group):
            described = by_index.get(index)
            if described is None or described.size != file.size:
                self._finish(file, Outcome.failed("the upload session does not list this file as declared"))
                self._bar.advance(file.size)
                continue
            files[index] = file
            uploads[index] = [
                (
                    number,
                    pool.submit(
                        self.client.put,
                        url,
                        file.source,
                        offset=offset,
                        size=size,
                        progress=self._bar.advance,
                    ),
                )
                for number, url, offset, size in _pieces(described)
            ]
        _wait_all([future for pieces in uploads.values() for _, future in pieces])
        for index, pieces in uploads.items():
            file, described = files[index], by_index[index]
            errors = [f.exception() for _, f in pieces if f.exception() is not None]
            if errors:
                files.pop(index)
                self._finish(file, Outcome.failed(f"the upload failed: {errors[0]}"))
                continue
            if described.multipart:
                assert described.complete is not None
                try:
                    self.client.complete(described.complete, {number: f.result() for number, f in pieces})
                except Unauthorized:
                    raise
                except Refused as exc:
                    files.pop(index)
                    self._finish(file, Outcome.failed(f"completing the multipart upload failed: {exc}"))
        if not files:
            return None
        return _PendingSession(opened, files, deadline=time.monotonic() + self.options.index_timeout_s)

    def _await_sessions(self, sessions: list[_PendingSession]) -> None:
        """Poll each session's status until each of its files is stored or failed."""
        waiting = [s for s in sessions if s.files]
        while waiting:
            for session in list(waiting):
                self._poll(session)
                if not session.files:
                    waiting.remove(session)
            if waiting:
                self._sleep(self.options.poll_interval_s)

    def _poll(self, session: _PendingSession) -> None:
        try:
            status = self.client.session_status(session.opened.status_url)
        except Unauthorized:
            raise
        except Refused as exc:
            gone = exc.status in (404, 410)
            if gone or time.monotonic() > session.deadline:
                self._fail_rest(session, f"the session's status cannot be read: {exc}")
            return
        for item in status.get("files") or []:
            file = session.files.get(int(item.get("index", -1)))
            state = item.get("state")
            if file is None or state not in ("stored", "failed"):
                continue
            del session.files[int(item["index"])]
            if state == "stored":
                self._finish(file, Outcome.ok())
            else:
                reason = item.get("failureReason")
                self._finish(
                    file,
                    Outcome.failed(
                        str(item.get("message") or ""), int(reason) if reason is not None else None
                    ),
                )
        if session.files and status.get("state") == "expired":
            self._fail_rest(session, "the upload session expired before this file was stored")
        elif session.files and time.monotonic() > session.deadline:
            self._fail_rest(
                session,
                f"not indexed within {self.options.index_timeout_s:.0f} s of its upload "
                f"(session {session.opened.session_id}); it may still be stored: rerun to check",
            )

    def _fail_rest(self, session: _PendingSession, message: str) -> None:
        for file in session.files.values():
            self._finish(file, Outcome.failed(message))
        session.files.clear()


def _wait_all(futures: Sequence[Future[str]]) -> None:
    """Wait for every future; raise at the first connection or credential failure."""
    not_done = set(futures)
    while not_done:
        done, not_done = wait(not_done, return_when=FIRST_EXCEPTION)
        for future in done:
            error = future.exception()
            if isinstance(error, ConnectionFailure | Unauthorized):
                raise error


def _pieces(described: SessionFile) -> list[tuple[int, str, int, int]]:
    """(part number, URL, offset, size) of each PUT a file takes: one, or one per part."""
    if not described.multipart:
        assert described.url is not None
        return [(1, described.url, 0, described.size)]
    pieces = []
    for part in described.parts:
        offset = (part.number - 1) * described.part_size
        pieces.append((part.number, part.url, offset, min(described.part_size, described.size - offset)))
    return pieces


def _sha256(file: DicomFile) -> str | Exception:
    """The file's SHA-256 (declared when the session opens, checked by the store), or why
    it cannot be read."""
    digest = hashlib.sha256()
    try:
        with file.source.open() as stream:
            while chunk := stream.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    except READ_ERRORS as exc:
        return exc
    return digest.hexdigest()


def _display_name(file: DicomFile) -> str:
    name = Path(file.source.member or file.source.path.name).name or "instance.dcm"
    return name[-MAX_NAME_CHARS:]


def upload_folder(
    folder: Path, *, base_url: str, token: str, concurrency: int = 4, progress: bool = False
) -> Report:
    """Store every DICOM file under ``folder`` (``make serve LOAD=DIR``): the uploader's own
    path, STOW-RS batches and upload sessions, without a journal (the store answers an
    identical instance sent again as stored)."""
    client = UploadClient(base_url, StaticToken(token), concurrency=concurrency)
    try:
        uploader = Uploader(client, options=UploadOptions(concurrency=concurrency, progress=progress))
        return uploader.run([folder])
    finally:
        client.close()
