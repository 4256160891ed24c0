"""Which frames a rendered resource shows, and which frame represents a resource as its thumbnail.

**Rendered** (PS3.18 §10.4.1.1.3). A single-image media type (``image/jpeg``,
``image/png``) shows one frame: the first listed frame of a frame list, frame 1 of an
instance, frame 1 of the first image instance of a series (by Instance Number) or study
(by Series Number, then Instance Number). ``image/gif`` is animated over every frame the
resource holds: the listed frames in the order listed, an instance's frames, the frames
of each image instance of a series or study in that order.

**Thumbnail** (§10.4.4; the server chooses the content). A frame list: its middle listed
frame. An instance: its middle frame. A series: the middle frame of its middle image
instance by Instance Number. A study: that of its series with the most image instances
(the first by Series Number on a tie).

An *image instance* is one whose index entry records Rows (the Image Pixel module), so
reports, key object selections and presentation states in a series are passed over.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from dicomweb_core.dicom.frames import FrameIndex
from dicomweb_core.errors import NotAcceptable
from dicomweb_core.index.keys import first_value
from dicomweb_core.index.models import InstanceItem
from dicomweb_core.web.uri import DicomWebURI

ROWS = "00280010"
NUMBER_OF_FRAMES = "00280008"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Frames:
    """Frames of one instance, by 1-based number, in the order they are shown."""

    item: InstanceItem
    numbers: tuple[int, ...]


def frame_count(item: InstanceItem) -> int:
    """The instance's number of frames: from its frame index, else Number of Frames (default 1)."""
    index = FrameIndex.from_document(item.frame_index)
    if index is not None:
        return len(index)
    value = first_value(json.loads(item.dicom_json), NUMBER_OF_FRAMES)
    try:
        return max(1, int(value)) if value is not None else 1
    except (TypeError, ValueError):
        return 1


def is_image(item: InstanceItem) -> bool:
    return first_value(json.loads(item.dicom_json), ROWS) is not None


def images_of(items: Sequence[InstanceItem]) -> list[InstanceItem]:
    """The image instances of a series or study, in order; 406 when there are none."""
    images = [i for i in items if is_image(i)]
    if not images:
        raise NotAcceptable(
            "Nothing here has pixel data (reports, key object selections or presentation states "
            "only), so there is no rendered representation; retrieve its metadata instead."
        )
    return images


def rendered(uri: DicomWebURI, items: Sequence[InstanceItem], *, animated: bool) -> list[Frames]:
    """The frames a rendered resource shows (see the module's description)."""
    if uri.instance is not None:
        (item,) = items
        if uri.frames is not None:
            return [Frames(item, uri.frames if animated else uri.frames[:1])]
        return [Frames(item, tuple(range(1, frame_count(item) + 1)) if animated else (1,))]
    images = images_of(items)
    if not animated:
        return [Frames(images[0], (1,))]
    return [Frames(i, tuple(range(1, frame_count(i) + 1))) for i in images]


def middle_frame(item: InstanceItem) -> int:
    return (frame_count(item) + 1) // 2


def middle_of(values: Sequence[T]) -> T:
    """The middle value (the earlier of the two middle ones of an even count)."""
    return values[(len(values) - 1) // 2]


def representative(uri: DicomWebURI, items: Sequence[InstanceItem]) -> Frames:
    """The frame that represents a series or study (``items`` in order) as a thumbnail."""
    images = images_of(items)
    if uri.series is None:  # a study: its series with the most image instances
        by_series: dict[str, list[InstanceItem]] = {}
        for item in images:
            by_series.setdefault(item.series_uid, []).append(item)
        images = max(by_series.values(), key=len)  # max keeps the first of equals
    item = middle_of(images)
    return Frames(item, (middle_frame(item),))
