"""What a client declares when it opens an upload session, and the keys its files get.

The body of ``POST /upload-sessions`` is read strictly: it decides how many presigned
links the server signs and how many bytes each may carry, so every bound is checked
before anything is created, and each refusal says what to send instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from dicomweb_core.errors import BadRequest, PayloadTooLarge

MAX_FILES = 1000  # per session; the uploader opens more sessions for more files
MAX_FILE_BYTES = 1024**3  # the ingest function parses a whole instance in its 3 GB of memory
MAX_NAME_CHARS = 255
SINGLE_PUT_MAX_BYTES = 64 * 1024**2  # larger files are uploaded as S3 multipart parts
PART_BYTES = 16 * 1024**2  # S3's parts are 5 MiB to 5 GiB, at most 10,000
INGEST_PREFIX = "ingest/"
QUARANTINE_PREFIX = "quarantine/"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_INGEST_KEY = re.compile(r"ingest/([0-9a-f]{32})/([0-9]{1,4})")


@dataclass(frozen=True, slots=True)
class DeclaredFile:
    index: int
    name: str
    size: int
    sha256: str | None = None

    @property
    def multipart(self) -> bool:
        return self.size > SINGLE_PUT_MAX_BYTES

    @property
    def part_count(self) -> int:
        return -(-self.size // PART_BYTES) if self.multipart else 1

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> DeclaredFile:
        return cls(int(value["index"]), str(value["name"]), int(value["size"]), value.get("sha256"))


def declared_files(body: bytes | str | None) -> list[DeclaredFile]:
    """The files of an open-session request, or a ``400``/``413`` naming what is wrong."""
    try:
        document = json.loads(body or "")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(_EXPECTED) from None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list) or not files:
        raise BadRequest(_EXPECTED)
    if len(files) > MAX_FILES:
        raise PayloadTooLarge(f"A session holds at most {MAX_FILES} files; open one session per {MAX_FILES}.")
    return [_declared(index, entry) for index, entry in enumerate(files)]


_EXPECTED = (
    'Send a JSON body {"files": [{"name": "...", "size": <bytes>, "sha256": "<hex, optional>"}, ...]}.'
)


def _declared(index: int, entry: Any) -> DeclaredFile:
    if not isinstance(entry, dict):
        raise BadRequest(f"files[{index}] must be an object. {_EXPECTED}")
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BadRequest(f"files[{index}].size must be the file's size in bytes (a positive integer).")
    if size > MAX_FILE_BYTES:
        raise PayloadTooLarge(
            f"files[{index}] is {size} bytes; an uploaded instance may be at most {MAX_FILE_BYTES} bytes."
        )
    sha256 = entry.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower())):
        raise BadRequest(
            f"files[{index}].sha256 must be 64 hexadecimal digits (the file's SHA-256), or absent."
        )
    name = entry.get("name", "")
    if not isinstance(name, str):
        raise BadRequest(f"files[{index}].name must be a string.")
    shown = "".join(ch for ch in name if ch.isprintable())[:MAX_NAME_CHARS]
    return DeclaredFile(index, shown, size, sha256.lower() if sha256 else None)


def ingest_key(session_id: str, index: int) -> str:
    return f"{INGEST_PREFIX}{session_id}/{index:04d}"


def parse_ingest_key(key: str) -> tuple[str, int] | None:
    """(session id, file index) of an object uploaded into a session, None for any other key."""
    match = _INGEST_KEY.fullmatch(key)
    return (match.group(1), int(match.group(2))) if match else None


def is_session_id(value: str) -> bool:
    return bool(_SESSION_ID.fullmatch(value))


@dataclass(frozen=True, slots=True)
class CompletedPart:
    part_number: int
    etag: str


def completed_parts(body: bytes | str | None, *, expected: int) -> list[CompletedPart]:
    """The parts of a multipart file's ``complete`` request: each of 1..expected once."""
    try:
        document = json.loads(body or "")
    except (ValueError, UnicodeDecodeError):
        document = None
    parts = document.get("parts") if isinstance(document, dict) else None
    hint = (
        f'Send {{"parts": [{{"partNumber": 1, "etag": "<the ETag S3 answered>"}}, ...]}} '
        f"for parts 1..{expected}."
    )
    if not isinstance(parts, list):
        raise BadRequest(hint)
    read: list[CompletedPart] = []
    for part in parts:
        number = part.get("partNumber") if isinstance(part, dict) else None
        etag = part.get("etag") if isinstance(part, dict) else None
        if not isinstance(number, int) or not isinstance(etag, str) or not 0 < len(etag) <= 128:
            raise BadRequest(hint)
        read.append(CompletedPart(number, etag))
    if sorted(p.part_number for p in read) != list(range(1, expected + 1)):
        raise BadRequest(f"This file has {expected} parts; {hint}")
    return sorted(read, key=lambda p: p.part_number)
