"""Every transfer syntax of the test corpus, retrieved through WADO-RS in each form it is asked for.

The matrix below is the one docs/conformance.md states ("Transfer syntaxes, stored and
served"): for each stored transfer syntax, whether frames, the instance and the Pixel Data
bulk data are served as Explicit VR Little Endian (PS3.18 §8.7.3: the default for
``application/octet-stream`` and ``application/dicom``) or refused with 406 naming what
would work. Frames and instances as stored are always served, and frames as HTJ2K
(``image/jphc``) are never produced. Every Part 10 file of pydicom's test files and of
pydicom-data that the ingest accepts and that has pixel data is stored (with fresh UIDs,
as several share theirs) and asked for frame 1, the instance and its Pixel Data; what is
served is checked pixel for pixel against what pydicom decodes from the original file.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomweb_core import config
from dicomweb_core.dicom.pixels import UNCOMPRESSED
from dicomweb_core.stow.service import StowService
from dicomweb_core.wado.prebuilt import RESPONSE_LIMIT
from infra.datasets.dicom_files import PYDICOM_DATA_FILES, PYDICOM_TEST_FILES, part10_files
from infra.datasets.generate import new_uid
from infra.samtemplate import load_template
from tests.integration.test_wado_service import Answer, split_multipart, transfer_syntax_of, wado_event
from tests.lambda_harness import LambdaContext, load_handler
from tests.moto_stack import moto_account, provisioned, stow_service

SERVED = "served"
REFUSED = "406"
AS_STORED_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
AS_STORED_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
LITTLE_ENDIAN_BULK = (
    f"multipart/related; type=application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
)
HTJ2K_FRAMES = 'multipart/related; type="image/jphc"'

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@dataclass(frozen=True)
class Row:
    """What is served as Explicit VR Little Endian for one stored transfer syntax."""

    frames: str  # /frames/1, default Accept
    instance: str  # the instance, default Accept
    bulk_data: str  # /bulkdata/7FE00010 with transfer-syntax=1.2.840.10008.1.2.1
    how: str  # how the little-endian form is made


# The matrix of docs/conformance.md, one row per transfer syntax the corpus holds.
MATRIX: dict[str, Row] = {
    "1.2.840.10008.1.2": Row(SERVED, SERVED, SERVED, "as is; instance re-encoded"),
    "1.2.840.10008.1.2.1": Row(SERVED, SERVED, SERVED, "as stored"),
    "1.2.840.10008.1.2.1.99": Row(REFUSED, REFUSED, REFUSED, "not offered (ask as stored)"),
    "1.2.840.10008.1.2.2": Row(SERVED, SERVED, SERVED, "byte-swapped per Bits Allocated"),
    "1.2.840.10008.1.2.4.50": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.4.51": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.4.70": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.4.80": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.4.81": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.4.90": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.4.91": Row(SERVED, SERVED, REFUSED, "decompressed"),
    "1.2.840.10008.1.2.5": Row(SERVED, SERVED, REFUSED, "decompressed"),
}
# Compressed files no codec decodes: refused where their syntax is decompressed.
UNDECODABLE: dict[str, str] = {
    "pydicom/JPEG-lossy.dcm": "12-bit lossy JPEG (process 4): no decoder plugin supports it",
    "pydicom/JPEG2000-embedded-sequence-delimiter.dcm": "a damaged JPEG 2000 codestream",
}
# Native files whose pixel data pydicom cannot read (served as stored bytes; nothing to compare).
UNREADABLE: dict[str, str] = {
    "pydicom/MR_truncated.dcm": "Pixel Data shorter than Rows x Columns x Bits Allocated",
}


# ---------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Stored:
    name: str
    data: bytes  # as stored (the original file with fresh UIDs)
    syntax: str
    url: str

    def dataset(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.data))


def _name(path: Path) -> str:
    for prefix, root in (("pydicom", PYDICOM_TEST_FILES), ("pydicom-data", PYDICOM_DATA_FILES)):
        if path.is_relative_to(root):
            return f"{prefix}/{path.relative_to(root)}"
    return str(path)


def _with_fresh_uids(path: Path) -> bytes | None:
    """The file with new study, series and instance UIDs and a zeroed preamble, else byte for
    byte as it was (the other elements stay raw, so they are written as read); None when
    pydicom cannot write it back."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path)
            if "PixelData" not in dataset or "TransferSyntaxUID" not in dataset.file_meta:
                return None
            sop = new_uid()
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = (
                new_uid(),
                new_uid(),
                sop,
            )
            dataset.file_meta.MediaStorageSOPInstanceUID = sop
            buffer = io.BytesIO()
            dataset.save_as(buffer)
    except Exception:  # a file pydicom reads but cannot write back unchanged
        return None
    return bytes(128) + buffer.getvalue()[128:]  # the store zeroes the preamble


