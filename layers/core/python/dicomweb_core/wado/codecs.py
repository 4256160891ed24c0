"""Decompression for WADO-RS when a client asks for uncompressed data (PS3.18 §8.7.3).

The codecs (numpy and the pylibjpeg plugins, through pydicom's decoders) live in the
imaging layer; when they are missing, :func:`can_decode` is False and negotiation
answers 406 instead of failing later.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian

# Attributes a frame decoder needs besides the codestream (keyword → decoder option).
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
    """The instance re-encoded as Explicit VR Little Endian with native pixel data."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def decode_frame(codestream: bytes, transfer_syntax_uid: str, metadata: dict[str, Any]) -> bytes:
    """One compressed frame as native pixel bytes, described by the instance's metadata."""
    from pydicom.pixels.decoders.base import get_decoder  # noqa: PLC0415

    options: dict[str, Any] = {"number_of_frames": 1, "transfer_syntax_uid": UID(transfer_syntax_uid)}
    for tag, option in FRAME_ATTRIBUTES.items():
        values = metadata.get(tag, {}).get("Value") or []
        if values:
            options[option] = values[0]
    # The decoder reads encapsulated pixel data: wrap the codestream as one fragment.
    buffer, _ = get_decoder(UID(transfer_syntax_uid)).as_buffer(encapsulate([codestream]), **options)
    return bytes(buffer)
