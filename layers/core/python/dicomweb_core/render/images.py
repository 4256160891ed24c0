"""The viewport's region and size, and encoding with Pillow (PS3.18 §8.3.5.1.3, §8.7.4).

**Viewport.** The region runs from column ``sx``, row ``sy`` for ``|sw|`` columns and
``|sh|`` rows (to the image's edge when absent; clipped to the image); a negative ``sw``
flips it left to right, a negative ``sh`` top to bottom. The region is then scaled, up or
down, to the largest size that fits within ``vw`` by ``vh`` with its aspect ratio kept
(Lanczos resampling); nothing is padded, so the image may be narrower or shorter than
the viewport. A region that starts outside the image is 400.

**Media types** (§8.7.4 Rendered Media Types): ``image/jpeg`` (baseline, 4:2:0 for
colour, the request's ``quality``), ``image/png`` (lossless) and ``image/gif``. A GIF of
several frames is animated: one frame per image at the instance's Frame Time (20 ms to 1 s;
100 ms when absent; GIF counts in 10 ms steps), looping; colour frames get an adaptive
256-colour palette each.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from PIL import Image

from dicomweb_core.errors import BadRequest
from dicomweb_core.render.parameters import Viewport

DEFAULT_FRAME_MS = 100
MIN_FRAME_MS, MAX_FRAME_MS = 20, 1000


class RenderedType(StrEnum):
    """The rendered media types this server produces, the default first (PS3.18 §8.7.4)."""

    JPEG = "image/jpeg"
    PNG = "image/png"
    GIF = "image/gif"

    @property
    def extension(self) -> str:
        return self.value.removeprefix("image/")


def picture(pixels: np.ndarray, viewport: Viewport | None) -> Image.Image:
    """8-bit pixels (grey or RGB) as an image of the viewport's region and size."""
    image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    if viewport is None:
        return image
    columns, rows = image.size
    if viewport.sx >= columns or viewport.sy >= rows:
        raise BadRequest(
            f"viewport: the region starts at column {viewport.sx}, row {viewport.sy}, outside the "
            f"image of {columns} by {rows} pixels."
        )
    width = viewport.sw if viewport.sw is not None else columns - viewport.sx
    height = viewport.sh if viewport.sh is not None else rows - viewport.sy
    box = (
        viewport.sx,
        viewport.sy,
        min(columns, viewport.sx + abs(width)),
        min(rows, viewport.sy + abs(height)),
    )
    if box != (0, 0, columns, rows):
        image = image.crop(box)
    if width < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if height < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    size = fitted(image.size, (viewport.width, viewport.height))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def fitted(size: tuple[int, int], bounds: tuple[int, int]) -> tuple[int, int]:
    """The largest size within ``bounds`` with the aspect ratio of ``size`` (width, height)."""
    (width, height), (most_wide, most_high) = size, bounds
    scale = min(most_wide / width, most_high / height)
    return min(most_wide, max(1, round(width * scale))), min(most_high, max(1, round(height * scale)))


def encode(
    images: Sequence[Image.Image], media_type: RenderedType, *, quality: int, frame_ms: int | None = None
) -> bytes:
    """``images`` in ``media_type``: one image, or (GIF only) an animation of them all."""
    buffer = io.BytesIO()
    first = images[0]
    if media_type is RenderedType.JPEG:
        first.save(buffer, "JPEG", quality=quality)
    elif media_type is RenderedType.PNG:
        first.save(buffer, "PNG")
    else:
        frames = _same_canvas(images)
        duration = min(MAX_FRAME_MS, max(MIN_FRAME_MS, frame_ms or DEFAULT_FRAME_MS))
        frames[0].save(
            buffer, "GIF", save_all=len(frames) > 1, append_images=frames[1:], duration=duration, loop=0
        )
    return buffer.getvalue()


def _same_canvas(images: Sequence[Image.Image]) -> list[Image.Image]:
    """The frames of an animation in one mode and on the first frame's canvas: an image of
    another size is fitted into it, centred on black."""
    mode = "RGB" if any(i.mode == "RGB" for i in images) else "L"
    size = images[0].size
    frames = []
    for image in images:
        image = image.convert(mode)  # noqa: PLW2901 (a converted copy of the loop's image)
        if image.size != size:
            fitted_size = fitted(image.size, size)
            canvas = Image.new(mode, size)
            offset = ((size[0] - fitted_size[0]) // 2, (size[1] - fitted_size[1]) // 2)
            canvas.paste(image.resize(fitted_size, Image.Resampling.LANCZOS), offset)
            image = canvas  # noqa: PLW2901
        frames.append(image)
    return frames
