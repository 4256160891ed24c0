"""Explicit VR Big Endian data in little-endian byte order, without a codec.

Explicit VR Big Endian (1.2.840.10008.1.2.2, retired, PS3.5 §A.3) stores every multi-byte
value most significant byte first. Numbers (US, SL, FD, AT, ...) are decoded by pydicom and
written again in whatever byte order the output syntax has; binary values (OB, OW, OF,
OD, OL, OV) are copied as bytes, so they are swapped here, each by the size of its unit
(PS3.5 §7.3):

- OW by 2-byte words, OF and OL by 4 bytes, OD and OV by 8; OB is a byte stream (as is);
- Pixel Data by the size of one sample, as pydicom's own big-endian decoder reads it:
  Bits Allocated 16, 32 or 64 by 2, 4 or 8 bytes, whatever its VR (some writers label
  16-bit samples OB); Bits Allocated 8 by 2-byte words when the value is OW (PS3.5 §8.1.1:
  8-bit samples in OW words are swapped in pairs), else as is; Bits Allocated 1 as is
  (bit-packed frames are a bit stream).

UN values keep their bytes: their structure is unknown (pydicom turns a UN of a public
element into its dictionary VR when it reads it, and that one is then converted). WADO-RS
uses this to serve big-endian frames, bulk data and instances as Explicit (or Implicit)
VR Little Endian (PS3.18 §8.7.3), and :mod:`~dicomweb_core.dicom.pixels` to slice frames.
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

PIXEL_DATA = Tag(0x7FE0, 0x0010)
# Bytes per unit of each binary VR (PS3.5 Table 6.2-1); OB and UN are byte streams.
UNIT_OF_VR = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def is_big_endian(dataset: Dataset) -> bool:
    """Whether ``dataset`` was read from big-endian data (PS3.5 §A.3)."""
    return dataset.original_encoding[1] is False


def pixel_unit(bits_allocated: int, vr: str) -> int:
    """Bytes swapped together in big-endian Pixel Data of ``bits_allocated`` bits per sample."""
    if bits_allocated >= 16 and bits_allocated % 8 == 0:
        return bits_allocated // 8
    if bits_allocated == 8 and vr == "OW":
        return 2
    return 1


def unit_of(element: DataElement, owner: Dataset) -> int:
    """Bytes swapped together in ``element``'s value; ``owner`` is the data set holding it
    (an Icon Image Sequence item has Pixel Data and Bits Allocated of its own)."""
    if element.tag == PIXEL_DATA:
        return pixel_unit(int(owner.get("BitsAllocated") or 0), element.VR)
    return UNIT_OF_VR.get(element.VR, 1)


def swapped(value: bytes, unit: int) -> bytes:
    """``value`` with the bytes of each ``unit``-byte group reversed; a trailing partial
    group (a malformed length) is kept as is."""
    if unit <= 1 or len(value) < unit:
        return bytes(value)
    whole = len(value) - len(value) % unit
    out = bytearray(value)
    for k in range(unit):
        out[k:whole:unit] = value[unit - 1 - k : whole : unit]
    return bytes(out)


def to_little_endian(dataset: Dataset) -> None:
    """Swap, in place, every binary value of a data set read from big-endian data (items of
    sequences included), so that writing it in a little-endian syntax is faithful. Pixel
    Data of more than 8 bits per sample becomes OW, as the little-endian syntaxes have it."""
    for element in dataset:  # iterating converts raw elements, decoding numbers in their order
        if element.VR == "SQ":
            for item in element.value:
                to_little_endian(item)
        elif isinstance(element.value, bytes | bytearray) and element.VR in (*UNIT_OF_VR, "OB"):
            element.value = swapped(bytes(element.value), unit_of(element, dataset))
            if element.tag == PIXEL_DATA and int(dataset.get("BitsAllocated") or 0) > 8:
                element.VR = "OW"
