"""Planning the sends: STOW-RS batches under the request ceiling, upload sessions for the rest.

A STOW-RS request travels through API Gateway to Lambda, whose synchronous invocation
payload is 6 MB; the body is base64-encoded in the payload-v2 event, so about 4.4 MB of
raw bytes fit (DESIGN.md, "Limits"). Each request here carries at most
:data:`MAX_REQUEST_BYTES` of instances plus their multipart framing, and at most
:data:`MAX_INSTANCES_PER_REQUEST` of them, so that a batch of small objects still ends well
within the function's 29 s timeout. An instance that cannot fit a request on its own goes
through an upload session (presigned S3 uploads; docs/upload-sessions.md), in sessions of
at most :data:`MAX_SESSION_FILES` files.

:func:`stow_batches` is public: a script that stores with another client (dicomweb-client's
``store_instances``, say) sizes its batches with it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import pydicom
from pydicom.dataset import Dataset

from dicomweb_core.upload import declared
from infra.upload.files import DicomFile

#: Raw bytes per STOW-RS request (instances and framing): base64 makes it ~5.6 MB of the
#: 6 MB Lambda payload, leaving room for the event's headers.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Multipart framing per part, counted against the ceiling: the delimiter line (a boundary
#: of up to 70 characters), Content-Type and Content-Length headers and CRLFs, rounded up.
PART_OVERHEAD_BYTES = 256
#: Instances per STOW-RS request: small objects (SRs, presentation states) would otherwise
#: put hundreds in one request, each a few AWS calls, against the function's 29 s timeout.
MAX_INSTANCES_PER_REQUEST = 50
#: Files per upload session (the session API's limit).
MAX_SESSION_FILES = declared.MAX_FILES
#: Bytes per upload session: a session is opened just before its files are sent, and its
#: presigned URLs expire; a bounded session is sent well within their lifetime.
MAX_SESSION_BYTES = 8 * 1024**3
#: The largest file an upload session takes (the session API's limit).
MAX_FILE_BYTES = declared.MAX_FILE_BYTES

T = TypeVar("T")


class HasSize(Protocol):
    @property
    def size(self) -> int: ...


Sizable = int | bytes | bytearray | memoryview | Dataset | HasSize


class TooLargeForStow(ValueError):
    """An instance that no STOW-RS request under the ceiling can carry."""

    def __init__(self, index: int, size: int) -> None:
        super().__init__(
            f"item {index} is {size} bytes: over the {MAX_REQUEST_BYTES - PART_OVERHEAD_BYTES} bytes "
            "one STOW-RS request can carry; send it through an upload session (python -m infra.upload)"
        )
        self.index = index
        self.size = size


def encoded_size(item: Sizable) -> int:
    """The bytes ``item`` takes in a STOW-RS request: its length, or a dataset's Part 10 encoding
    (written as dicomweb-client writes it, ``pydicom.dcmwrite``)."""
    if isinstance(item, int):
        return item
    if isinstance(item, bytes | bytearray | memoryview):
        return memoryview(item).nbytes
    if isinstance(item, Dataset):
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, item)
        return len(buffer.getvalue())
    return int(item.size)


def fits_one_request(size: int, *, max_bytes: int = MAX_REQUEST_BYTES) -> bool:
    """Can an instance of ``size`` bytes travel in a STOW-RS request at all?"""
    return size + PART_OVERHEAD_BYTES <= max_bytes


def stow_batches(
    items: Iterable[T],
    *,
    size: Callable[[T], int] | None = None,
    max_bytes: int = MAX_REQUEST_BYTES,
    max_count: int = MAX_INSTANCES_PER_REQUEST,
) -> list[list[T]]:
    """Split ``items`` into STOW-RS requests that each fit under the ceiling, in order.

    ``items`` are Part 10 bytes, pydicom datasets, sizes in bytes, or anything with a
    ``size``; ``size`` overrides how an item is measured. Each batch holds at most
    ``max_count`` items whose sizes plus framing add up to at most ``max_bytes``. An item
    that cannot fit a request alone raises :class:`TooLargeForStow`::

        for batch in stow_batches(datasets):
            client.store_instances(batch)
    """
    measure: Callable[[T], int] = size or encoded_size  # type: ignore[assignment]
    batches: list[list[T]] = []
    batch: list[T] = []
    used = 0
    for index, item in enumerate(items):
        cost = measure(item) + PART_OVERHEAD_BYTES
        if cost > max_bytes:
            raise TooLargeForStow(index, cost - PART_OVERHEAD_BYTES)
        if batch and (used + cost > max_bytes or len(batch) >= max_count):
            batches.append(batch)
            batch, used = [], 0
        batch.append(item)
        used += cost
    if batch:
        batches.append(batch)
    return batches


def session_groups(
    files: Sequence[DicomFile], *, max_files: int = MAX_SESSION_FILES, max_bytes: int = MAX_SESSION_BYTES
) -> list[list[DicomFile]]:
    """Split files for upload sessions into sessions of at most ``max_files`` files and
    ``max_bytes`` bytes (a single larger file gets a session of its own)."""
    groups: list[list[DicomFile]] = []
    group: list[DicomFile] = []
    used = 0
    for file in files:
        if group and (len(group) >= max_files or used + file.size > max_bytes):
            groups.append(group)
            group, used = [], 0
        group.append(file)
        used += file.size
    if group:
        groups.append(group)
    return groups


@dataclass
class Plan:
    """How each file is sent: in a STOW-RS batch, in an upload session, or not at all."""

    stow: list[list[DicomFile]] = field(default_factory=list)
    sessions: list[list[DicomFile]] = field(default_factory=list)
    unsendable: list[tuple[DicomFile, str]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for batch in (*self.stow, *self.sessions) for f in batch)

    @property
    def files(self) -> int:
        return sum(len(batch) for batch in (*self.stow, *self.sessions))


def plan(
    files: Sequence[DicomFile],
    *,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_count: int = MAX_INSTANCES_PER_REQUEST,
) -> Plan:
    """Small files in STOW-RS batches, larger ones in upload sessions, in their given order."""
    small = [f for f in files if fits_one_request(f.size, max_bytes=max_request_bytes)]
    large = [f for f in files if not fits_one_request(f.size, max_bytes=max_request_bytes)]
    result = Plan(stow=stow_batches(small, size=_size, max_bytes=max_request_bytes, max_count=max_count))
    sendable = []
    for file in large:
        if file.size > MAX_FILE_BYTES:
            result.unsendable.append(
                (file, f"{file.size} bytes is over the {MAX_FILE_BYTES} bytes an upload session takes")
            )
        else:
            sendable.append(file)
    result.sessions = session_groups(sendable)
    return result


def _size(file: DicomFile) -> int:
    return file.size
