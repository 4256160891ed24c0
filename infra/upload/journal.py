"""The upload journal: one JSON line per file sent, so an interrupted upload resumes.

Each line records a file (its path, size and mtime — or a zip member's CRC-32 —, its SOP
Instance UID), the API it was sent to, and its outcome. A rerun skips a file whose latest
line for that API says ``stored`` and whose size and fingerprint are unchanged; everything
else (failed, never sent, changed since) is sent again. Lines are appended and flushed one
by one, so a crash loses at most the line being written, and a half-written last line is
ignored on reading.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from infra.upload.files import DicomFile
from infra.upload.outcomes import Outcome

DEFAULT_NAME = ".dicomweb-upload.jsonl"


def default_path(first: Path) -> Path:
    """``<first folder>/.dicomweb-upload.jsonl``; beside the file when the first argument is a file."""
    folder = first if first.is_dir() else first.parent
    return folder / DEFAULT_NAME


def _key(path: str, size: int, fingerprint: str, url: str) -> tuple[str, int, str, str]:
    return (path, size, fingerprint, url)


class Journal:
    """Append-only record of what each file's upload did, read back on the next run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stored: set[tuple[str, int, str, str]] = set()
        self._handle: IO[str] | None = None
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                record = json.loads(line)
                key = _key(str(record["path"]), int(record["size"]), str(record["mtime"]), str(record["url"]))
                stored = record["outcome"] == "stored"
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash, or not ours
            if stored:
                self._stored.add(key)
            else:
                self._stored.discard(key)

    def is_stored(self, file: DicomFile, url: str) -> bool:
        """Did an earlier run store this very file (same size and fingerprint) at ``url``?"""
        return _key(file.name, file.size, file.fingerprint, url) in self._stored

    def record(self, file: DicomFile, url: str, outcome: Outcome) -> None:
        entry: dict[str, Any] = {
            "path": file.name,
            "size": file.size,
            "mtime": file.fingerprint,
            "sop": file.sop_instance_uid,
            "url": url,
            "outcome": "stored" if outcome.stored else "failed",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if not outcome.stored:
            entry["reason"] = outcome.reason
            entry["message"] = outcome.message
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        key = _key(file.name, file.size, file.fingerprint, url)
        with self._lock:
            if self._handle is None:
                self._handle = self._open()
            self._handle.write(line)
            self._handle.flush()
            if outcome.stored:
                self._stored.add(key)
            else:
                self._stored.discard(key)

    def _open(self) -> IO[str]:
        """The journal opened for appending, after a newline if a crash left a line unfinished
        (the next record must not be glued to it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        return open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
