"""Tests for reading one received Part 10 instance (STOW-RS, PS3.18 §10.5; PS3.10 §7).

Broken and malicious inputs are built here, from pydicom-written data sets and raw byte
surgery, so each test says exactly what is wrong with its input.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset, config, dcmwrite
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from dicomweb_core.config import Limits
from dicomweb_core.dicom.failures import FailureReason, InstanceRejected
from dicomweb_core.dicom.instance import ReceivedInstance, read_instance
from infra.datasets import dicom_files
from infra.datasets.dicom_files import PYDICOM_DATA_FILES, PYDICOM_TEST_FILES, part10_files

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.10001"
STUDY = "1.2.826.0.1.3680043.8.498.20001"
SERIES = "1.2.826.0.1.3680043.8.498.30001"
REQUIRED_UIDS = {
    "SOPClassUID": SOP_CLASS,
    "SOPInstanceUID": SOP_INSTANCE,
    "StudyInstanceUID": STUDY,
    "SeriesInstanceUID": SERIES,
}
LIMITS = Limits()
MIB = 1 << 20
ROWS = COLUMNS = 64

PIXEL_DATA = 0x7FE00010
CONTENT_SEQUENCE = 0x0040A730
ITEM = b"\xfe\xff\x00\xe0"
ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
UNDEFINED = 0xFFFFFFFF
LONG_VRS = {b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"}


# --- helpers ------------------------------------------------------------------------------------


def make_dataset(*, omit: tuple[str, ...] = (), pixels: bool = True) -> Dataset:
    """A small, valid Secondary Capture instance; ``omit`` drops attributes by keyword."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = SOP_INSTANCE
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "A-1"
    ds.Modality = "OT"
    ds.StudyDescription = "Unit test study"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P-1"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if pixels:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ROWS
        ds.Columns = COLUMNS
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(i % 251 for i in range(ROWS * COLUMNS))
    for keyword in omit:
        del ds[keyword]
    return ds


def set_unchecked(ds: Dataset, keyword: str, value: str) -> None:
    """Set a UI value without pydicom's own validation (which would only warn)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert tag is not None
    ds[tag] = DataElement(tag, "UI", value, validation_mode=config.IGNORE)


def to_part10(ds: Dataset, *, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The Part 10 bytes pydicom writes for ``ds`` (preamble, 'DICM', File Meta, data set).

    pydicom copies the data set's SOPInstanceUID into MediaStorageSOPInstanceUID.
    """
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_INSTANCE
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def body_of(ds: Dataset) -> bytes:
    """The data set alone, Explicit VR Little Endian, as it follows the File Meta."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def element(tag: int, vr: bytes, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; ``length`` overrides the declared length."""
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    declared = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", declared) + value
    return head + struct.pack("<H", declared) + value


def meta_elements(
    *, transfer_syntax: str | None = ExplicitVRLittleEndian, sop_instance: str = SOP_INSTANCE
) -> list[bytes]:
    elements = [
        element(0x00020001, b"OB", b"\x00\x01"),
        element(0x00020002, b"UI", SOP_CLASS.encode()),
        element(0x00020003, b"UI", sop_instance.encode()),
    ]
    if transfer_syntax is not None:
        elements.append(element(0x00020010, b"UI", transfer_syntax.encode()))
    elements.append(element(0x00020012, b"UI", b"1.2.826.0.1.3680043.8.498.1"))
    return elements


def part10_raw(elements: list[bytes], body: bytes, *, group_length: int | None = None) -> bytes:
    """Preamble, 'DICM', a hand-built File Meta group (with its group length) and ``body``."""
    group = b"".join(elements)
    length = len(group) if group_length is None else group_length
    return bytes(128) + b"DICM" + element(0x00020000, b"UL", struct.pack("<I", length)) + group + body


def raw_deflate(chunks: Iterator[bytes] | list[bytes]) -> bytes:
    """Raw deflate (no zlib header), as PS3.5 §A.5 uses, fed chunk by chunk."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return b"".join(compressor.compress(chunk) for chunk in chunks) + compressor.flush()


def zero_pixel_data(size: int) -> Iterator[bytes]:
    """A Pixel Data OB element of ``size`` zero bytes, produced a MiB at a time."""
    yield element(PIXEL_DATA, b"OB", length=size)
    while size > 0:
        step = min(size, MIB)
        yield bytes(step)
        size -= step


def deflated_with_zero_run(size: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose Pixel Data is ``size`` zero bytes."""
    body = raw_deflate([body_of(make_dataset(pixels=False)), *zero_pixel_data(size)])
    return part10_raw(meta_elements(transfer_syntax=DeflatedExplicitVRLittleEndian), body)


