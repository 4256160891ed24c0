"""An immutable, validated DICOMweb resource URI (PS3.18 §10.3, Table 10.3-2).

Every path is parsed once at the edge into a :class:`DicomWebURI`; the rest of the code
never handles raw path strings, and every UID in it has been validated (PS3.5 §9.1)
before it can become part of a storage or index key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from dicomweb_core.dicom.uid import validate_uid
from dicomweb_core.errors import BadRequest, NotFound


class ResourceType(Enum):
    ROOT = "root"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"
    FRAMES = "frames"


class Suffix(Enum):
    METADATA = "metadata"
    RENDERED = "rendered"
    THUMBNAIL = "thumbnail"
    BULKDATA = "bulkdata"


@dataclass(frozen=True, slots=True)
class DicomWebURI:
    base_url: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    frames: tuple[int, ...] | None = None
    suffix: Suffix | None = None

    def __post_init__(self) -> None:
        if self.series is not None and self.study is None:
            raise ValueError("a series URI needs a study")
        if self.instance is not None and self.series is None:
            raise ValueError("an instance URI needs a series")
        if self.frames is not None and self.instance is None:
            raise ValueError("a frames URI needs an instance")
        for name, value in (("Study", self.study), ("Series", self.series), ("SOP Instance", self.instance)):
            if value is not None:
                validate_uid(value, name=f"{name} UID in the path")
        if self.frames is not None and (not self.frames or any(f < 1 for f in self.frames)):
            raise BadRequest("Frame numbers are 1-based and the list must not be empty.")
        if self.frames is not None:
            _check_frame_count(len(self.frames))

    @property
    def resource_type(self) -> ResourceType:
        if self.frames is not None:
            return ResourceType.FRAMES
        if self.instance is not None:
            return ResourceType.INSTANCE
        if self.series is not None:
            return ResourceType.SERIES
        if self.study is not None:
            return ResourceType.STUDY
        return ResourceType.ROOT

    @property
    def path(self) -> str:
        parts = []
        if self.study is not None:
            parts += ["studies", self.study]
        if self.series is not None:
            parts += ["series", self.series]
        if self.instance is not None:
            parts += ["instances", self.instance]
        if self.frames is not None:
            parts += ["frames", ",".join(str(f) for f in self.frames)]
        if self.suffix is not None:
            parts.append(self.suffix.value)
        return "/" + "/".join(parts)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    @classmethod
    def from_path(cls, base_url: str, path: str) -> DicomWebURI:
        """Parse ``/studies/{s}[/series/{se}[/instances/{i}[/frames/{f}]]][/suffix]``."""
        segments = [s for s in path.split("/") if s]
        values: dict[str, str] = {}
        suffix = None
        if segments and segments[-1] in {s.value for s in Suffix}:
            suffix = Suffix(segments.pop())
        for name in ("studies", "series", "instances", "frames"):
            if not segments:
                break
            if segments[0] != name or len(segments) < 2:
                raise NotFound("The path is not a DICOMweb resource (PS3.18 Table 10.3-2).")
            values[name] = segments[1]
            segments = segments[2:]
        if segments or (suffix is not None and "studies" not in values):
            raise NotFound("The path is not a DICOMweb resource (PS3.18 Table 10.3-2).")
        frames = _parse_frames(values["frames"]) if "frames" in values else None
        return cls(
            base_url,
            study=values.get("studies"),
            series=values.get("series"),
            instance=values.get("instances"),
            frames=frames,
            suffix=suffix,
        )


_FRAME_NUMBER_RE = re.compile(r"[0-9]{1,10}")
# The most frame numbers one frame list may hold (PS3.18 §10.4.1.1.4 sets no limit). Viewers
# ask for one frame per request (OHIF and Cornerstone: ``/frames/1``; Slim: one tile), and
# dicomweb-client sends what its caller lists. A thousand numbers of up to five digits
# make a path of up to 6 KB, within the 8 KB URL that CloudFront carries, and a thousand
# parts fill one response (about 4.4 MB) with frames of only 4.4 KB each. Each listed number costs a part and
# a header in the answer, so the list is bounded before anything is read.
MAX_FRAMES_PER_REQUEST = 1000


def _check_frame_count(count: int) -> None:
    if count > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(
            f"A frame list holds at most {MAX_FRAMES_PER_REQUEST} frame numbers; this one has {count}. "
            "Ask for the frames in several requests."
        )


def _parse_frames(text: str) -> tuple[int, ...]:
    _check_frame_count(text.count(",") + 1)  # before splitting or matching the numbers
    # ASCII digits only: int() alone would also take "+1", " 1", "1_0" and non-ASCII digits.
    numbers = text.split(",")
    if not all(_FRAME_NUMBER_RE.fullmatch(number) for number in numbers):
        raise BadRequest("Frame lists are comma-separated 1-based numbers, e.g. 1,2,3.")
    return tuple(int(number) for number in numbers)
