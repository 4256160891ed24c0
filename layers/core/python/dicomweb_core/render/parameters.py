"""The rendered query parameters (PS3.18 §8.3.5.1), parsed once and validated on construction.

- ``quality=q``: 1 to 100, for the lossy ``image/jpeg`` only (ignored for PNG and GIF);
  default 90.
- ``viewport=vw,vh`` or ``viewport=vw,vh,sx,sy,sw,sh`` (§8.3.5.1.3): the region of the
  source image from column ``sx``, row ``sy`` (default 0), ``sw`` columns and ``sh`` rows
  wide (default: to the image's edge; negative flips the region), scaled to fit within
  ``vw`` by ``vh`` pixels with its aspect ratio kept. Each of ``vw`` and ``vh`` is 1 to
  4096; ``sx``, ``sy``, ``sw``, ``sh`` may each be empty (their default).
- ``window=center,width[,function]`` (§8.3.5.1.4, PS3.3 C.11.2.1.2): the VOI window,
  ``function`` one of ``linear`` (the default), ``linear-exact``, ``sigmoid``. The width
  is at least 1 for ``linear`` and above 0 for the others.
- ``annotation`` (§8.3.5.1.1) is refused: this server burns no text into images.

Anything malformed is 400 with a message that says what is allowed. Other parameters
(``charset``, ``iccprofile``...) are ignored; ``accept`` is content negotiation's.
Thumbnails (§10.4.4) take ``viewport`` and ``quality`` only: their content is the
server's choice, so ``window`` and ``annotation`` are ignored there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from dicomweb_core.errors import BadRequest

MAX_VIEWPORT = 4096  # pixels on each side of a rendered image
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128  # a thumbnail fits in 128 by 128 unless its viewport says otherwise

_INTEGER = re.compile(r"-?[0-9]{1,9}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,3})?")
_MAX_SOURCE = 1 << 16  # Rows and Columns are US: no region is larger


class WindowFunction(StrEnum):
    """The VOI LUT functions of PS3.3 C.11.2.1.3, by their PS3.18 query names."""

    LINEAR = "linear"
    LINEAR_EXACT = "linear-exact"
    SIGMOID = "sigmoid"

    @property
    def dicom(self) -> str:
        """The VOI LUT Function (0028,1056) value."""
        return self.value.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and function."""

    center: float
    width: float
    function: WindowFunction = WindowFunction.LINEAR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise BadRequest("window: center and width must be finite numbers.")
        if self.function is WindowFunction.LINEAR and self.width < 1:
            raise BadRequest(
                f"window: the width must be at least 1 for the linear function (PS3.3 C.11.2.1.2.1); "
                f"got {self.width:g}."
            )
        if self.width <= 0:
            raise BadRequest(f"window: the width must be greater than 0; got {self.width:g}.")


@dataclass(frozen=True, slots=True)
class Viewport:
    """The rendered size and the source region (PS3.18 §8.3.5.1.3)."""

    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None  # None: to the right edge; negative: flipped horizontally
    sh: int | None = None  # None: to the bottom edge; negative: flipped vertically

    def __post_init__(self) -> None:
        for name, value in (("vw", self.width), ("vh", self.height)):
            if not 1 <= value <= MAX_VIEWPORT:
                raise BadRequest(f"viewport: {name} must be 1 to {MAX_VIEWPORT} pixels; got {value}.")
        for name, offset in (("sx", self.sx), ("sy", self.sy)):
            if not 0 <= offset < _MAX_SOURCE:
                raise BadRequest(f"viewport: {name} must be 0 or a positive pixel offset; got {offset}.")
        for name, extent in (("sw", self.sw), ("sh", self.sh)):
            if extent is not None and not 0 < abs(extent) <= _MAX_SOURCE:
                raise BadRequest(f"viewport: {name} must be a non-zero number of pixels; got {extent}.")

    @property
    def tag(self) -> str:
        """A canonical name of the viewport (for cache keys and validators)."""
        tag = f"{self.width}x{self.height}"
        if (self.sx, self.sy, self.sw, self.sh) != (0, 0, None, None):
            tag += f"+{self.sx},{self.sy},{self.sw or ''},{self.sh or ''}"
        return tag


@dataclass(frozen=True, slots=True)
class RenderParameters:
    """What a rendered or thumbnail request asks for besides the media type."""

    quality: int = DEFAULT_QUALITY
    viewport: Viewport | None = None
    window: Window | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise BadRequest(f"quality must be 1 to 100; got {self.quality}.")

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, thumbnail: bool = False) -> RenderParameters:
        """The parameters of a request's query (PS3.18 §8.3.5.1); 400 when malformed."""
        if not thumbnail and "annotation" in query:
            raise BadRequest(
                "annotation is not supported: this server burns no patient or technique text into "
                "rendered images (PS3.18 §8.3.5.1.1); ask without it."
            )
        quality = _integer(query["quality"], "quality") if "quality" in query else DEFAULT_QUALITY
        viewport = _viewport(query["viewport"]) if "viewport" in query else None
        if thumbnail:
            return cls(quality, viewport or Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        window = _window(query["window"]) if "window" in query else None
        return cls(quality, viewport, window)

    @property
    def tag(self) -> str:
        """A canonical name of the parameters (for cache keys and validators)."""
        parts = [f"q{self.quality}"]
        if self.viewport is not None:
            parts.append(self.viewport.tag)
        if self.window is not None:
            w = self.window
            parts.append(f"w{w.center!r},{w.width!r},{w.function.value}")
        return "-".join(parts)


def _integer(text: str, name: str) -> int:
    if not _INTEGER.fullmatch(text.strip()):
        raise BadRequest(f"{name} must be an integer; got {text[:40]!r}.")
    return int(text)


def _decimal(text: str, name: str) -> float:
    if not _DECIMAL.fullmatch(text.strip()):
        raise BadRequest(f"window: {name} must be a decimal number; got {text[:40]!r}.")
    return float(text)


def _viewport(text: str) -> Viewport:
    values = text.split(",")
    if len(values) not in (2, 6):
        raise BadRequest(
            "viewport is vw,vh or vw,vh,sx,sy,sw,sh (PS3.18 §8.3.5.1.3), e.g. viewport=512,512 or "
            f"viewport=256,256,0,0,512,512; got {len(values)} value(s)."
        )
    width, height = (_integer(v, name) for v, name in zip(values[:2], ("vw", "vh"), strict=True))
    if len(values) == 2:
        return Viewport(width, height)
    sx, sy, sw, sh = (
        _integer(v, name) if v.strip() else None
        for v, name in zip(values[2:], ("sx", "sy", "sw", "sh"), strict=True)
    )
    return Viewport(width, height, sx or 0, sy or 0, sw, sh)


def _window(text: str) -> Window:
    values = text.split(",")
    if len(values) not in (2, 3):
        raise BadRequest(
            "window is center,width[,function] (PS3.18 §8.3.5.1.4), e.g. window=40,400,linear; "
            f"got {len(values)} value(s)."
        )
    center = _decimal(values[0], "center")
    width = _decimal(values[1], "width")
    name = values[2].strip().lower() if len(values) == 3 else WindowFunction.LINEAR.value
    try:
        function = WindowFunction(name)
    except ValueError:
        allowed = ", ".join(f.value for f in WindowFunction)
        raise BadRequest(f"window: the function must be one of {allowed}; got {name[:40]!r}.") from None
    return Window(center, width, function)