def nested_sequences(depth: int, *, undefined_length: bool) -> bytes:
    """``depth`` Content Sequences, each holding one item that holds the next."""
    sequence_head = element(CONTENT_SEQUENCE, b"SQ", length=UNDEFINED)
    if undefined_length:
        opening = sequence_head + ITEM + struct.pack("<I", UNDEFINED)
        return opening * depth + (ITEM_DELIMITER + SEQUENCE_DELIMITER) * depth
    inner = b""
    for _ in range(depth):
        item = ITEM + struct.pack("<I", len(inner)) + inner
        inner = element(CONTENT_SEQUENCE, b"SQ", item)
    return inner


def with_nesting(depth: int, *, undefined_length: bool) -> bytes:
    body = body_of(make_dataset(pixels=False)) + nested_sequences(depth, undefined_length=undefined_length)
    return part10_raw(meta_elements(), body)


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    """Same-length byte surgery on exactly one occurrence."""
    assert len(old) == len(new)
    assert data.count(old) == 1
    return data.replace(old, new)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail the test, instead of hanging the run, when the block takes longer than ``seconds``.

    pytest-timeout is not installed; SIGALRM interrupts a loop in the main thread (where
    pytest runs tests) and ``pytest.fail`` raises a BaseException, which the parser's
    ``except Exception`` clauses cannot swallow.
    """

    def expire(signum: int, frame: object) -> None:
        pytest.fail(f"still running after {seconds} s", pytrace=False)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def after_deflate_stream(data: bytes) -> bytes:
    """The bytes of a deflated Part 10 file that follow the end of its deflate stream.

    The File Meta group length (0002,0000) is the 4-byte value at offset 140; the data set
    starts after the group it counts.
    """
    (group_length,) = struct.unpack_from("<I", data, 140)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[144 + group_length :])
    assert inflater.eof
    return inflater.unused_data


def rejected(data: bytes | bytearray | memoryview, *, limits: Limits = LIMITS) -> InstanceRejected:
    with pytest.raises(InstanceRejected) as info:
        read_instance(data, limits=limits)
    return info.value


def pixel_data_offset(data: bytes) -> int:
    """Where the Pixel Data value starts in a non-deflated file."""
    raw = pydicom.dcmread(io.BytesIO(data)).get_item(PIXEL_DATA)
    assert raw is not None
    return raw.value_tell


# --- accepted input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    ids=["explicit-le", "implicit-le", "explicit-be", "deflated"],
)
def test_valid_instance_is_accepted_with_its_uids_and_index_json(transfer_syntax: str) -> None:
    # Given a valid instance written by pydicom in a standard transfer syntax
    data = to_part10(make_dataset(), transfer_syntax=transfer_syntax)
    # When it is read
    received = read_instance(data, limits=LIMITS)
    # Then the bytes are kept as received and every UID the index needs is there
    assert received.data == data
    assert received.size == len(data)
    assert received.sha256 == hashlib.sha256(data).hexdigest()
    assert received.transfer_syntax_uid == transfer_syntax
    assert received.sop_class_uid == SOP_CLASS
    assert received.sop_instance_uid == SOP_INSTANCE
    assert received.study_instance_uid == STUDY
    assert received.series_instance_uid == SERIES
    assert received.modality == "OT"
    # And each level's JSON holds that level's attributes only
    assert received.study_json["0020000D"] == {"vr": "UI", "Value": [STUDY]}
    assert received.study_json["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert "0020000E" not in received.study_json
    assert received.series_json["0020000E"] == {"vr": "UI", "Value": [SERIES]}
    assert received.series_json["00080060"] == {"vr": "CS", "Value": ["OT"]}
    assert received.instance_json["00080018"] == {"vr": "UI", "Value": [SOP_INSTANCE]}
    assert received.instance_json["00280010"] == {"vr": "US", "Value": [ROWS]}
    assert "7FE00010" not in received.instance_json


@pytest.mark.parametrize(
    "preamble",
    [
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(range(114)),
        b"#!/bin/sh\nrm -rf --no-preserve-root /\n".ljust(128, b"#"),
        b"PK\x03\x04\x14\x00\x00\x00" + b"payload.exe".ljust(120, b"\xcc"),
        bytes([0xFF]) * 128,
    ],
    ids=["windows-pe", "shell-script", "zip", "all-ones"],
)
def test_executable_preamble_is_zeroed_and_the_rest_kept_byte_for_byte(preamble: bytes) -> None:
    # Given a valid instance whose 128-byte preamble is an executable header (a polyglot)
    original = to_part10(make_dataset())
    assert len(preamble) == 128
    polyglot = preamble + original[128:]
    # When it is read
    received = read_instance(polyglot, limits=LIMITS)
    # Then the stored preamble is all zeros and every other byte is unchanged
    assert received.data[:128] == bytes(128)
    assert received.data[128:] == polyglot[128:]
    assert received.sha256 == hashlib.sha256(received.data).hexdigest()
    assert received.sop_instance_uid == SOP_INSTANCE


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_any_bytes_like_input_is_read_the_same(wrap: type) -> None:
    # Given the same instance as bytes, bytearray and memoryview (multipart hands out views)
    data = b"MZ" + to_part10(make_dataset())[2:]
    # When each is read
    received = read_instance(wrap(data), limits=LIMITS)
    # Then the stored bytes are immutable bytes with the preamble zeroed
    assert type(received.data) is bytes
    assert received.data == bytes(128) + data[128:]


def test_deflated_sample_file_from_the_test_data_is_accepted() -> None:
    # Given pydicom's deflated sample (Deflated Explicit VR Little Endian)
    path = dicom_files.test_file("image_dfl.dcm")
    expected = pydicom.dcmread(path)
    # When it is read
    received = read_instance(path.read_bytes(), limits=LIMITS)
    # Then it is accepted with the UIDs pydicom reads
    assert received.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert received.sop_instance_uid == expected.SOPInstanceUID
    assert received.study_instance_uid == expected.StudyInstanceUID


def test_deflated_file_just_under_the_inflation_limit_is_accepted() -> None:
    # Given a deflated file that inflates to less than the configured budget
    data = deflated_with_zero_run(MIB // 2)
    # When it is read with a 1 MiB budget
    received = read_instance(data, limits=Limits(max_inflated_bytes=MIB))
    # Then it is accepted
    assert received.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert received.sop_instance_uid == SOP_INSTANCE


@pytest.mark.parametrize("depth", [1, 32], ids=["one", "at-limit"])
@pytest.mark.parametrize("undefined_length", [False, True], ids=["defined", "undefined"])
def test_sequences_nested_up_to_the_limit_are_accepted(depth: int, undefined_length: bool) -> None:
    # Given sequences nested exactly as deep as Limits.max_sequence_depth allows
    data = with_nesting(depth, undefined_length=undefined_length)
    # When it is read
    received = read_instance(data, limits=Limits(max_sequence_depth=32))
    # Then it is accepted
    assert received.sop_instance_uid == SOP_INSTANCE


# --- not DICOM ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        random.Random(1).randbytes(4096),
        b"Hello, this is a plain text upload, not DICOM.\n" * 20,
        b'{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}',
        bytes(131),
        bytes(128) + b"DIC",
        bytes(128) + b"dicm" + bytes(64),
        b"DICM" + bytes(256),
        bytes(127) + b"DICM" + bytes(64),
    ],
    ids=[
        "empty",
        "random",
        "text",
        "dicom-json",
        "131-bytes",
        "prefix-cut",
        "lowercase-prefix",
        "prefix-at-zero",
        "prefix-off-by-one",
    ],
)
def test_input_without_the_part10_prefix_is_not_understood(data: bytes) -> None:
    # Given bytes that do not carry 'DICM' after a 128-byte preamble
    # When they are read
    error = rejected(data)
    # Then the failure is "cannot understand" and says the Part 10 prefix is missing
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "DICM" in error.failure.message
    assert "Part 10" in error.failure.message
    assert error.failure.sop_instance_uid is None


def test_random_bytes_after_the_prefix_are_not_understood() -> None:
    # Given a correct preamble and prefix followed by random bytes
    rng = random.Random(7)
    data = bytes(128) + b"DICM" + rng.randbytes(2048)
    # When they are read
    error = rejected(data)
    # Then the File Meta Information is reported as unreadable
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "File Meta Information" in error.failure.message


# --- truncation and corrupt lengths ---------------------------------------------------------------


def test_file_cut_in_the_middle_of_pixel_data_is_rejected() -> None:
    # Given a valid file cut half way through its Pixel Data value
    data = to_part10(make_dataset())
    cut = pixel_data_offset(data) + ROWS * COLUMNS // 2
    # When it is read
    error = rejected(data[:cut])
    # Then it is not understood, the message names the element and says it is truncated
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(7FE0,0010)" in error.failure.message
    assert "truncated" in error.failure.message
    assert f"declares {ROWS * COLUMNS} bytes but only {ROWS * COLUMNS // 2} follow" in error.failure.message
    # And the instance is still named in the failure
    assert error.failure.sop_instance_uid == SOP_INSTANCE
    assert error.failure.sop_class_uid == SOP_CLASS


@pytest.mark.parametrize("into_header", [1, 4, 7, 8, 11], ids=lambda n: f"{n}-bytes")
def test_file_cut_inside_an_element_header_is_rejected(into_header: int) -> None:
    # Given a valid file cut inside the 12-byte header of its Pixel Data element
    data = to_part10(make_dataset())
    header_start = pixel_data_offset(data) - 12
    # When it is read
    error = rejected(data[: header_start + into_header])
    # Then it is reported as truncated rather than read as a shorter, complete file
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "truncated" in error.failure.message


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"], ids=lambda k: k)
def test_file_cut_inside_a_uid_value_is_rejected_as_truncated(keyword: str) -> None:
    # Given a valid file cut in the middle of a required UID's value
    data = to_part10(make_dataset())
    value = REQUIRED_UIDS[keyword].encode()
    start = data.rindex(value)  # the data set's copy, not the File Meta's
    # When it is read
    error = rejected(data[: start + len(value) // 2])
    # Then it is truncated (not "missing" or "invalid": the value was cut)
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert f"({tag >> 16:04X},{tag & 0xFFFF:04X})" in error.failure.message
    assert "truncated" in error.failure.message


def test_file_cut_inside_the_file_meta_is_rejected() -> None:
    # Given a valid file cut inside its File Meta Information
    data = to_part10(make_dataset())
    # When it is read
    error = rejected(data[:150])
    # Then the File Meta Information is reported as unreadable
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "File Meta Information" in error.failure.message


@pytest.mark.parametrize("cut_from_end", [8, 100, 600], ids=["before-delimiter", "last-item", "mid-item"])
def test_encapsulated_pixel_data_cut_before_its_delimiter_is_rejected(cut_from_end: int) -> None:
    # Given an instance with encapsulated (undefined length) Pixel Data, cut before its end
    ds = make_dataset()
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(1000) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = to_part10(ds, transfer_syntax=JPEG2000Lossless)
    assert read_instance(data, limits=LIMITS).transfer_syntax_uid == JPEG2000Lossless
    # When the cut file is read
    error = rejected(data[:-cut_from_end])
    # Then it is truncated, not a data set that merely lacks its attributes
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "truncated" in error.failure.message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda body: part10_raw(meta_elements(), body + element(PIXEL_DATA, b"OB", length=0xFFFFFFF0)),
            "(7FE0,0010) declares 4294967280 bytes but only 16 follow",
        ),
        (
            lambda body: part10_raw(meta_elements(), body + element(0x00431029, b"UN", length=0xFFFFFFF0)),
            "(0043,1029) declares 4294967280 bytes but only 16 follow",
        ),
        (
            lambda body: part10_raw(
                meta_elements(), body + element(0x00321060, b"LO", b"x" * 4, length=0xFFF0)
            ),
            "(0032,1060) declares 65520 bytes but only 20 follow",
        ),
        (
            lambda body: part10_raw(
                [element(0x00020002, b"UI", b"1.2", length=0xFFF0), *meta_elements()], body
            ),
            "(0002,0002) declares more bytes than the file holds",
        ),
    ],
    ids=["pixel-data-OB", "private-UN", "short-LO", "file-meta-UI"],
)
def test_element_declaring_a_huge_length_is_rejected_fast(
    make: Callable[[bytes], bytes], expected: str
) -> None:
    # Given an element whose length field claims far more bytes than follow
    body = body_of(make_dataset(pixels=False))
    data = make(body) + bytes(16)
    # When it is read
    error = rejected(data)
    # Then it is not understood, and the message names the element and the mismatch
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert expected in error.failure.message


def test_implicit_vr_element_declaring_a_huge_length_is_rejected() -> None:
    # Given an Implicit VR file whose last element claims 0xFFFFFFF0 bytes
    implicit = to_part10(make_dataset(pixels=False), transfer_syntax=ImplicitVRLittleEndian)
    data = implicit + struct.pack("<HHI", 0x7FE0, 0x0010, 0xFFFFFFF0) + bytes(16)
    # When it is read
    error = rejected(data)
    # Then the element and its declared length are named
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(7FE0,0010) declares 4294967280 bytes" in error.failure.message


# --- sequence nesting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "undefined_length"),
    [(33, False), (40, False), (5000, False), (33, True), (40, True), (5000, True)],
    ids=["33-defined", "40-defined", "5000-defined", "33-undefined", "40-undefined", "5000-undefined"],
)
def test_sequences_nested_too_deeply_are_rejected(depth: int, undefined_length: bool) -> None:
    # Given sequences nested deeper than Limits.max_sequence_depth (32)
    data = with_nesting(depth, undefined_length=undefined_length)
    # When it is read, repeatedly (each read must return, not recurse without bound)
    for _ in range(3):
        error = rejected(data, limits=Limits(max_sequence_depth=32))
        # Then it is not understood and the message says the nesting is too deep
        assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
        assert "nested" in error.failure.message
        assert "deep" in error.failure.message


def test_sequence_depth_follows_the_configured_limit() -> None:
    # Given four nested sequences and a limit of three
    data = with_nesting(4, undefined_length=False)
    # When it is read with max_sequence_depth 3, and then 4
    error = rejected(data, limits=Limits(max_sequence_depth=3))
    received = read_instance(data, limits=Limits(max_sequence_depth=4))
    # Then only the lower limit refuses it, and the message names the limit
    assert "more than 3 levels" in error.failure.message
    assert received.sop_instance_uid == SOP_INSTANCE


# --- deflate --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "described"),
    [(MIB, "1 MiB"), (256 * 1024, "262144 bytes")],
    ids=["1MiB", "256KiB"],
)
def test_deflate_bomb_is_refused_as_out_of_resources(budget: int, described: str) -> None:
    # Given a deflated file whose Pixel Data is a long run of zeros (tiny when deflated)
    data = deflated_with_zero_run(8 * MIB)
    assert len(data) < 64 * 1024
    # When it is read with a smaller inflation budget
    error = rejected(data, limits=Limits(max_inflated_bytes=budget))
    # Then it is refused for resources, with the budget in the message
    assert error.failure.reason == FailureReason.OUT_OF_RESOURCES
    assert f"inflates to more than {described}" in error.failure.message


def test_deflate_bomb_behind_a_lying_group_length_is_still_refused() -> None:
    # Given a bomb followed by a small valid deflate stream, and a File Meta group length
    # that points past the bomb to the small stream (where pydicom does not start inflating)
    bomb = raw_deflate([body_of(make_dataset(pixels=False)), *zero_pixel_data(8 * MIB)])
    decoy = raw_deflate([body_of(make_dataset(pixels=False))])
    elements = meta_elements(transfer_syntax=DeflatedExplicitVRLittleEndian)
    group_length = len(b"".join(elements)) + len(bomb)
    data = part10_raw(elements, bomb + decoy, group_length=group_length)
    # When it is read
    error = rejected(data, limits=Limits(max_inflated_bytes=MIB))
    # Then the bomb is measured where the parser would inflate it, and refused
    assert error.failure.reason == FailureReason.OUT_OF_RESOURCES


def test_repeated_transfer_syntax_in_the_file_meta_is_rejected() -> None:
    # Given File Meta with two Transfer Syntax UIDs: Explicit VR first, Deflated last
    # (pydicom keeps the last one, so the first must not decide whether to bound inflation)
    elements = [
        *meta_elements(transfer_syntax=ExplicitVRLittleEndian),
        element(0x00020010, b"UI", DeflatedExplicitVRLittleEndian.encode()),
    ]
    bomb = raw_deflate([body_of(make_dataset(pixels=False)), *zero_pixel_data(8 * MIB)])
    # When it is read
    error = rejected(part10_raw(elements, bomb), limits=Limits(max_inflated_bytes=MIB))
    # Then the File Meta is refused, naming the repeated element
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(0002,0010) appears more than once" in error.failure.message


def test_deflated_data_set_starting_with_a_command_set_is_rejected() -> None:
    # Given a deflated file whose data set starts with uncompressed group 0000 bytes
    # (pydicom would read those as a Command Set and inflate only what follows)
    command = struct.pack("<HHI", 0x0000, 0x0002, 4) + b"1.2\0"
    bomb = raw_deflate([body_of(make_dataset(pixels=False)), *zero_pixel_data(8 * MIB)])
    data = part10_raw(meta_elements(transfer_syntax=DeflatedExplicitVRLittleEndian), command + bomb)
    # When it is read
    error = rejected(data, limits=Limits(max_inflated_bytes=MIB))
    # Then it is not understood
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "Command Set" in error.failure.message


def pydicom_deflated_image(seed: int) -> bytes:
    """An ordinary 1024x1024 16-bit image (2 MiB of pixels) as pydicom writes it deflated.

    pydicom pads a deflate stream of odd length with one NUL byte, so about half of such
    files end with a byte after the stream (which depends on ``seed``, the pixel pattern).
    """
    ds = make_dataset(pixels=False)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((i * 7 + seed) % 251 for i in range(4096)) * 512
    return to_part10(ds, transfer_syntax=DeflatedExplicitVRLittleEndian)


def test_pydicom_written_deflated_images_are_accepted_with_or_without_padding() -> None:
    # Given ordinary 2 MiB images written deflated by pydicom, some padded to even length
    padded = unpadded = 0
    with deadline(30):
        for seed in range(10):
            data = pydicom_deflated_image(seed)
            trailing = after_deflate_stream(data)
            assert trailing in (b"", b"\0")
            # When each is read (inflating more than one step of the bounded inflation)
            received = read_instance(data, limits=LIMITS)
            # Then it is accepted, byte for byte
            assert received.data == data
            padded += trailing == b"\0"
            unpadded += trailing == b""
    # (and the images include both kinds)
    assert padded and unpadded, (padded, unpadded)


TRAILERS = {
    "nul-pad": b"\0",  # pydicom pads an odd-length stream to even length
    "nul-run": bytes(16),
    # what pydicom's image_dfl.dcm carries after its stream: a gzip-style CRC-32 and length
    "gzip-trailer": bytes.fromhex("4ed058451a020400"),
}


@pytest.mark.parametrize("trailer", TRAILERS.values(), ids=TRAILERS.keys())
def test_bytes_after_the_deflate_stream_are_ignored_as_pydicom_ignores_them(trailer: bytes) -> None:
    # Given a deflated file inflating to 2 MiB (several inflation steps) followed by bytes
    data = deflated_with_zero_run(2 * MIB) + trailer
    assert after_deflate_stream(data) == trailer
    # When it is read
    with deadline(10):
        received = read_instance(data, limits=LIMITS)
    # Then it is accepted and stored as received, trailing bytes included
    assert received.sop_instance_uid == SOP_INSTANCE
    assert received.data == data


def test_deflate_stream_that_never_ends_is_rejected_as_truncated() -> None:
    # Given a deflated file cut inside its deflate stream
    data = deflated_with_zero_run(2 * MIB)
    cut = data[: len(data) - 40]
    # When it is read
    with deadline(10):
        error = rejected(cut)
    # Then it is not understood, and the message says the deflate stream is cut short
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "deflate stream ends early" in error.failure.message


@pytest.mark.parametrize("inflated", [MIB + MIB // 2, 8 * MIB], ids=["ends-in-the-last-step", "8MiB"])
@pytest.mark.parametrize("trailer", TRAILERS.values(), ids=TRAILERS.keys())
def test_deflate_bomb_with_bytes_after_its_stream_is_still_refused(trailer: bytes, inflated: int) -> None:
    # Given a bomb (a run of zeros) whose stream is followed by bytes
    data = deflated_with_zero_run(inflated) + trailer
    # When it is read with a 1 MiB budget
    with deadline(10):
        error = rejected(data, limits=Limits(max_inflated_bytes=MIB))
    # Then the bound stops it
    assert error.failure.reason == FailureReason.OUT_OF_RESOURCES
    assert "inflates to more than 1 MiB" in error.failure.message


def test_deflated_transfer_syntax_with_data_that_is_not_deflate_is_rejected() -> None:
    # Given a file that declares Deflated Explicit VR Little Endian but is not deflated
    body = body_of(make_dataset())
    data = part10_raw(meta_elements(transfer_syntax=DeflatedExplicitVRLittleEndian), body)
    # When it is read
    error = rejected(data)
    # Then the deflate data is reported invalid
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "deflate" in error.failure.message


# --- required attributes and UIDs -------------------------------------------------------------------


@pytest.mark.parametrize("keyword", list(REQUIRED_UIDS), ids=lambda k: k)
def test_missing_required_uid_is_a_dataset_mismatch_naming_the_attribute(keyword: str) -> None:
    # Given an otherwise valid instance without one of the UIDs the store is keyed on
    data = to_part10(make_dataset(omit=(keyword,)))
    # When it is read
    error = rejected(data)
    # Then it fails with "data set does not match SOP class", naming the attribute
    assert error.failure.reason == FailureReason.DATASET_DOES_NOT_MATCH
    assert keyword in error.failure.message
    assert "missing" in error.failure.message


@pytest.mark.parametrize("keyword", list(REQUIRED_UIDS), ids=lambda k: k)
def test_empty_required_uid_is_reported_missing(keyword: str) -> None:
    # Given an instance where one required UID is present but zero length
    ds = make_dataset()
    set_unchecked(ds, keyword, "")
    # When it is read
    error = rejected(to_part10(ds))
    # Then it is reported missing
    assert error.failure.reason == FailureReason.DATASET_DOES_NOT_MATCH
    assert f"required {keyword} is missing" in error.failure.message


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")
@pytest.mark.parametrize("keyword", list(REQUIRED_UIDS), ids=lambda k: k)
@pytest.mark.parametrize(
    "bad",
    ["1.2.03.4", "1.2..3", "1.2.3.", "2.25.abc", "1." + "2" * 63, "1.2.3 4", "1.2\\1.3"],
    ids=["leading-zero", "empty-component", "trailing-dot", "letters", "65-chars", "space", "two-values"],
)
def test_invalid_required_uid_is_a_dataset_mismatch_not_echoing_the_value(keyword: str, bad: str) -> None:
    # Given an instance with an invalid value in one of the required UIDs
    ds = make_dataset()
    set_unchecked(ds, keyword, bad)
    # When it is read
    error = rejected(to_part10(ds))
    # Then it fails naming the attribute and the rule, without repeating the value
    assert error.failure.reason == FailureReason.DATASET_DOES_NOT_MATCH
    assert f"{keyword} is not a valid UID" in error.failure.message
    assert bad not in error.failure.message
    # And an invalid UID is never attached to the failure
    assert error.failure.sop_instance_uid in (None, SOP_INSTANCE)
    assert error.failure.sop_class_uid in (None, SOP_CLASS)


def test_failure_names_the_instance_when_its_uids_are_readable() -> None:
    # Given an instance with valid SOP UIDs but no Study Instance UID
    data = to_part10(make_dataset(omit=("StudyInstanceUID",)))
    # When it is read
    error = rejected(data)
    # Then the failure carries the SOP Class and SOP Instance UIDs (for the STOW response)
    assert error.failure.sop_class_uid == SOP_CLASS
    assert error.failure.sop_instance_uid == SOP_INSTANCE


def test_media_storage_sop_instance_uid_mismatch_is_rejected() -> None:
    # Given File Meta whose MediaStorageSOPInstanceUID differs from the data set's
    # (hand-built: pydicom's writer would copy SOPInstanceUID into the File Meta)
    other = "1.2.826.0.1.3680043.8.498.99999"
    data = part10_raw(meta_elements(sop_instance=other), body_of(make_dataset()))
    # When it is read
    error = rejected(data)
    # Then it fails naming both attributes
    assert error.failure.reason == FailureReason.DATASET_DOES_NOT_MATCH
    assert "MediaStorageSOPInstanceUID" in error.failure.message
    assert "SOPInstanceUID (0008,0018)" in error.failure.message
    assert error.failure.sop_instance_uid == SOP_INSTANCE


# --- transfer syntax and File Meta ------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    ["1.2.826.0.1.3680043.8.498.77777", "1.2.840.10008.1.2.4.9999", SOP_CLASS],
    ids=["private", "unknown-standard-root", "sop-class-not-ts"],
)
def test_unknown_transfer_syntax_is_not_supported(uid: str) -> None:
    # Given File Meta naming a valid UID that is not a transfer syntax pydicom knows
    data = part10_raw(meta_elements(transfer_syntax=uid), body_of(make_dataset()))
    # When it is read
    error = rejected(data)
    # Then it fails with "transfer syntax not supported", pointing at the standard ones
    assert error.failure.reason == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    assert "transfer syntax" in error.failure.message
    assert uid not in error.failure.message


@pytest.mark.parametrize(
    "value",
    ["not-a-uid", "1.2.840.10008.1.2.01", " 1.2.840.10008.1.2"],
    ids=["text", "leading-zero", "space"],
)
def test_transfer_syntax_that_is_not_a_uid_is_not_understood(value: str) -> None:
    # Given File Meta whose Transfer Syntax UID is not a valid UID
    data = part10_raw(meta_elements(transfer_syntax=value), body_of(make_dataset()))
    # When it is read
    error = rejected(data)
    # Then it is not understood
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "Transfer Syntax UID is not a valid UID" in error.failure.message


def test_file_meta_without_transfer_syntax_is_not_understood() -> None:
    # Given File Meta with every element except the Transfer Syntax UID
    data = part10_raw(meta_elements(transfer_syntax=None), body_of(make_dataset()))
    # When it is read
    error = rejected(data)
    # Then it is not understood and the message names (0002,0010)
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "Transfer Syntax UID (0002,0010)" in error.failure.message


def test_sample_file_meta_without_transfer_syntax_is_not_understood() -> None:
    # Given pydicom's sample with a File Meta that lacks the Transfer Syntax UID
    data = dicom_files.test_file("meta_missing_tsyntax.dcm").read_bytes()
    # When it is read
    error = rejected(data)
    # Then it is not understood
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(0002,0010)" in error.failure.message


def test_file_meta_element_with_an_unknown_vr_is_rejected() -> None:
    # Given File Meta with an element whose VR bytes are not a VR
    # (pydicom would switch to implicit VR and read the group differently)
    elements = [*meta_elements(), b"\x02\x00\x13\x00\x01\x02\x04\x00abcd"]
    data = part10_raw(elements, body_of(make_dataset()))
    # When it is read
    error = rejected(data)
    # Then the File Meta is refused, naming the element
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(0002,0013) has no valid explicit VR" in error.failure.message


def test_file_meta_element_with_undefined_length_is_rejected() -> None:
    # Given File Meta with an OB element of undefined length
    elements = [*meta_elements(), element(0x00020102, b"OB", length=UNDEFINED)]
    data = part10_raw(elements, body_of(make_dataset()))
    # When it is read
    error = rejected(data)
    # Then the File Meta is refused
    assert error.failure.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(0002,0102)" in error.failure.message


# --- every sample file ------------------------------------------------------------------------------


def _sample_id(path: Path) -> str:
    for prefix, root in (("pydicom", PYDICOM_TEST_FILES), ("pydicom-data", PYDICOM_DATA_FILES)):
        if path.is_relative_to(root):
            return f"{prefix}/{path.relative_to(root)}"
    return str(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", part10_files(), ids=_sample_id)
def test_every_sample_file_is_accepted_or_rejected_with_a_reason(path: Path) -> None:
    # Given a Part 10 file from the offline test collections
    data = path.read_bytes()
    # When it is read
    try:
        received = read_instance(data, limits=LIMITS)
    except InstanceRejected as exc:
        # Then a rejection carries a DICOM failure reason and a message (never another error)
        assert isinstance(exc.failure.reason, FailureReason)
        assert exc.failure.message
        return
    # Then an accepted file is stored as received, preamble zeroed, hashed correctly
    _assert_matches_pydicom(received, data)


def _assert_matches_pydicom(received: ReceivedInstance, data: bytes) -> None:
    assert received.data[:128] == bytes(128)
    assert received.data[128:] == data[128:]
    assert received.sha256 == hashlib.sha256(received.data).hexdigest()
    # And its UIDs are what pydicom reads
    expected = pydicom.dcmread(io.BytesIO(data))
    assert received.transfer_syntax_uid == expected.file_meta.TransferSyntaxUID
    assert received.sop_class_uid == expected.SOPClassUID
    assert received.sop_instance_uid == expected.SOPInstanceUID
    assert received.study_instance_uid == expected.StudyInstanceUID
    assert received.series_instance_uid == expected.SeriesInstanceUID
    assert received.modality == str(expected.get("Modality", "") or "")
    # And each level's JSON is valid DICOM JSON that round-trips through pydicom
    for level_json, uid_keyword, uid in (
        (received.study_json, "StudyInstanceUID", received.study_instance_uid),
        (received.series_json, "SeriesInstanceUID", received.series_instance_uid),
        (received.instance_json, "SOPInstanceUID", received.sop_instance_uid),
    ):
        text = json.dumps(level_json)
        assert Dataset.from_json(text).to_json_dict() == level_json
        assert Dataset.from_json(level_json)[uid_keyword].value == uid