@cache
def candidates() -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of every Part 10 file with pixel data, each with UIDs of its own."""
    found = []
    for path in part10_files():
        data = _with_fresh_uids(path)
        if data is not None:
            found.append((_name(path), data))
    return tuple(found)


@dataclass
class World:
    stored: dict[str, Stored]
    handler: ModuleType

    def get(self, path: str, accept: str | None = None) -> Answer:
        event = wado_event(path, {"Accept": accept} if accept else None)
        response = self.handler.handler(event, LambdaContext("WadoFunction"))
        self.handler.metrics.clear_metrics()
        body = response.get("body") or ""
        raw = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        return Answer(int(response["statusCode"]), dict(response.get("headers") or {}), raw)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with moto_account(), pytest.MonkeyPatch.context() as patch:
        stack, settings = provisioned()
        for name, value in stack.function_environment(load_template().functions()["WadoFunction"]).items():
            patch.setenv(name, value)
        patch.setenv("BUNDLE_WAIT_SECONDS", "0")  # over the limit: ordered, not waited for
        config.settings.cache_clear()
        stow: StowService = stow_service(settings)
        stored: dict[str, Stored] = {}
        for name, data in candidates():
            outcome = stow.store_all([memoryview(data)], study=None)
            if outcome.failures:  # the ingest refuses it (checked in test_stow_service)
                continue
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            url = f"{series}/instances/{ds.SOPInstanceUID}"
            stored[name] = Stored(name, data, str(ds.file_meta.TransferSyntaxUID), url)
        yield World(stored, load_handler("WadoFunction"))
        config.settings.cache_clear()


# ---------------------------------------------------------------------- references
def _decodable(data: bytes) -> bool:
    try:
        pixel_array(pydicom.dcmread(io.BytesIO(data)), index=0, raw=True)
    except Exception:  # no codec decodes it
        return False
    return True


def expected(name: str, syntax: str) -> Row:
    """The matrix cell for one file: its syntax's row; a compressed file that no codec
    decodes is refused where its syntax is decompressed."""
    row = MATRIX[syntax]
    if name in UNDECODABLE:
        return Row(REFUSED, REFUSED, row.bulk_data, UNDECODABLE[name])
    return row


def reference(ds: Dataset, *, frames: int | None) -> Any:
    """What pydicom decodes from the original file: frame 1, or every frame (colour space
    as encoded, samples interleaved)."""
    return pixel_array(ds, index=0 if frames == 1 else None, raw=True)


def read_little_endian(value: bytes, ds: Dataset, like: Any, count: int) -> Any:
    """``value`` read as little-endian pixel data of ``count`` frames, shaped ``like`` the reference.

    Decompressed pixels are the decoder's array (samples interleaved): its bytes. Native
    pixels are read by pydicom's own native decoder with the instance's attributes (planar
    configuration, unused bits and sign as stored)."""
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        return numpy.frombuffer(value, dtype=like.dtype.newbyteorder("<")).reshape(like.shape)
    options = {
        "rows": ds.Rows,
        "columns": ds.Columns,
        "samples_per_pixel": ds.get("SamplesPerPixel", 1),
        "bits_allocated": ds.BitsAllocated,
        "bits_stored": ds.BitsStored,
        "pixel_representation": ds.PixelRepresentation,
        "photometric_interpretation": ds.PhotometricInterpretation,
        "planar_configuration": ds.get("PlanarConfiguration", 0),
        "number_of_frames": count,
        "pixel_keyword": "PixelData",
    }
    array, _ = get_decoder(ExplicitVRLittleEndian).as_array(value, index=None, raw=True, **options)
    return array.reshape(like.shape)


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def native_size(ds: Dataset, frames: int) -> int:
    """Bytes of ``frames`` frames of the instance's pixels, native (PS3.5 §8.1.1)."""
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.BitsAllocated)
    return (bits * frames + 7) // 8


def _single_part(answer: Answer) -> tuple[str | None, bytes]:
    ((headers, body),) = split_multipart(answer.body, answer.content_type)
    return transfer_syntax_of(headers["content-type"]), body


