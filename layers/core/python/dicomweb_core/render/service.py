"""Rendered resources and thumbnails (PS3.18 §10.4.1.1.3, §10.4.4): from a parsed request to a Reply.

The service knows no web framework: the handler parses the request into a
:class:`Request` and maps the :class:`~dicomweb_core.web.reply.Reply`.

- **Media types** (§8.7.4): ``image/jpeg`` (the default, also for ``*/*`` and
  ``image/*``), ``image/png``, ``image/gif``, negotiated from ``Accept`` or the ``accept``
  query parameter (§8.3.3.1); anything else is 406 listing the three.
- **What is shown** and which frame represents a resource: ``selection``. The pixels go
  through ``pipeline`` and ``images``; they are read and decoded by ``dicom.pixels``, one
  frame from its own bytes.
- **Thumbnails** are rendered once per content version and kept in S3 (``thumbnails``);
  later requests read them back without decoding anything.
- **Validators and caching** (RFC 9110 §13.1.2, RFC 9111): every answer has an ETag of
  what it shows and how; a matching ``If-None-Match`` is 304 before any pixel is read.
  Instance and frame images are ``private, max-age=31536000, immutable`` (they change only
  with the instance's checksum, as WADO-RS frames); series and study images are
  ``private, no-cache`` (a series grows). Private: burned-in text may hold PHI.

**Bounds** (never a 5xx, bounded time and memory): an animation holds at most
:data:`MAX_ANIMATION_FRAMES` frames and :data:`MAX_ANIMATION_PIXELS` pixels (413 saying
what to ask instead); a source frame of more than :data:`MAX_FRAME_PIXELS` samples and an
instance without a frame index larger than :data:`MAX_WHOLE_OBJECT` (read whole) are 413;
a frame past the last is 400, as in WADO-RS; pixel data the codecs cannot decode, an
instance without pixel data (an SR) and an unsupported photometric interpretation are 406.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomweb_core.dicom import codecs, pixels
from dicomweb_core.dicom.pixels import InstancePixels
from dicomweb_core.errors import NotAcceptable, PayloadTooLarge
from dicomweb_core.index.access import Index
from dicomweb_core.index.keys import first_value
from dicomweb_core.index.models import InstanceItem
from dicomweb_core.observability import MetricUnit, metrics
from dicomweb_core.render import pipeline, selection
from dicomweb_core.render.images import RenderedType, encode, picture
from dicomweb_core.render.parameters import RenderParameters
from dicomweb_core.render.selection import Frames
from dicomweb_core.render.thumbnails import ThumbnailStore, thumbnail_key
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado.replies import IMMUTABLE, REVALIDATE, etag_matches, not_modified, ok_reply
from dicomweb_core.web.mediatype import MediaType
from dicomweb_core.web.negotiation import negotiate
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

OFFERS = tuple(MediaType(t.value) for t in RenderedType)
MAX_ANIMATION_FRAMES = 100  # frames of one animated GIF
MAX_ANIMATION_PIXELS = 50_000_000  # pixels of all frames of one answer, as rendered
MAX_FRAME_PIXELS = 25_000_000  # samples of one source frame (a 4096 x 5625 mammogram is 23 M)
MAX_WHOLE_OBJECT = 256 * 1024 * 1024  # bytes of an instance read whole (no frame index)
ROWS, COLUMNS = "00280010", "00280011"


@dataclass(frozen=True, slots=True)
class Request:
    """A rendered or thumbnail request as the handler parsed it."""

    uri: DicomWebURI
    accept: str | None
    query: dict[str, str]  # rendered parameters (PS3.18 §8.3.5.1) and ``accept=``
    if_none_match: str | None


class RenderService:
    """The rendered and thumbnail resources of the primary store."""

    def __init__(
        self, *, reader: ObjectReader, thumbnails: ThumbnailStore, index: Index | None = None
    ) -> None:
        self.reader = reader
        self.thumbnails = thumbnails
        self.index = index if index is not None else Index()

    # ------------------------------------------------------------------ rendered
    def rendered(self, request: Request) -> Reply:
        """A study, series, instance or frame list rendered (PS3.18 §10.4.1.1.3)."""
        media_type = _negotiate(request)
        parameters = RenderParameters.from_query(request.query)
        uri = request.uri
        shown = selection.rendered(uri, self.index.instances(uri), animated=media_type is RenderedType.GIF)
        etag = _etag(
            *(f"{f.item.sha256}:{','.join(map(str, f.numbers))}" for f in shown),
            uri.path,
            parameters.tag,
            media_type.value,
        )
        if etag_matches(request.if_none_match, etag):
            return not_modified(etag)
        body = self._render(shown, parameters, media_type)
        cache = IMMUTABLE if uri.instance is not None else REVALIDATE
        return ok_reply(body, media_type.value, cache=cache, etag=etag)

    # ------------------------------------------------------------------ thumbnail
    def thumbnail(self, request: Request) -> Reply:
        """A study's, series', instance's or frame's thumbnail (PS3.18 §10.4.4), rendered once
        per content version and then read from S3."""
        media_type = _negotiate(request)
        parameters = RenderParameters.from_query(request.query, thumbnail=True)
        uri = request.uri
        assert uri.study is not None
        shown: Frames | None = None
        if uri.instance is not None:
            (item,) = self.index.instances(uri)
            number = selection.middle_of(uri.frames) if uri.frames else selection.middle_frame(item)
            shown, version = Frames(item, (number,)), item.sha256
        elif uri.series is not None:
            version = self.index.series(uri.study, uri.series).version
        else:
            version = self.index.study(uri.study).version
        frame = shown.numbers[0] if shown is not None and uri.frames else None
        key = thumbnail_key(uri, version, parameters, media_type, frame=frame)
        etag = _etag(key)
        cache = IMMUTABLE if uri.instance is not None else REVALIDATE
        if etag_matches(request.if_none_match, etag):
            return not_modified(etag)
        kept = self.thumbnails.get(key)
        if kept is not None:
            metrics.add_metric("ThumbnailsKept", MetricUnit.Count, 1)
            return ok_reply(kept, media_type.value, cache=cache, etag=etag)
        if shown is None:
            shown = selection.representative(uri, self.index.instances(uri))
        body = self._render([shown], parameters, media_type)
        self.thumbnails.put(key, body, media_type)
        metrics.add_metric("ThumbnailsRendered", MetricUnit.Count, 1)
        return ok_reply(body, media_type.value, cache=cache, etag=etag)

    # ------------------------------------------------------------------ rendering
    def _render(
        self, shown: Sequence[Frames], parameters: RenderParameters, media_type: RenderedType
    ) -> bytes:
        """The frames rendered and encoded, within the bounds above."""
        count = sum(len(f.numbers) for f in shown)
        if count > MAX_ANIMATION_FRAMES:
            raise PayloadTooLarge(
                f"An animation of {count} frames is too long: at most {MAX_ANIMATION_FRAMES} frames are "
                "rendered in one answer. Ask for fewer frames (.../frames/1,2,3/rendered), for one "
                "instance, or for image/jpeg (one frame)."
            )
        pictures: list[Image.Image] = []
        frame_ms: int | None = None
        rendered_pixels = 0
        for image in self._images(shown):
            pictures.append(picture(pipeline.to_display(image, parameters.window), parameters.viewport))
            rendered_pixels += pictures[-1].width * pictures[-1].height
            if rendered_pixels > MAX_ANIMATION_PIXELS:
                raise PayloadTooLarge(
                    f"The rendered frames exceed {MAX_ANIMATION_PIXELS:,} pixels together; "
                    "ask for a smaller viewport (viewport=vw,vh) or fewer frames."
                )
            frame_ms = frame_ms or _frame_time(image.dataset)
        metrics.add_metric("FramesRendered", MetricUnit.Count, len(pictures))
        return encode(pictures, media_type, quality=parameters.quality, frame_ms=frame_ms)

    def _images(self, shown: Sequence[Frames]) -> Iterator[pixels.FrameImage]:
        """The frames decoded, one instance after another; what cannot be is 406 or 413."""
        for frames in shown:
            item = frames.item
            _check_renderable(item)
            try:
                yield from InstancePixels(self.reader, item).images(frames.numbers)
            except pixels.NoPixelData:
                raise NotAcceptable(
                    f"Instance {item.sop_uid} has no pixel data (a report, a presentation state, a "
                    "document), so it has no rendered representation; retrieve its metadata instead."
                ) from None
            except pixels.UndecodableFrame as error:
                raise NotAcceptable(_undecodable(item, error.number)) from error


def _negotiate(request: Request) -> RenderedType:
    """The rendered media type the client prefers; 406 listing the three otherwise."""
    return RenderedType(negotiate(request.accept, OFFERS, query=request.query).type)


def _check_renderable(item: InstanceItem) -> None:
    """Refuse, before reading pixels, what cannot be decoded or would not fit in memory."""
    syntax = item.transfer_syntax_uid
    if UID(syntax).is_compressed and not codecs.can_decode(syntax):
        raise NotAcceptable(_undecodable(item, None))
    attributes = json.loads(item.dicom_json)
    rows, columns = first_value(attributes, ROWS), first_value(attributes, COLUMNS)
    if isinstance(rows, int) and isinstance(columns, int) and rows * columns > MAX_FRAME_PIXELS:
        raise PayloadTooLarge(
            f"A frame of {columns} by {rows} pixels is too large to render here (at most "
            f"{MAX_FRAME_PIXELS:,} pixels); retrieve it with WADO-RS to display in the client."
        )
    if item.frame_index is None and int(item.size) > MAX_WHOLE_OBJECT:
        raise PayloadTooLarge(
            f"Instance {item.sop_uid} ({int(item.size) / 1e6:.0f} MB) would be read whole to render, "
            "more than this server does; retrieve its frames with WADO-RS to display in the client."
        )


def _undecodable(item: InstanceItem, number: int | None) -> str:
    what = f"Frame {number}" if number is not None else f"Instance {item.sop_uid}"
    return (
        f"{what} cannot be rendered: the server's codecs cannot decode its "
        f"{pixels.syntax_name(item.transfer_syntax_uid)} pixel data. Available: the frames as stored, "
        'with WADO-RS and Accept: multipart/related; type="application/octet-stream"; transfer-syntax=*, '
        "to decode in the client."
    )


def _frame_time(dataset: Dataset) -> int | None:
    """Milliseconds per frame of a cine instance (Frame Time, 0018,1063), if it says."""
    try:
        value = dataset.get("FrameTime")
        return round(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _etag(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
