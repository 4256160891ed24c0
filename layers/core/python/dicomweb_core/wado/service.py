"""WADO-RS (PS3.18 §10.4): the four retrieve verbs, from a parsed request to a :class:`Reply`.

Instances (§10.4.1.1.1), metadata (§10.4.1.1.2), frames (§10.4.1.1.4) and bulk data
(§10.4.1.1.5), in the media type and transfer syntax negotiated under §8.7 (``media``).
The service knows no web framework: the handler parses the request into a
:class:`Request` and maps the :class:`Reply`.

Reads go through an :class:`ObjectReader` that counts requests and bytes, so tests and
the benchmark can check how much each answer costs. Answers never exceed what a Lambda
can return (about 4.4 MB of raw body): larger ones are redirected or refused
(``redirects``, ``limits``); caching, validators and gzip are ``replies``; pixel data is
read and decoded by ``dicom.pixels``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from dicomweb_core.config import Settings
from dicomweb_core.dicom import codecs, pixels
from dicomweb_core.dicom.frames import FrameIndex
from dicomweb_core.dicom.metadata import render
from dicomweb_core.dicom.native_xml import to_xml
from dicomweb_core.errors import NotAcceptable, PayloadTooLarge
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import InstanceItem, SeriesItem
from dicomweb_core.observability import MetricUnit, metrics
from dicomweb_core.storage import ObjectReader, metadata_key
from dicomweb_core.wado import media, prebuilt
from dicomweb_core.wado.limits import FEWER_FRAMES, check_decoded_fit, check_frames_fit
from dicomweb_core.wado.prebuilt import RESPONSE_LIMIT
from dicomweb_core.wado.redirects import BundleOrders, LargeAnswers
from dicomweb_core.wado.replies import IMMUTABLE, REVALIDATE, etag_matches, not_modified, ok_reply
from dicomweb_core.web.mediatype import MediaType
from dicomweb_core.web.multipart import encode_multipart, multipart_content_type
from dicomweb_core.web.negotiation import negotiate
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

PIXEL_DATA_PATH = "7FE00010"
METADATA_OFFERS = (
    MediaType(media.DICOM_JSON),
    MediaType("multipart/related", (("type", media.DICOM_XML),)),
    MediaType("application/json"),
)


@dataclass(frozen=True, slots=True)
class Request:
    """A WADO-RS request as the handler parsed it: the resource and the negotiation inputs."""

    uri: DicomWebURI
    accept: str | None
    query: dict[str, str]  # for ``accept=`` (PS3.18 §8.3.3.1)
    if_none_match: str | None
    accepts_gzip: bool


class RetrieveService:
    """The retrieve verbs of one store, reading its bucket through ``reader``."""

    def __init__(
        self,
        *,
        settings: Settings,
        reader: ObjectReader,
        public_objects: bool = True,
        orders: BundleOrders | None = None,
        wait_seconds: float = 0.0,
        index: Index | None = None,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.index = index if index is not None else Index()
        # Whether the bucket's objects are reachable on the API's host (primary store only).
        self.public_objects = public_objects
        # Over the response limit: redirects, to bodies built when first asked for (``orders``).
        self.large = LargeAnswers(
            reader, self.index, public_objects=public_objects, orders=orders, wait_seconds=wait_seconds
        )

    # ------------------------------------------------------------------ instances
    def instances(self, request: Request) -> Reply:
        """Study, series or instance retrieval (PS3.18 §10.4.1.1.1)."""
        items = self.index.instances(request.uri)
        choice = media.choose(
            request.accept,
            part_types=lambda t: t == media.DICOM,
            default_part=media.DICOM,
            single_part=request.uri.instance is not None,
            producible=lambda ts: all(media.can_produce(ts, i.transfer_syntax_uid) for i in items),
            query=request.query,
        )
        total = sum(int(i.size) for i in items)
        if total > RESPONSE_LIMIT:
            return self.large.instances(request.uri, items, choice, request.query)
        bodies = [(i, self._instance_bytes(i, _actual(choice, i))) for i in items]
        if sum(len(body) for _, body in bodies) > RESPONSE_LIMIT:  # over the limit once decompressed
            return self.large.instances(request.uri, items, choice, request.query)
        if not choice.multipart:
            ((item, body),) = bodies
            return ok_reply(body, media.DICOM, cache=IMMUTABLE, etag=item.sha256)
        parts = [
            ({"Content-Type": f"{media.DICOM}; transfer-syntax={_actual(choice, i)}"}, body)
            for i, body in bodies
        ]
        body, boundary = encode_multipart(parts)
        return ok_reply(body, multipart_content_type(boundary, media.DICOM), cache=IMMUTABLE)

    def _instance_bytes(self, item: InstanceItem, syntax: str) -> bytes:
        """The instance in ``syntax``; 406 when its pixel data cannot be decompressed."""
        try:
            return pixels.instance_in_syntax(self.reader, item, syntax)
        except codecs.CannotDecode as error:
            raise NotAcceptable(
                f"Instance {item.sop_uid} cannot be decompressed: the server's codecs cannot decode its "
                f"{pixels.syntax_name(item.transfer_syntax_uid)} pixel data. Available: the instance as "
                'stored, with Accept: multipart/related; type="application/dicom"; transfer-syntax=* (or '
                "application/dicom; transfer-syntax=* for one instance), to decode in the client."
            ) from error

    # ------------------------------------------------------------------ metadata
    def metadata(self, request: Request, *, base_url: str) -> Reply:
        """Metadata of a study, series or instance (PS3.18 §10.4.1.1.2), with an ETag of the
        version it describes (``replies``)."""
        chosen = negotiate(request.accept, METADATA_OFFERS, query=request.query)
        uri = request.uri
        assert uri.study is not None
        if uri.instance is not None:
            (item,) = self.index.instances(uri)
            version = item.sha256
            if etag_matches(request.if_none_match, version):
                return not_modified(version)
            document = self.reader.read(metadata_key(item.s3_key)).decode()
            text = f"[{render(document, base_url)}]"
        elif uri.series is not None:
            series = self.index.series(uri.study, uri.series)
            version = series.version
            if etag_matches(request.if_none_match, version):
                return not_modified(version)
            text = self._series_document(series, base_url)
        else:
            all_series = self.index.series_of(uri.study)
            if not all_series:
                raise self.index.missing(uri.study, "study")
            versions = [s.version for s in all_series]
            version = hashlib.sha256("|".join(versions).encode()).hexdigest()[:32]
            if etag_matches(request.if_none_match, version):
                return not_modified(version)
            documents = [self._series_document(s, base_url) for s in all_series]
            text = "[" + ",".join(d[1:-1] for d in documents if d != "[]") + "]"
        if chosen.type == "multipart/related":
            parts = [({"Content-Type": media.DICOM_XML}, to_xml(d)) for d in json.loads(text)]
            body, boundary = encode_multipart(parts)
            return ok_reply(
                body, multipart_content_type(boundary, media.DICOM_XML), cache=REVALIDATE, etag=version
            )
        return ok_reply(
            text.encode(), media.DICOM_JSON, cache=REVALIDATE, etag=version, gzip_ok=request.accepts_gzip
        )

    def _series_document(self, series: SeriesItem, base_url: str) -> str:
        """The series' metadata array: the pre-built document of this version when the
        metadata hook has written it (one storage read), else assembled from the
        per-instance documents (see ``series_metadata``). Nothing is written here."""
        text = prebuilt.cached(self.reader, series)
        if text is None:
            metrics.add_metric("SeriesMetadataAssembled", MetricUnit.Count, 1)
            text = prebuilt.assemble(self.reader, self.index, series.study_uid, series.series_uid)
        return render(text, base_url)

    # ------------------------------------------------------------------ frames
    def frames(self, request: Request) -> Reply:
        """Frames of an instance (PS3.18 §10.4.1.1.4), read by byte range.

        The answer holds one part per number listed, in the order listed, repeats included;
        each distinct frame is read (and decompressed) once, and the frames of the list are
        read in as few ranged GETs as their layout allows (``frames.coalesce_reads``). A list
        whose answer cannot fit one response is refused from the frame index before any read.
        """
        uri = request.uri
        assert uri.frames is not None
        (item,) = self.index.instances(
            DicomWebURI(uri.base_url, study=uri.study, series=uri.series, instance=uri.instance)
        )
        stored = item.transfer_syntax_uid
        choice = media.choose(
            request.accept,
            part_types=lambda t: t == media.OCTET_STREAM or t == media.PIXEL_MEDIA_TYPES.get(stored),
            default_part=media.OCTET_STREAM,
            single_part=False,
            producible=lambda ts: media.can_produce(ts, stored),
            query=request.query,
        )
        actual = _actual(choice, item)
        etag = hashlib.sha256(f"{item.sha256}/{uri.path}/{actual}".encode()).hexdigest()[:32]
        if etag_matches(request.if_none_match, etag):
            return not_modified(etag)
        source = pixels.InstancePixels(self.reader, item)
        index = source.index
        numbers = list(uri.frames)
        distinct = list(dict.fromkeys(numbers))  # each frame once, in first-listed order
        part_type = (
            choice.part_type
            if choice.part_type != "*/*"
            else media.PIXEL_MEDIA_TYPES.get(actual, media.OCTET_STREAM)
        )
        decompress = actual != stored and stored not in pixels.NATIVE
        # Native frames asked for in a little-endian syntax: big-endian ones are byte-swapped.
        little_endian = actual in pixels.UNCOMPRESSED
        metadata = source.metadata if decompress else None
        if len(numbers) == 1 and index is not None and numbers[0] <= len(index):
            size = (
                codecs.decoded_frame_length(metadata)
                if metadata is not None
                else index.frame_size(numbers[0])
            )
            if size > RESPONSE_LIMIT:
                return self.large.frame(
                    uri, request.query, item, numbers[0], size, actual=actual, part_type=part_type
                )
        if index is not None and max(distinct) <= len(index):
            check_frames_fit(index, numbers, metadata)
        frames = source.stored(distinct, little_endian=little_endian)
        if metadata is not None:
            # The decoded size is known from the metadata, so an answer that could not be
            # sent is refused (413) before anything is decoded.
            check_decoded_fit(metadata, len(numbers), largest_stored=max(len(f) for f in frames))
            frames = _decompressed(source, distinct, frames)
        by_number = dict(zip(distinct, frames, strict=True))
        parts = [
            (
                {
                    "Content-Type": f"{part_type}; transfer-syntax={actual}",
                    "Content-Location": DicomWebURI(
                        uri.base_url, uri.study, uri.series, uri.instance, (number,)
                    ).url,
                },
                by_number[number],
            )
            for number in numbers
        ]
        if sum(len(body) for _, body in parts) > RESPONSE_LIMIT:
            raise PayloadTooLarge(FEWER_FRAMES)
        body, boundary = encode_multipart(parts)
        return ok_reply(body, multipart_content_type(boundary, part_type), cache=IMMUTABLE, etag=etag)

    # ------------------------------------------------------------------ bulk data
    def bulkdata(self, request: Request, element_path: str) -> Reply:
        """A BulkDataURI target: one element's value (PS3.18 §10.4.1.1.5)."""
        uri = request.uri
        (item,) = self.index.instances(uri)
        choice = media.choose(
            request.accept,
            part_types=lambda t: t == media.OCTET_STREAM,
            default_part=media.OCTET_STREAM,
            single_part=False,
            # Values are never decoded: as stored, or in a little-endian native syntax from
            # a native one (big endian byte-swapped); no Accept (or */*) means as stored.
            producible=lambda ts: (
                ts in (media.AS_STORED, item.transfer_syntax_uid)
                or (ts in pixels.UNCOMPRESSED and item.transfer_syntax_uid in pixels.NATIVE)
            ),
            query=request.query,
            default_syntax=media.AS_STORED,
        )
        index = FrameIndex.from_document(item.frame_index)
        if (
            element_path == PIXEL_DATA_PATH
            and index is not None
            and not index.encapsulated
            and len(index) == 1
        ):
            # The pixel data of a single-frame native image is its frame 1, byte for byte.
            size = index.frame_size(1)
            if size > RESPONSE_LIMIT:
                actual = _actual(choice, item)
                return self.large.frame(
                    uri,
                    request.query,
                    item,
                    1,
                    size,
                    actual=actual,
                    part_type=media.OCTET_STREAM,
                    url=f"{uri.url}/bulkdata/{element_path}",
                )
        data = self.reader.read(item.s3_key, version_id=item.s3_version_id)
        actual = _actual(choice, item)
        value = pixels.element_value(data, element_path, little_endian=actual in pixels.UNCOMPRESSED)
        if len(value) > RESPONSE_LIMIT:
            raise PayloadTooLarge(
                "The bulk data value is too large for one response; retrieve frames instead."
            )
        body, boundary = encode_multipart(
            [({"Content-Type": f"{media.OCTET_STREAM}; transfer-syntax={actual}"}, value)]
        )
        return ok_reply(
            body, multipart_content_type(boundary, media.OCTET_STREAM), cache=IMMUTABLE, etag=item.sha256
        )


def _decompressed(source: pixels.InstancePixels, numbers: list[int], frames: list[bytes]) -> list[bytes]:
    """Compressed ``frames`` as native pixel bytes (the default Accept); a frame the codecs
    cannot decode is 406 with the Accept that gets it as stored."""
    try:
        return source.decoded(numbers, frames)
    except pixels.UndecodableFrame as error:
        stored = source.item.transfer_syntax_uid
        raise NotAcceptable(
            f"Frame {error.number} cannot be decompressed: the server's codecs cannot decode this "
            f"instance's {pixels.syntax_name(stored)} pixel data. Available: the frames as stored, "
            'with Accept: multipart/related; type="application/octet-stream"; transfer-syntax=* '
            f'(or type="{media.PIXEL_MEDIA_TYPES.get(stored, media.OCTET_STREAM)}"; '
            f"transfer-syntax={stored}), to decode in the client."
        ) from error


def _actual(choice: media.Choice, item: InstanceItem) -> str:
    """The transfer syntax sent for ``item``: the stored one when ``*`` was chosen."""
    return media.actual_syntax(choice.transfer_syntax, item.transfer_syntax_uid)
