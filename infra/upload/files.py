"""Finding the DICOM files to upload: folders and zip files, read by their headers only.

A folder is walked recursively; a ``.zip`` file (given directly or found in a folder) is
opened and each of its members is considered as if it were a file. Only the start of each
file is read: the 128-byte preamble, ``DICM`` and the File Meta Information (group 0002,
PS3.10 §7.1), always Explicit VR Little Endian. That gives the SOP Class and Instance UIDs
and the transfer syntax without touching the pixel data, so planning a 300 MB folder reads
a few kilobytes per file. Anything else is reported as skipped with its reason, never
silently dropped.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import zipfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREAMBLE_BYTES = 128
MAGIC = b"DICM"
# The File Meta Information of real files is a few hundred bytes; this bounds what one
# header read may take from a file that claims otherwise.
MAX_META_BYTES = 64 * 1024
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR (PS3.10 §8), not an instance
ZIP_SUFFIX = ".zip"
#: What reading a file or zip member may raise when it changed or went since it was scanned.
READ_ERRORS = (OSError, zipfile.BadZipFile)

_SOP_CLASS = 0x00020002
_SOP_INSTANCE = 0x00020003
_TRANSFER_SYNTAX = 0x00020010
# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 §7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a file's bytes are: a path, or a member of a zip file at that path."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        """How the summary and the journal name it: the path, or ``zip!member``."""
        return f"{self.path}!{self.member}" if self.member is not None else str(self.path)

    def open(self) -> IO[bytes]:
        """A binary stream of the file's bytes (each call its own, for parallel readers)."""
        if self.member is None:
            return open(self.path, "rb")
        return _zip(self.path).open(self.member)

    def read(self) -> bytes:
        with self.open() as stream:
            return stream.read()

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (a multipart upload's part)."""
        with self.open() as stream:
            stream.seek(offset)
            return stream.read(size)


@dataclass(frozen=True, slots=True)
class DicomFile:
    """A Part 10 file to upload, as its header describes it."""

    source: Source
    size: int
    # What changes when the file does: its mtime in ns, or a zip member's CRC-32.
    fingerprint: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str

    @property
    def name(self) -> str:
        return self.source.name


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not uploaded, and why."""

    name: str
    reason: str


@dataclass
class Scan:
    files: list[DicomFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class NotPart10(ValueError):
    """The bytes are not a DICOM Part 10 file the store can take."""


@dataclass(frozen=True, slots=True)
class Header:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def read_header(stream: IO[bytes]) -> Header:
    """The UIDs in a Part 10 file's File Meta Information (PS3.10 §7.1), read from its start.

    Raises :class:`NotPart10` with the reason when the start is not a Part 10 header.
    """
    head = stream.read(PREAMBLE_BYTES + len(MAGIC))
    if len(head) < PREAMBLE_BYTES + len(MAGIC) or head[PREAMBLE_BYTES:] != MAGIC:
        raise NotPart10("not a DICOM Part 10 file (no 'DICM' after the 128-byte preamble)")
    values: dict[int, str] = {}
    taken = 0
    while True:
        element = stream.read(8)
        if len(element) < 8:
            break  # a file of meta information only: the checks below say what is missing
        group, number = struct.unpack("<HH", element[:4])
        if group != 0x0002:
            break
        vr = element[4:6]
        if vr in _LONG_VRS:
            extra = stream.read(4)
            if len(extra) < 4:
                raise NotPart10("the File Meta Information is truncated")
            (length,) = struct.unpack("<I", extra)
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack("<H", element[6:8])
        else:
            raise NotPart10("the File Meta Information is not Explicit VR Little Endian (PS3.10 §7.1)")
        taken += 8 + length
        if taken > MAX_META_BYTES:
            raise NotPart10(f"the File Meta Information is larger than {MAX_META_BYTES} bytes")
        value = stream.read(length)
        if len(value) < length:
            raise NotPart10("the File Meta Information is truncated")
        tag = (group << 16) | number
        if tag in (_SOP_CLASS, _SOP_INSTANCE, _TRANSFER_SYNTAX):
            values[tag] = value.rstrip(b"\0 ").decode("ascii", errors="replace")
    missing = [
        name
        for tag, name in (
            (_SOP_CLASS, "Media Storage SOP Class UID"),
            (_SOP_INSTANCE, "Media Storage SOP Instance UID"),
            (_TRANSFER_SYNTAX, "Transfer Syntax UID"),
        )
        if not values.get(tag)
    ]
    if missing:
        raise NotPart10(f"the File Meta Information has no {', '.join(missing)}")
    header = Header(values[_SOP_CLASS], values[_SOP_INSTANCE], values[_TRANSFER_SYNTAX])
    if header.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
        raise NotPart10("a DICOMDIR (media directory), not an instance")
    return header


def scan(paths: Sequence[Path], *, ignore: Collection[Path] = (), ignore_names: Collection[str] = ()) -> Scan:
    """Every DICOM file under ``paths`` (folders, zip files, files), and every file skipped.

    Files come in a stable order: each argument in turn, sorted paths within a folder, zip
    members in archive order. ``ignore`` lists files, ``ignore_names`` file names, to leave
    out silently (journals).
    """
    result = Scan()
    ignored = {p.resolve() for p in ignore}
    seen: set[str] = set()
    for argument in paths:
        for path in _walk(argument.resolve(), result):
            if path in ignored or path.name in ignore_names:
                continue
            if str(path) in seen:
                continue
            seen.add(str(path))
            if path.suffix.lower() == ZIP_SUFFIX:
                _scan_zip(path, result)
            else:
                _scan_file(path, result)
    return result


def _walk(path: Path, result: Scan) -> Iterator[Path]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        result.skipped.append(Skipped(str(path), f"cannot be read: {exc.strerror or exc}"))
        return
    if stat.S_ISREG(mode):
        yield path
        return
    if not stat.S_ISDIR(mode):
        result.skipped.append(Skipped(str(path), "not a regular file or folder"))
        return
    for folder, folders, names in os.walk(path, onerror=lambda e: _unreadable(e, result)):
        folders.sort()
        for name in sorted(names):
            candidate = Path(folder) / name
            if candidate.is_file():
                yield candidate


def _unreadable(error: OSError, result: Scan) -> None:
    result.skipped.append(Skipped(str(error.filename), f"cannot be read: {error.strerror or error}"))


def _scan_file(path: Path, result: Scan) -> None:
    source = Source(path)
    try:
        info = path.stat()
        with source.open() as stream:
            header = read_header(stream)
    except NotPart10 as exc:
        result.skipped.append(Skipped(source.name, str(exc)))
        return
    except OSError as exc:
        result.skipped.append(Skipped(source.name, f"cannot be read: {exc.strerror or exc}"))
        return
    result.files.append(_dicom_file(source, info.st_size, str(info.st_mtime_ns), header))


def _scan_zip(path: Path, result: Scan) -> None:
    try:
        archive = _zip(path)
        members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        result.skipped.append(Skipped(str(path), f"not a readable zip file: {exc}"))
        return
    for member in members:
        if member.is_dir():
            continue
        source = Source(path, member.filename)
        if member.filename.lower().endswith(ZIP_SUFFIX):
            result.skipped.append(Skipped(source.name, "a zip file inside a zip file is not opened"))
            continue
        try:
            with source.open() as stream:
                header = read_header(stream)
        except NotPart10 as exc:
            result.skipped.append(Skipped(source.name, str(exc)))
            continue
        except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            # NotImplementedError: an unsupported compression; RuntimeError: encrypted.
            result.skipped.append(Skipped(source.name, f"cannot be read from the zip file: {exc}"))
            continue
        result.files.append(_dicom_file(source, member.file_size, f"crc32:{member.CRC:08x}", header))


def _dicom_file(source: Source, size: int, fingerprint: str, header: Header) -> DicomFile:
    return DicomFile(
        source=source,
        size=size,
        fingerprint=fingerprint,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
    )


# Each thread keeps its own open ZipFile per archive: reading members opens no new file
# handle and parses no central directory again, and no stream is shared between threads.
_open_zips = threading.local()


def _zip(path: Path) -> zipfile.ZipFile:
    archives: dict[Path, zipfile.ZipFile] | None = getattr(_open_zips, "archives", None)
    if archives is None:
        archives = _open_zips.archives = {}
    archive = archives.get(path)
    if archive is None:
        archive = archives[path] = zipfile.ZipFile(path)
    return archive