def assert_refused_with_what_works(answer: Answer) -> None:
    assert answer.status == 406, (answer.status, answer.body[:300])
    message = answer.json()["message"]
    assert "transfer-syntax=*" in message, message


def assert_served_or_too_large(answer: Answer, size: int) -> bool:
    """True when ``answer`` is 200; an answer of ``size`` bytes over one response is a redirect
    instead (to its body, built when first asked for: test_bundles.py)."""
    if size > RESPONSE_LIMIT:
        assert answer.status == 303, (answer.status, answer.body[:300])
        return False
    assert answer.status == 200, (answer.status, answer.body[:300])
    return True


# ---------------------------------------------------------------------- the matrix
def test_the_matrix_covers_every_transfer_syntax_of_the_corpus(world: World) -> None:
    # Given every stored file with pixel data, Then each of their syntaxes has one row, and
    # every row a file (the doc's matrix states no syntax the corpus lacks)
    assert {s.syntax for s in world.stored.values()} == set(MATRIX)
    assert set(UNREADABLE) <= set(world.stored)
    # And the files listed as undecodable are exactly those pydicom's own codecs cannot decode
    compressed = [s for s in world.stored.values() if UID(s.syntax).is_compressed]
    assert {s.name for s in compressed if not _decodable(s.data)} == set(UNDECODABLE)


def _names() -> list[str]:
    return [name for name, _ in candidates()]


@pytest.mark.parametrize("name", _names())
def test_served_as_stored_and_as_the_matrix_says(world: World, name: str) -> None:
    if name not in world.stored:
        return  # not accepted by the ingest: nothing is retrievable
    entry = world.stored[name]
    original = entry.dataset()
    row = expected(name, entry.syntax)
    count = _frame_count(original)
    compare = name not in UNREADABLE

    # When the instance and frame 1 are asked for as stored, Then they are served as stored
    answer = world.get(entry.url, AS_STORED_INSTANCE)
    if assert_served_or_too_large(answer, len(entry.data)):
        assert _single_part(answer) == (entry.syntax, entry.data)
    answer = world.get(f"{entry.url}/frames/1", AS_STORED_FRAMES)
    assert answer.status in (200, 303, 413), (answer.status, answer.body[:300])
    if answer.status == 200:
        assert _single_part(answer)[0] == entry.syntax

    # When frame 1 is asked for with the default Accept (Explicit VR Little Endian)
    answer = world.get(f"{entry.url}/frames/1")
    # Then it is served pixel-exact, or refused with what would work, as the matrix says
    if row.frames == REFUSED:
        assert_refused_with_what_works(answer)
    else:
        if assert_served_or_too_large(answer, native_size(original, 1)):
            syntax, body = _single_part(answer)
            assert syntax == ExplicitVRLittleEndian
            if compare:
                first = reference(original, frames=1)
                assert numpy.array_equal(read_little_endian(body, original, first, 1), first)

    # When the instance is asked for with the default Accept
    answer = world.get(entry.url)
    # Then it is Explicit VR Little Endian with the same pixels, or refused, as the matrix says
    if row.instance == REFUSED:
        assert_refused_with_what_works(answer)
    else:
        if assert_served_or_too_large(answer, max(len(entry.data), native_size(original, count))):
            syntax, body = _single_part(answer)
            assert syntax == ExplicitVRLittleEndian
            returned = pydicom.dcmread(io.BytesIO(body))
            assert returned.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert returned.SOPInstanceUID == original.SOPInstanceUID
            if compare:
                assert numpy.array_equal(returned.pixel_array, original.pixel_array)

    # When its Pixel Data is asked for as bulk data in Explicit VR Little Endian
    answer = world.get(f"{entry.url}/bulkdata/7FE00010", LITTLE_ENDIAN_BULK)
    # Then the value holds every frame as pydicom reads them, or is refused (never decoded)
    if row.bulk_data == REFUSED:
        assert_refused_with_what_works(answer)
    else:
        if assert_served_or_too_large(answer, native_size(original, count)):
            syntax, value = _single_part(answer)
            assert syntax in UNCOMPRESSED
            if compare:
                everything = reference(original, frames=None)
                assert numpy.array_equal(read_little_endian(value, original, everything, count), everything)

    # When frame 1 is asked for as HTJ2K, Then it is refused: no HTJ2K encoder is offered
    answer = world.get(f"{entry.url}/frames/1", HTJ2K_FRAMES)
    assert_refused_with_what_works(answer)
