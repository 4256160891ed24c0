"""Frame answers that cannot fit one function response, refused before any read.

A frames retrieval (PS3.18 §10.4.1.1.4) sends one part per number listed, repeats
included. The frame index gives each stored frame's size and the metadata document the
decoded size, so an answer over the limit (about 4.4 MB) is ``413`` with what to ask
instead before a byte is read or decoded (docs/conformance.md, "Frames").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomweb_core.dicom import codecs
from dicomweb_core.dicom.frames import FrameIndex
from dicomweb_core.errors import PayloadTooLarge
from dicomweb_core.wado.prebuilt import RESPONSE_LIMIT

FEWER_FRAMES = "The requested frames are too large for one response; ask for fewer frames at a time."


def check_frames_fit(index: FrameIndex, numbers: Sequence[int], metadata: dict[str, Any] | None) -> None:
    """Refuse (413), from the frame index, an answer of ``numbers`` (repeats included) that one
    response cannot carry: as stored, or decompressed when ``metadata`` describes the pixels."""
    if metadata is not None:
        largest = max(index.frame_size(n) for n in numbers)
        check_decoded_fit(metadata, len(numbers), largest_stored=largest)
    elif sum(index.frame_size(n) for n in numbers) > RESPONSE_LIMIT:
        raise PayloadTooLarge(FEWER_FRAMES)


def check_decoded_fit(metadata: dict[str, Any], parts: int, *, largest_stored: int) -> None:
    """Refuse (413) ``parts`` decompressed frames that one response cannot carry; the hint
    depends on whether the largest frame would fit as stored (``largest_stored`` bytes)."""
    length = codecs.decoded_frame_length(metadata)
    if length > RESPONSE_LIMIT:
        instead = (
            "ask for it as stored (transfer-syntax=*) and decode it in the client"
            if largest_stored <= RESPONSE_LIMIT
            else "retrieve the instance as stored (transfer-syntax=*)"
        )
        raise PayloadTooLarge(
            f"A frame of this instance is {length / 1e6:.1f} MB decompressed, more than one "
            f"response can carry; {instead}."
        )
    if length * parts > RESPONSE_LIMIT:
        raise PayloadTooLarge(
            f"The requested frames are {length * parts / 1e6:.1f} MB decompressed, more than "
            "one response can carry; ask for fewer frames at a time."
        )
