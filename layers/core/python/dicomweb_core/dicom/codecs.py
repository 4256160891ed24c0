"""Decoding pixel data with the imaging layer's codecs: for WADO-RS when a client asks for
uncompressed data (PS3.18 §8.7.3), and for rendering (§10.4.1.1.3).

The codecs (numpy and the pylibjpeg plugins, through pydicom's decoders) live in the
imaging layer; when they are missing, :func:`can_decode` is False and negotiation
answers 406 instead of failing later. When they are present but cannot decode a given
codestream (a 12-bit lossy JPEG the plugins do not support, a damaged codestream),
:class:`CannotDecode` is raised, which the retrieve and render services answer with 406 too.

Decoded pixels are what pydicom's own ``pixel_array(ds, raw=True)`` gives for the same
data, byte for byte: the frame decoder goes through the same array path, which also
applies pydicom's corrections (a JPEG 2000 codestream whose signedness disagrees with
Pixel Representation, JPEG-LS signed data, unused high bits). For display,
:func:`frame_array` gives what ``pixel_array(ds, index=...)`` gives (YBR as RGB), with
pydicom's description of the array.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian

# Attributes a frame decoder needs besides the codestream (tag → decoder option).
FRAME_ATTRIBUTES = {
    "00280010": "rows",
    "00280011": "columns",
    "00280002": "samples_per_pixel",
    "00280100": "bits_allocated",
    "00280101": "bits_stored",
    "00280103": "pixel_representation",
    "00280004": "photometric_interpretation",
    "00280006": "planar_configuration",
}


class CannotDecode(Exception):
    """The codecs are installed but could not decode this pixel data (the reason is the message)."""


@cache
def can_decode(transfer_syntax_uid: str) -> bool:
    try:
        from pydicom.pixels.decoders.base import get_decoder  # noqa: PLC0415 (needs the imaging layer)

        # pydicom has "decoders" for deflated and big endian native data too; those are
        # not decompression (the frames are not encapsulated) and are not produced here.
        if not UID(transfer_syntax_uid).is_compressed:
            return False
        return bool(get_decoder(UID(transfer_syntax_uid)).is_available)
    except (ImportError, NotImplementedError, KeyError, ValueError):
        return False


def decompress_instance(data: bytes) -> bytes:
    """The instance re-encoded as Explicit VR Little Endian with native pixel data.

    Raises :class:`CannotDecode` when the codecs cannot decode its pixel data.
    """
    dataset = pydicom.dcmread(io.BytesIO(data))
    _record_implicit_vr(dataset)
    try:
        dataset.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
    except MemoryError:
        raise
    except Exception as error:  # pydicom and the plugins raise RuntimeError, ValueError, ...
        raise CannotDecode(_reason(error)) from error
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _record_implicit_vr(dataset: Dataset) -> None:
    """Record that the data set was read as Implicit VR when its elements were.

    Some writers encode the data set in Implicit VR under an explicit transfer syntax
    (pydicom's SC_rgb_jpeg.dcm). pydicom reads it as implicit but records the transfer
    syntax's encoding, so writing it as Explicit VR would copy the raw elements, which have
    no VR (TypeError). With the encoding it was read in, the writer converts each element
    (VR from the dictionary, ambiguous VRs resolved).
    """
    is_implicit, is_little_endian = dataset.original_encoding
    if is_implicit is not False or is_little_endian is None:
        return
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset would convert every element)
        element = dataset.get_item(tag)
        if isinstance(element, RawDataElement) and element.is_implicit_VR:
            dataset.set_original_encoding(True, is_little_endian, dataset.original_character_set)
            return


def frame_options(metadata: dict[str, Any]) -> dict[str, Any]:
    """The decoder options of one frame, from the instance's DICOM JSON metadata."""
    options: dict[str, Any] = {"number_of_frames": 1}
    for tag, option in FRAME_ATTRIBUTES.items():
        values = metadata.get(tag, {}).get("Value") or []
        if values:
            options[option] = values[0]
    return options


def decoded_frame_length(metadata: dict[str, Any]) -> int:
    """Bytes of one decoded frame (as :func:`decode_frame` returns it), 0 when unknown."""
    options = frame_options(metadata)
    try:
        pixels = int(options["rows"]) * int(options["columns"]) * int(options.get("samples_per_pixel", 1))
        bits = int(options["bits_allocated"])
    except (KeyError, TypeError, ValueError):
        return 0
    return (pixels * bits + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)


def decode_frame(codestream: bytes, transfer_syntax_uid: str, metadata: dict[str, Any]) -> bytes:
    """One compressed frame as native pixel bytes, described by the instance's metadata.

    The bytes equal ``pixel_array(ds, index=..., raw=True).tobytes()`` of the whole data
    set: decoded as an array (not ``as_buffer``, which skips pydicom's sign and unused-bit
    corrections), multi-sample pixels interleaved (Planar Configuration 0), colour space
    as encoded. Raises :class:`CannotDecode` when the codecs cannot decode it.
    """
    from pydicom.pixels.decoders.base import get_decoder  # noqa: PLC0415 (needs the imaging layer)

    decoder = get_decoder(UID(transfer_syntax_uid))
    options = frame_options(metadata)
    try:
        # The decoder reads encapsulated pixel data: wrap the codestream as one fragment.
        array, _ = decoder.as_array(encapsulate([codestream]), index=0, raw=True, **options)
    except MemoryError:
        raise
    except Exception as error:  # pydicom and the plugins raise RuntimeError, ValueError, ...
        raise CannotDecode(_reason(error)) from error
    return bytes(array.tobytes())


def _reason(error: Exception) -> str:
    """The error's message on one line (pydicom lists each plugin's failure on its own line)."""
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------- frames as arrays (rendering)
# The Image Pixel module attributes a decoder reads (keyword → decoder option).
_PIXEL_KEYWORDS = {
    "Rows": "rows",
    "Columns": "columns",
    "SamplesPerPixel": "samples_per_pixel",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "PixelRepresentation": "pixel_representation",
    "PhotometricInterpretation": "photometric_interpretation",
    "PlanarConfiguration": "planar_configuration",
}


def pixel_options(dataset: Dataset) -> dict[str, Any]:
    """The decoder options of one frame, from a data set's Image Pixel module (PS3.3 C.7.6.3)."""
    options: dict[str, Any] = {"number_of_frames": 1, "pixel_keyword": "PixelData"}
    for keyword, option in _PIXEL_KEYWORDS.items():
        value = dataset.get(keyword)
        if value is not None:
            options[option] = value
    return options


def frame_array(frame: bytes, transfer_syntax_uid: str, dataset: Dataset) -> tuple[Any, dict[str, Any]]:
    """One frame as an array for display, with the pixel description of that array.

    ``frame`` is one frame as stored: native little-endian pixel bytes, or a compressed
    frame's codestream, which is decoded from itself alone. The array is what
    ``pixel_array(ds, index=...)`` gives: YBR colour converted to RGB, multi-sample
    pixels interleaved, signedness and unused bits corrected; the description (pydicom's
    ``pixel_properties``) says which photometric interpretation it is in. Raises
    :class:`CannotDecode` when the codecs cannot decode it.
    """
    from pydicom.pixels.decoders.base import get_decoder  # noqa: PLC0415 (needs the imaging layer)

    syntax = UID(transfer_syntax_uid)
    try:
        if syntax.is_compressed:
            # The decoder reads encapsulated pixel data: wrap the codestream as one fragment.
            return get_decoder(syntax).as_array(encapsulate([frame]), index=0, **pixel_options(dataset))
        return get_decoder(ExplicitVRLittleEndian).as_array(frame, index=0, **pixel_options(dataset))
    except MemoryError:
        raise
    except Exception as error:  # pydicom and the plugins raise RuntimeError, ValueError, ...
        raise CannotDecode(_reason(error)) from error


def dataset_frame_array(dataset: Dataset, index: int) -> tuple[Any, dict[str, Any]]:
    """Frame ``index`` (0-based) of a whole parsed instance, as :func:`frame_array` gives it:
    for instances without a frame index (deflated, big endian, bit-packed, unassignable
    fragments). Raises :class:`CannotDecode` when the codecs cannot decode it."""
    from pydicom.pixels.decoders.base import get_decoder  # noqa: PLC0415 (needs the imaging layer)

    try:
        return get_decoder(dataset.file_meta.TransferSyntaxUID).as_array(dataset, index=index)
    except MemoryError:
        raise
    except Exception as error:  # pydicom and the plugins raise RuntimeError, ValueError, ...
        raise CannotDecode(_reason(error)) from error
