"""WADO-RS retrieval (PS3.18 §10.4): instances, metadata, frames and bulk data.

Reads go through an :class:`ObjectReader` that counts requests and bytes, so tests and
the benchmark can check how much each answer costs. Responses never exceed what a
Lambda can return (about 4.4 MB of raw body): a larger single instance is answered with
a redirect to a short-lived presigned URL, a larger multipart answer with 413 and what
to do instead (docs/conformance.md).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pydicom
from aws_lambda_powertools.event_handler import Response
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from dicomweb_core.config import Settings
from dicomweb_core.dicom import codecs
from dicomweb_core.dicom.frames import FrameIndex, coalesce_reads, frame_span
from dicomweb_core.dicom.metadata import render
from dicomweb_core.dicom.native_xml import to_xml
from dicomweb_core.hooks import bundles, series_metadata
from dicomweb_core.hooks.bundles import RESPONSE_LIMIT
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.index.reader import instances_of, missing, series_item, series_of, study_item
from dicomweb_core.observability import MetricUnit, logger, metrics
from dicomweb_core.storage import ObjectReader, metadata_key
from dicomweb_core.wado import media
from dicomweb_core.web.errors import BadRequest, NotAcceptable, NotFound, PayloadTooLarge
from dicomweb_core.web.mediatype import MediaType
from dicomweb_core.web.multipart import encode_multipart, multipart_content_type
from dicomweb_core.web.negotiation import negotiate
from dicomweb_core.web.uri import DicomWebURI

REDIRECT_SECONDS = 300
PIXEL_DATA_PATH = "7FE00010"
METADATA_OFFERS = (
    MediaType(media.DICOM_JSON),
    MediaType("multipart/related", (("type", media.DICOM_XML),)),
    MediaType("application/json"),
)
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"


@dataclass(frozen=True, slots=True)
class Request:
    """What the handler passes in: the parsed URI and the negotiation inputs."""

    uri: DicomWebURI
    accept: str | None
    query: dict[str, str]
    if_none_match: str | None
    accepts_gzip: bool


class RetrieveService:
    def __init__(self, *, settings: Settings, reader: ObjectReader, public_objects: bool = True) -> None:
        self.settings = settings
        self.reader = reader
        # Whether the bucket's objects are reachable on the API's host (primary store only).
        self.public_objects = public_objects

    # ------------------------------------------------------------------ instances
    def instances(self, request: Request) -> Response[bytes]:
        """Study, series or instance retrieval (PS3.18 §10.4.1.1.1)."""
        items = instances_of(request.uri)
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
            return self._too_large_for_instances(request.uri, items, choice)
        bodies = [(i, self._instance_bytes(i, choice.transfer_syntax)) for i in items]
        if not choice.multipart:
            ((item, body),) = bodies
            return _response(body, media.DICOM, cache=IMMUTABLE, etag=item.sha256)
        parts = [
            ({"Content-Type": f"{media.DICOM}; transfer-syntax={_actual(choice, i)}"}, body)
            for i, body in bodies
        ]
        body, boundary = encode_multipart(parts)
        return _response(body, multipart_content_type(boundary, media.DICOM), cache=IMMUTABLE)

    def _too_large_for_instances(
        self, uri: DicomWebURI, items: Sequence[InstanceItem], choice: media.Choice
    ) -> Response[bytes]:
        """A redirect to the resource's pre-built body on the API's own host (see ``bundles``)."""
        total_mb = sum(int(i.size) for i in items) / 1e6
        if not self.public_objects:
            raise PayloadTooLarge(
                f"The {len(items)} instance(s) total {total_mb:.1f} MB, more than one response can "
                "carry, and the research store serves no pre-built responses; retrieve instances "
                "one at a time, or ask for frames or metadata."
            )
        if not choice.multipart:  # application/dicom: the stored object itself
            (item,) = items
            if choice.transfer_syntax not in (media.AS_STORED, item.transfer_syntax_uid):
                raise PayloadTooLarge(
                    f"The instance ({total_mb:.1f} MB) is too large to convert in one response; "
                    "ask for it as stored (transfer-syntax=*)."
                )
            return self._redirect(item.s3_key, item.s3_version_id, uri.base_url)
        assert uri.study is not None
        syntax = bundles.bundle_syntax(choice.transfer_syntax, items)
        owner: SeriesItem | StudyItem = (
            series_item(uri.study, uri.series) if uri.series is not None else study_item(uri.study)
        )
        if owner.bundle_version == owner.version:
            key = bundles.bundle_key(owner.version, syntax, uri.study, uri.series or "-", uri.instance or "-")
            return self._redirect(key, None, uri.base_url)
        raise PayloadTooLarge(
            f"The response ({total_mb:.1f} MB) is larger than one function response can carry. It is "
            "prepared as a pre-built response once the series has received no new instance for the "
            "stable age (a minute by default); retry then, or retrieve instances one at a time.",
            retry_after=60,
        )

    def _redirect(self, key: str, version_id: str | None, base_url: str) -> Response[bytes]:
        url = self.reader.same_host_url(
            key, version_id=version_id, public_base_url=base_url, expires_in=REDIRECT_SECONDS
        )
        return Response(
            status_code=int(HTTPStatus.SEE_OTHER),
            body=b"",
            headers={"Location": url, "Cache-Control": "no-store"},
        )

    def _instance_bytes(self, item: InstanceItem, syntax: str) -> bytes:
        return instance_in_syntax(self.reader, item, syntax)

    # ------------------------------------------------------------------ metadata
    def metadata(self, request: Request, *, base_url: str) -> Response[bytes]:
        """Metadata of a study, series or instance (PS3.18 §10.4.1.1.2)."""
        chosen = negotiate(request.accept, METADATA_OFFERS, query=request.query)
        uri = request.uri
        assert uri.study is not None
        if uri.instance is not None:
            (item,) = instances_of(uri)
            version = item.sha256
            if _etag_matches(request.if_none_match, version):
                return _not_modified(version)
            document = self.reader.read(metadata_key(item.s3_key)).decode()
            text = f"[{render(document, base_url)}]"
        elif uri.series is not None:
            series = series_item(uri.study, uri.series)
            version = series.version
            if _etag_matches(request.if_none_match, version):
                return _not_modified(version)
            text = self._series_document(series, base_url)
        else:
            all_series = series_of(uri.study)
            if not all_series:
                raise missing(uri.study, "study")
            versions = [s.version for s in all_series]
            version = hashlib.sha256("|".join(versions).encode()).hexdigest()[:32]
            if _etag_matches(request.if_none_match, version):
                return _not_modified(version)
            documents = [self._series_document(s, base_url) for s in all_series]
            text = "[" + ",".join(d[1:-1] for d in documents if d != "[]") + "]"
        if chosen.type == "multipart/related":
            parts = [({"Content-Type": media.DICOM_XML}, to_xml(d)) for d in json.loads(text)]
            body, boundary = encode_multipart(parts)
            return _response(
                body, multipart_content_type(boundary, media.DICOM_XML), cache=REVALIDATE, etag=version
            )
        return _response(
            text.encode(), media.DICOM_JSON, cache=REVALIDATE, etag=version, gzip_ok=request.accepts_gzip
        )

    def _series_document(self, series: SeriesItem, base_url: str) -> str:
        """The series' metadata array: the pre-built document of this version when the
        metadata hook has written it (one storage read), else assembled from the
        per-instance documents (see ``series_metadata``). Nothing is written here."""
        text = series_metadata.cached(self.reader, series)
        if text is None:
            metrics.add_metric("SeriesMetadataAssembled", MetricUnit.Count, 1)
            text = series_metadata.assemble(self.reader, series.study_uid, series.series_uid)
        return render(text, base_url)

    # ------------------------------------------------------------------ frames
    def frames(self, request: Request) -> Response[bytes]:
        """Frames of an instance (PS3.18 §10.4.1.1.4), read by byte range.

        The answer holds one part per number listed, in the order listed, repeats included;
        each distinct frame is read (and decompressed) once, and the frames of the list are
        read in as few ranged GETs as their layout allows (``frames.coalesce_reads``). A list
        whose answer cannot fit one response is refused from the frame index before any read.
        """
        uri = request.uri
        assert uri.frames is not None
        (item,) = instances_of(
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
        if _etag_matches(request.if_none_match, etag):
            return _not_modified(etag)
        index = FrameIndex.from_document(item.frame_index)
        numbers = list(uri.frames)
        distinct = list(dict.fromkeys(numbers))  # each frame once, in first-listed order
        part_type = (
            choice.part_type
            if choice.part_type != "*/*"
            else media.PIXEL_MEDIA_TYPES.get(actual, media.OCTET_STREAM)
        )
        decompress = actual != stored and stored not in media.UNCOMPRESSED
        metadata = metadata_of(self.reader, item) if decompress else None
        if len(numbers) == 1 and index is not None and numbers[0] <= len(index):
            size = (
                codecs.decoded_frame_length(metadata)
                if metadata is not None
                else index.frame_size(numbers[0])
            )
            if size > RESPONSE_LIMIT:
                return self._large_frame(uri, item, numbers[0], size, actual=actual, part_type=part_type)
        if index is not None and max(distinct) <= len(index):
            _check_frames_fit(index, numbers, metadata)
        pixels = self._frame_bytes(item, index, distinct)
        if metadata is not None:
            pixels = self._decoded_frames(item, distinct, pixels, metadata, parts=len(numbers))
        by_number = dict(zip(distinct, pixels, strict=True))
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
            raise PayloadTooLarge(
                "The requested frames are too large for one response; ask for fewer frames at a time."
            )
        body, boundary = encode_multipart(parts)
        return _response(body, multipart_content_type(boundary, part_type), cache=IMMUTABLE, etag=etag)

    def _large_frame(
        self, uri: DicomWebURI, item: InstanceItem, number: int, size: int, *, actual: str, part_type: str
    ) -> Response[bytes]:
        """One frame over the response limit: a redirect to its pre-built body (see ``bundles``)."""
        what = f"Frame {number} is {size / 1e6:.1f} MB, more than one function response can carry"
        if not self.public_objects:
            raise PayloadTooLarge(f"{what}, and the research store serves no pre-built responses.")
        stored = item.transfer_syntax_uid
        decompressed = stored not in media.UNCOMPRESSED and actual == media.EXPLICIT_VR_LITTLE_ENDIAN
        if part_type != media.OCTET_STREAM or not (actual == stored or decompressed):
            raise PayloadTooLarge(
                f"{what}; it is pre-built only as application/octet-stream, as stored (transfer-syntax=*) "
                "or decompressed (Explicit VR Little Endian)."
            )
        assert uri.study is not None and uri.series is not None
        series = series_item(uri.study, uri.series)
        if series.bundle_version != series.version:
            raise PayloadTooLarge(
                f"{what}. It is prepared as a pre-built response once the series has received no new "
                "instance for the stable age (a minute by default); retry then.",
                retry_after=60,
            )
        syntax = media.EXPLICIT_VR_LITTLE_ENDIAN if decompressed else media.AS_STORED
        key = bundles.bundle_key(series.version, syntax, uri.study, uri.series, item.sop_uid, frame=number)
        return self._redirect(key, None, uri.base_url)

    def _decoded_frames(
        self,
        item: InstanceItem,
        numbers: list[int],
        frames: list[bytes],
        metadata: dict[str, Any],
        *,
        parts: int,
    ) -> list[bytes]:
        """The compressed ``frames`` decompressed to native pixel bytes (the default Accept).

        The decoded size is known from the metadata, so an answer of ``parts`` frames that
        could not be sent is refused (413) before anything is decoded; a frame the codecs
        cannot decode is 406.
        """
        stored = item.transfer_syntax_uid
        _check_decoded_fit(metadata, parts, largest_stored=max(len(f) for f in frames))
        decoded = []
        for number, frame in zip(numbers, frames, strict=True):
            try:
                decoded.append(codecs.decode_frame(frame, stored, metadata))
            except codecs.CannotDecode as error:
                logger.warning(
                    "frame cannot be decoded",
                    extra={"transfer_syntax": stored, "frame": number, "reason": str(error)},
                )
                raise NotAcceptable(
                    f"Frame {number} cannot be decompressed: the server's codecs cannot decode this "
                    f"instance's {_syntax_name(stored)} pixel data. Available: the frames as stored, "
                    'with Accept: multipart/related; type="application/octet-stream"; transfer-syntax=* '
                    f'(or type="{media.PIXEL_MEDIA_TYPES.get(stored, media.OCTET_STREAM)}"; '
                    f"transfer-syntax={stored}), to decode in the client."
                ) from error
        return decoded

    def _frame_bytes(self, item: InstanceItem, index: FrameIndex | None, numbers: list[int]) -> list[bytes]:
        count = len(index) if index is not None else None
        if count is not None:
            for number in numbers:
                if number > count:
                    raise BadRequest(f"Frame {number} does not exist: the instance has {count} frame(s).")
            return read_frames(self.reader, item, [index.frames[n - 1] for n in numbers])  # type: ignore[union-attr]
        return _frames_from_object(self.reader.read(item.s3_key, version_id=item.s3_version_id), numbers)

    # ------------------------------------------------------------------ bulk data
    def bulkdata(self, request: Request, element_path: str) -> Response[bytes]:
        """A BulkDataURI target: one element's value (PS3.18 §10.4.1.1.5)."""
        uri = request.uri
        (item,) = instances_of(uri)
        choice = media.choose(
            request.accept,
            part_types=lambda t: t == media.OCTET_STREAM,
            default_part=media.OCTET_STREAM,
            single_part=False,
            # Values are sent as read, never decoded: as stored, or re-labelled between
            # the uncompressed syntaxes; no Accept (or */*) means as stored.
            producible=lambda ts: (
                ts in (media.AS_STORED, item.transfer_syntax_uid)
                or (ts in media.UNCOMPRESSED and item.transfer_syntax_uid in media.UNCOMPRESSED)
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
                return self._large_frame(uri, item, 1, size, actual=actual, part_type=media.OCTET_STREAM)
        data = self.reader.read(item.s3_key, version_id=item.s3_version_id)
        value = _element_value(data, element_path)
        if len(value) > RESPONSE_LIMIT:
            raise PayloadTooLarge(
                "The bulk data value is too large for one response; retrieve frames instead."
            )
        body, boundary = encode_multipart(
            [({"Content-Type": f"{media.OCTET_STREAM}; transfer-syntax={_actual(choice, item)}"}, value)]
        )
        return _response(
            body, multipart_content_type(boundary, media.OCTET_STREAM), cache=IMMUTABLE, etag=item.sha256
        )


# ---------------------------------------------------------------------- helpers
def _actual(choice: media.Choice, item: InstanceItem) -> str:
    return item.transfer_syntax_uid if choice.transfer_syntax == media.AS_STORED else choice.transfer_syntax


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return etag in tags or "*" in tags


def _not_modified(etag: str) -> Response[bytes]:
    return Response(status_code=int(HTTPStatus.NOT_MODIFIED), body=b"", headers={"ETag": f'"{etag}"'})


def _response(
    body: bytes, content_type: str, *, cache: str, etag: str | None = None, gzip_ok: bool = False
) -> Response[bytes]:
    headers = {"Cache-Control": cache}
    if etag:
        headers["ETag"] = f'"{etag}"'
    if gzip_ok and len(body) > 1024:
        body = gzip.compress(body, 6)
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    if len(body) > RESPONSE_LIMIT:
        raise PayloadTooLarge(
            "The answer is larger than one response can carry; ask with Accept-Encoding: gzip, "
            "or retrieve per series or instance."
        )
    return Response(status_code=int(HTTPStatus.OK), content_type=content_type, body=body, headers=headers)


def metadata_of(reader: ObjectReader, item: InstanceItem) -> dict[str, Any]:
    """The instance's metadata document (DICOM JSON, built at ingest)."""
    document: dict[str, Any] = json.loads(reader.read(metadata_key(item.s3_key)))
    return document


def read_frame(reader: ObjectReader, item: InstanceItem, fragments: Sequence[tuple[int, int]]) -> bytes:
    """One frame: one ranged GET from its first fragment to its last, item headers sliced out."""
    (frame,) = read_frames(reader, item, [fragments])
    return frame


def read_frames(
    reader: ObjectReader, item: InstanceItem, frames: Sequence[Sequence[tuple[int, int]]]
) -> list[bytes]:
    """Each frame's bytes (its fragments joined), from as few ranged GETs as the layout allows.

    Frames close together share one GET (``frames.coalesce_reads``); each GET's bytes are
    dropped once its frames are sliced out, so memory stays near the frames' own size.
    """
    found = [b""] * len(frames)
    for (start, length), members in coalesce_reads([frame_span(f) for f in frames]):
        span = reader.read(item.s3_key, version_id=item.s3_version_id, byte_range=(start, length))
        for k in members:
            found[k] = b"".join(span[offset - start : offset - start + size] for offset, size in frames[k])
    return found


def _check_frames_fit(index: FrameIndex, numbers: Sequence[int], metadata: dict[str, Any] | None) -> None:
    """Refuse (413), from the frame index and before any read, an answer of ``numbers`` (repeats
    included) that one response cannot carry."""
    if metadata is not None:
        largest = max(index.frame_size(n) for n in numbers)
        _check_decoded_fit(metadata, len(numbers), largest_stored=largest)
    elif sum(index.frame_size(n) for n in numbers) > RESPONSE_LIMIT:
        raise PayloadTooLarge(
            "The requested frames are too large for one response; ask for fewer frames at a time."
        )


def _check_decoded_fit(metadata: dict[str, Any], parts: int, *, largest_stored: int) -> None:
    """Refuse (413) ``parts`` decompressed frames that one response cannot carry."""
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


class StoredFrameDecoder:
    """Decompresses single frames read by range (the bundle hook's large frames).

    The hook asks for an instance's decoded size and then for each of its frames: the
    instance's metadata document (the pixel description) and frame index are read once."""

    def __init__(self, reader: ObjectReader) -> None:
        self.reader = reader
        self._current: tuple[str, dict[str, Any], FrameIndex | None] | None = None

    def _described(self, item: InstanceItem) -> tuple[dict[str, Any], FrameIndex | None]:
        if self._current is None or self._current[0] != item.sop_uid:
            self._current = (
                item.sop_uid,
                metadata_of(self.reader, item),
                FrameIndex.from_document(item.frame_index),
            )
        return self._current[1], self._current[2]

    def decoded_size(self, item: InstanceItem) -> int:
        return codecs.decoded_frame_length(self._described(item)[0])

    def decode(self, item: InstanceItem, number: int) -> bytes | None:
        metadata, index = self._described(item)
        assert index is not None
        codestream = read_frame(self.reader, item, index.frames[number - 1])
        try:
            return codecs.decode_frame(codestream, item.transfer_syntax_uid, metadata)
        except codecs.CannotDecode:
            logger.warning("a large frame cannot be decoded", extra={"frame": number})
            return None


def instance_in_syntax(reader: ObjectReader, item: InstanceItem, syntax: str) -> bytes:
    """The instance's Part 10 bytes in ``syntax`` (as stored, transcoded or decompressed)."""
    data = reader.read(item.s3_key, version_id=item.s3_version_id)
    if syntax in (media.AS_STORED, item.transfer_syntax_uid):
        return data
    if item.transfer_syntax_uid in media.UNCOMPRESSED:
        return _transcode(data, syntax)
    try:
        return codecs.decompress_instance(data)
    except codecs.CannotDecode as error:
        logger.warning(
            "instance cannot be decoded",
            extra={"transfer_syntax": item.transfer_syntax_uid, "reason": str(error)},
        )
        raise NotAcceptable(
            f"Instance {item.sop_uid} cannot be decompressed: the server's codecs cannot decode its "
            f"{_syntax_name(item.transfer_syntax_uid)} pixel data. Available: the instance as stored, "
            'with Accept: multipart/related; type="application/dicom"; transfer-syntax=* (or '
            "application/dicom; transfer-syntax=* for one instance), to decode in the client."
        ) from error


def _syntax_name(uid: str) -> str:
    """A transfer syntax for a person: its name and UID, or the UID alone when unknown."""
    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


def _transcode(data: bytes, syntax: str) -> bytes:
    """Re-encode an uncompressed data set in another uncompressed transfer syntax."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _frames_from_object(data: bytes, numbers: list[int]) -> list[bytes]:
    """Frames of an instance without a frame index: parse the whole object (fallback)."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in dataset:
        raise NotFound("The instance has no pixel data.")
    count = int(dataset.get("NumberOfFrames") or 1)
    for number in numbers:
        if number > count:
            raise BadRequest(f"Frame {number} does not exist: the instance has {count} frame(s).")
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
    else:
        size = len(dataset.PixelData) // count
        frames = [dataset.PixelData[k * size : (k + 1) * size] for k in range(count)]
    return [frames[n - 1] for n in numbers]


def _element_value(data: bytes, element_path: str) -> bytes:
    """The value at a BulkDataURI path: tags and item numbers joined by dots."""
    parts = element_path.split(".")
    if len(parts) % 2 != 1 or not all(len(p) == 8 for p in parts[::2]):
        raise NotFound("No such bulk data.")
    try:
        target: Any = pydicom.dcmread(io.BytesIO(data))
        for position, part in enumerate(parts):
            # Even positions are tags (an element's value), odd ones item numbers.
            target = target[int(part, 16)].value if position % 2 == 0 else target[int(part)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise NotFound("No such bulk data.") from None
    if not isinstance(target, bytes | bytearray):
        raise NotFound("No such bulk data (the element is not binary).")
    return bytes(target)
