"""Tests for serving native big-endian data in little-endian byte order, and native frames cut exactly.

Explicit VR Big Endian instances (PS3.5 §A.3, retired but still sent by old modalities)
are served as Explicit VR Little Endian frames, bulk data and instances (PS3.18 §8.7.3)
by swapping each binary value's bytes (``dicom.endian``); frames of native pixel data
without a frame index are cut at their exact size (``pixels.native_frames``). Everything
is checked against what pydicom's own big-endian decoder reads from its bundled files.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits, pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomweb_core.dicom import endian
from dicomweb_core.dicom.pixels import element_value, frames_from_object, transcode
from infra.datasets.dicom_files import PYDICOM_TEST_FILES
from infra.datasets.generate import make_dataset, to_part10

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def big_endian_files() -> list[Path]:
    """pydicom's bundled Explicit VR Big Endian files with pixel data (MR_small_bigendian.dcm,
    the *_expb*.dcm family: 1, 8, 16 and 32 bits allocated, OB and OW, one and more frames)."""
    found = []
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # not a readable Part 10 file
                continue
        if ds.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian and "Rows" in ds:
            found.append(path)
    return found


def read_little_endian(frame: bytes, ds: Dataset) -> numpy.ndarray:
    """One Explicit VR Little Endian frame read by pydicom's native decoder, with ``ds``'s attributes."""
    options = {
        "rows": ds.Rows,
        "columns": ds.Columns,
        "samples_per_pixel": ds.SamplesPerPixel,
        "bits_allocated": ds.BitsAllocated,
        "bits_stored": ds.BitsStored,
        "pixel_representation": ds.PixelRepresentation,
        "photometric_interpretation": ds.PhotometricInterpretation,
        "planar_configuration": ds.get("PlanarConfiguration", 0),
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    array, _ = get_decoder(ExplicitVRLittleEndian).as_array(frame, index=0, **options)
    return array


# ---------------------------------------------------------------------- swapping
@pytest.mark.parametrize(
    ("value", "unit", "swapped"),
    [
        (b"\x01\x02\x03\x04", 1, b"\x01\x02\x03\x04"),
        (b"\x01\x02\x03\x04", 2, b"\x02\x01\x04\x03"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08", 4, b"\x04\x03\x02\x01\x08\x07\x06\x05"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08", 8, b"\x08\x07\x06\x05\x04\x03\x02\x01"),
        (b"\x01\x02\x03", 2, b"\x02\x01\x03"),  # a malformed odd length: the last byte as is
        (b"", 2, b""),
    ],
    ids=["bytes", "words", "quads", "octets", "trailing-byte", "empty"],
)
def test_each_unit_has_its_bytes_reversed(value: bytes, unit: int, swapped: bytes) -> None:
    assert endian.swapped(value, unit) == swapped


@pytest.mark.parametrize(
    ("bits_allocated", "vr", "unit"),
    [
        (16, "OW", 2),
        (16, "OB", 2),
        (32, "OW", 4),
        (32, "OB", 4),
        (64, "OV", 8),
        (8, "OW", 2),
        (8, "OB", 1),
        (1, "OB", 1),
        (1, "OW", 1),
    ],
)
def test_pixel_data_is_swapped_per_sample_as_pydicom_reads_it(
    bits_allocated: int, vr: str, unit: int
) -> None:
    # Given Pixel Data of a bit depth and VR, Then its bytes are swapped per sample; 8-bit
    # samples in OW words per word (PS3.5 §8.1.1); bit-packed data not at all
    assert endian.pixel_unit(bits_allocated, vr) == unit


# ---------------------------------------------------------------------- frames
@pytest.mark.parametrize("path", big_endian_files(), ids=lambda p: p.name)
def test_big_endian_frames_come_little_endian_pixel_exact(path: Path) -> None:
    # Given a bundled big-endian file and every frame as pydicom's big-endian decoder reads it
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames") or 1)
    numbers = list(range(1, count + 1))
    # When its frames are cut from the object as Explicit VR Little Endian
    frames = frames_from_object(data, numbers, little_endian=True)
    # Then each frame read as little endian is pixel for pixel pydicom's frame of the original
    for number, frame in zip(numbers, frames, strict=True):
        assert numpy.array_equal(read_little_endian(frame, ds), pixel_array(ds, index=number - 1))
    # And asked for as stored, the frames are the big-endian bytes, not swapped
    stored = frames_from_object(data, numbers)
    assert b"".join(stored) == bytes(ds.PixelData)[: len(b"".join(stored))]


def test_bit_packed_frames_that_share_bytes_are_cut_at_their_first_bit() -> None:
    # Given a 1-bit instance of three 3x3 frames: 27 bits in all, frames 2 and 3 start mid-byte
    rng = numpy.random.default_rng(7)
    masks = rng.integers(0, 2, size=(3, 3, 3), dtype=numpy.uint8)
    ds = make_dataset(rows=3, columns=3, NumberOfFrames=3)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelData = pack_bits(masks)
    data = to_part10(ds)
    # When each frame is cut from the object
    frames = frames_from_object(data, [1, 2, 3])
    # Then each holds its own 9 bits from bit 0, as a single-frame instance would pack them
    assert frames == [pack_bits(masks[k]) for k in range(3)]
    # And pydicom reads each as the original frame
    parsed = pydicom.dcmread(io.BytesIO(data))
    for k, frame in enumerate(frames):
        assert numpy.array_equal(read_little_endian(frame, parsed), masks[k])


def test_the_padding_byte_of_an_odd_length_value_is_no_part_of_a_frame() -> None:
    # Given a single-frame 8-bit RGB instance of 3x3 pixels (27 bytes, stored padded to 28)
    ds = make_dataset(rows=3, columns=3)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(range(27)) + b"\0"
    # When frame 1 is cut from the object, Then it is the 27 bytes of the pixels
    assert frames_from_object(to_part10(ds), [1]) == [bytes(range(27))]


# ---------------------------------------------------------------------- instances and values
def big_endian_instance() -> tuple[bytes, Dataset]:
    """A big-endian instance with OW, OF and OB values at the top level and in sequence items
    (an Icon Image Sequence item with 8-bit Pixel Data of its own), and the same data set
    as a little-endian writer would hold it."""
    little = make_dataset(rows=2, columns=2)
    little.BitsAllocated, little.BitsStored, little.HighBit = 16, 16, 15
    little.PixelData = numpy.array([[1, 258], [515, 772]], dtype="<u2").tobytes()
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, 2, 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.add_new(0x7FE00010, "OW", bytes([10, 20]))
    little.IconImageSequence = Sequence([icon])
    little.add_new(0x00091010, "OF", numpy.array([1.5, -2.25], dtype="<f4").tobytes())
    little.add_new(0x00091011, "OB", b"\x01\x02\x03\x04")
    lut = Dataset()
    lut.LUTDescriptor = [2, 0, 16]
    lut.add_new(0x00283006, "OW", numpy.array([7, 65000], dtype="<u2").tobytes())
    little.VOILUTSequence = Sequence([lut])

    big = pydicom.dcmread(io.BytesIO(to_part10(little)))
    for element in big.iterall():  # binary values in big-endian order, as a big-endian writer holds them
        if element.VR in ("OW", "OF", "OB") and isinstance(element.value, bytes):
            unit = {"OW": 2, "OF": 4, "OB": 1}[element.VR]
            element.value = endian.swapped(element.value, unit)  # 8-bit OW words too (PS3.5 §8.1.1)
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, big, enforce_file_format=True)
    return buffer.getvalue(), little


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_big_endian_instance_becomes_little_endian_value_for_value(syntax: str) -> None:
    # Given a big-endian instance, and the same data set as a little-endian writer holds it
    data, little = big_endian_instance()
    assert pydicom.dcmread(io.BytesIO(data)).original_encoding == (False, False)
    # When it is re-encoded in a little-endian syntax
    returned = pydicom.dcmread(io.BytesIO(transcode(data, syntax)))
    # Then it is in that syntax, and every value is the little-endian one, nested ones too
    assert returned.file_meta.TransferSyntaxUID == syntax
    assert returned.PixelData == little.PixelData
    assert returned.IconImageSequence[0].PixelData == little.IconImageSequence[0].PixelData
    assert returned[0x00091010].value == little[0x00091010].value
    assert returned[0x00091011].value == little[0x00091011].value
    assert returned.VOILUTSequence[0].LUTData == little.VOILUTSequence[0].LUTData
    assert returned.VOILUTSequence[0].LUTDescriptor == [2, 0, 16]
    assert returned.Rows == 2 and returned.BitsAllocated == 16
    assert numpy.array_equal(returned.pixel_array, [[1, 258], [515, 772]])


def test_transcoding_into_big_endian_is_refused() -> None:
    data, _ = big_endian_instance()
    with pytest.raises(ValueError, match="not a native little-endian"):
        transcode(data, ExplicitVRBigEndian)


def test_bulk_data_values_are_swapped_by_their_own_vr_and_bits() -> None:
    # Given a big-endian instance
    data, little = big_endian_instance()
    # When its values are asked for as little endian, Then each is swapped by its VR or samples
    assert element_value(data, "7FE00010", little_endian=True) == little.PixelData
    assert element_value(data, "00880200.0.7FE00010", little_endian=True) == bytes([10, 20])
    assert element_value(data, "00091010", little_endian=True) == little[0x00091010].value
    assert element_value(data, "00091011", little_endian=True) == b"\x01\x02\x03\x04"
    # And as stored they are the big-endian bytes
    assert element_value(data, "7FE00010") == endian.swapped(little.PixelData, 2)
