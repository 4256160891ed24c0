"""Bodies of retrievals too large for a Lambda response (PS3.18 §10.4.1.1.1, §10.4.1.1.4),
built when first asked for.

A Lambda response carries about 4.4 MB of raw bytes, so a study, series or instance
retrieval above that cannot come from the retrieve function. The first time one is asked
for, the retrieve function orders its body (``wado.redirects``: a :class:`BundleOrder` on
``BundleQueue``), and BundleFunction writes the exact response as one S3 object, with the
response's Content-Type stored on the object:

- a study, series or instance as ``multipart/related; type="application/dicom"``, in the
  transfer syntax asked for (as stored, or converted by ``dicom.pixels`` with the
  imaging layer's codecs); a study of one series is answered with its series' body;
- one frame as a one-part ``multipart/related; type="application/octet-stream"``, as
  stored or, for compressed pixel data, decompressed.

The retrieve function then answers ``303 See Other`` to a short-lived presigned URL of
the body *on the API's own host* (CloudFront routes the ``/bundles/*`` and
``/studies/*.dcm`` paths to the bucket; see template.yaml and docs/conformance.md), which
every client follows, including those that pin the Host header. Bodies expire
``BundleRetentionDays`` after they are written (a lifecycle rule) and are built again when
asked for again, so the store keeps a second copy only of what is being retrieved.

Bodies are composed with S3 multipart uploads: framing bytes and small instances are
buffered into parts of at least 5 MiB, and long object ranges are copied server-side
(UploadPartCopy), so memory stays bounded whatever the series size. A body's key names
the series' (or study's) content version, so a new instance makes a new body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dicomweb_core.dicom.codecs import CannotDecode
from dicomweb_core.dicom.pixels import InstancePixels, instance_in_syntax
from dicomweb_core.errors import Gone, NotFound
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado import media
from dicomweb_core.wado.prebuilt import BundleOrder
from dicomweb_core.web.multipart import closing_delimiter, multipart_content_type, new_boundary, part_opening
from dicomweb_core.web.uri import DicomWebURI

MIN_PART = 5 * 1024 * 1024  # S3: every part but the last
BUFFER_TARGET = 8 * 1024 * 1024


# ------------------------------------------------------------------- composition
@dataclass(frozen=True, slots=True)
class ObjectRange:
    """Bytes [start, end) of one object version, copied without passing through the function."""

    key: str
    version_id: str | None
    start: int
    end: int


Segment = bytes | ObjectRange


class BundleComposer:
    """Writes a sequence of byte strings and object ranges as one S3 object (multipart upload)."""

    def __init__(self, bucket: str, reader: ObjectReader, client: Any = None) -> None:
        self.bucket = bucket
        self.reader = reader
        self.client: Any = client or reader.client

    def compose(self, key: str, segments: Iterable[Segment], *, content_type: str) -> int:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        written = 0
        try:
            for part in self._parts(segments):
                number = len(parts) + 1
                if isinstance(part, ObjectRange):
                    source: dict[str, str] = {"Bucket": self.bucket, "Key": part.key}
                    if part.version_id:
                        source["VersionId"] = part.version_id
                    answer = self.client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=source,
                        CopySourceRange=f"bytes={part.start}-{part.end - 1}",
                    )
                    etag = answer["CopyPartResult"]["ETag"]
                    written += part.end - part.start
                else:
                    answer = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                    )
                    etag = answer["ETag"]
                    written += len(part)
                parts.append({"PartNumber": number, "ETag": etag})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return written

    def _parts(self, segments: Iterable[Segment]) -> Iterator[bytes | ObjectRange]:
        """Parts of at least 5 MiB (but the last): small pieces buffered, long ranges copied."""
        buffer = bytearray()
        for segment in segments:
            if isinstance(segment, bytes):
                buffer += segment
            elif segment.end - segment.start < 2 * MIN_PART:
                buffer += self._read(segment.key, segment.version_id, segment.start, segment.end)
            else:
                start = segment.start
                if buffer:  # top the buffer up to a valid part from the range's head
                    take = max(0, MIN_PART - len(buffer))
                    buffer += self._read(segment.key, segment.version_id, start, start + take)
                    start += take
                    yield bytes(buffer)
                    buffer.clear()
                yield ObjectRange(segment.key, segment.version_id, start, segment.end)
                continue
            while len(buffer) >= BUFFER_TARGET:
                yield bytes(buffer[:BUFFER_TARGET])
                del buffer[:BUFFER_TARGET]
        if buffer:
            yield bytes(buffer)

    def _read(self, key: str, version_id: str | None, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self.reader.read(key, version_id=version_id, byte_range=(start, end - start))


def multipart_segments(
    items: Sequence[InstanceItem], syntax: str, convert: Callable[[InstanceItem, str], bytes]
) -> tuple[list[Segment], str]:
    """The segments of ``multipart/related; type="application/dicom"`` for the instances, and its
    Content-Type. Instances already in ``syntax`` are copied as object ranges; others are
    converted (decompressed or transcoded) by ``convert``."""
    boundary = new_boundary()
    segments: list[Segment] = []
    for number, item in enumerate(items, start=1):
        actual = media.actual_syntax(syntax, item.transfer_syntax_uid)
        headers = {"Content-Type": f"{media.DICOM}; transfer-syntax={actual}"}
        if actual == item.transfer_syntax_uid:
            size = int(item.size)
            segments.append(part_opening(boundary, headers, size, number))
            segments.append(ObjectRange(item.s3_key, item.s3_version_id, 0, size))
        else:
            body = convert(item, actual)
            segments.append(part_opening(boundary, headers, len(body), number))
            segments.append(body)
        segments.append(b"\r\n")
    segments.append(closing_delimiter(boundary))
    content_type = multipart_content_type(boundary, media.DICOM, transfer_syntax=syntax)
    return segments, content_type


def frame_segments(label: str, body: Sequence[Segment], size: int) -> tuple[list[Segment], str]:
    """One frame (or bulk data value) as ``multipart/related; type="application/octet-stream"``."""
    boundary = new_boundary()
    headers = {"Content-Type": f"{media.OCTET_STREAM}; transfer-syntax={label}"}
    segments: list[Segment] = [part_opening(boundary, headers, size, 1), *body, b"\r\n"]
    segments.append(closing_delimiter(boundary))
    return segments, multipart_content_type(boundary, media.OCTET_STREAM)


# ---------------------------------------------------------------------- the builder
class BundleBuilder:
    """Builds the body a :class:`BundleOrder` names, while its version is current.

    Instances in another syntax than the body's are converted, and compressed frames
    decompressed, by the pixel code (``dicom.pixels``) from the composer's reader.
    """

    def __init__(self, composer: BundleComposer, index: Index | None = None) -> None:
        self.composer = composer
        self.index = index if index is not None else Index()

    def convert(self, item: InstanceItem, syntax: str) -> bytes:
        """The instance's Part 10 bytes in ``syntax`` (a UID other than its stored one)."""
        return instance_in_syntax(self.composer.reader, item, syntax)

    def build(self, order: BundleOrder) -> str:
        """Write the order's body: ``built``; or ``exists``, ``changed`` (the resource has a
        newer version, or is gone), ``missing`` (no such instance or frame) or
        ``undecodable`` (its pixel data cannot be converted here)."""
        series = None if order.series == "-" else order.series
        owner: Any = (
            self.index.at_version(SeriesItem, SeriesItem.key(order.study, series), order.version)
            if series is not None
            else self.index.at_version(StudyItem, StudyItem.key(order.study), order.version)
        )
        if owner is None:
            return "changed"
        if self.composer.reader.exists(order.key):
            return "exists"
        instance = None if order.instance == "-" else order.instance
        try:
            items = self.index.instances(DicomWebURI("", study=order.study, series=series, instance=instance))
        except (NotFound, Gone):
            return "missing"
        try:
            if order.frame is None:
                segments, content_type = multipart_segments(items, order.syntax, self.convert)
            else:
                (item,) = items
                frame = self._frame_segments(item, order.frame, order.syntax)
                if frame is None:
                    return "missing"
                segments, content_type = frame
        except CannotDecode:  # logged by the pixel code; WADO answers 503 once it gives up
            return "undecodable"
        self.composer.compose(order.key, segments, content_type=content_type)
        self._remove_superseded(f"bundles/{order.study}/{order.series}/", order.version)
        return "built"

    def _frame_segments(
        self, item: InstanceItem, number: int, syntax: str
    ) -> tuple[list[Segment], str] | None:
        """One frame as stored (object ranges) or decompressed (``syntax`` Explicit VR LE)."""
        source = InstancePixels(self.composer.reader, item)
        index = source.index
        if index is None or not 1 <= number <= len(index):
            return None
        if syntax == media.AS_STORED:
            ranges: list[Segment] = [
                ObjectRange(item.s3_key, item.s3_version_id, offset, offset + length)
                for offset, length in index.frames[number - 1]
            ]
            return frame_segments(item.transfer_syntax_uid, ranges, index.frame_size(number))
        (decoded,) = source.decoded([number], source.stored([number]))
        return frame_segments(syntax, [decoded], len(decoded))

    def _remove_superseded(self, prefix: str, version: str) -> None:
        """Delete the bodies of older versions under ``prefix`` (no longer asked for; the
        versioned bucket keeps them recoverable for the retention period)."""
        client = self.composer.client
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.composer.bucket, Prefix=prefix)
        stale = [
            {"Key": entry["Key"]}
            for page in pages
            for entry in page.get("Contents", [])
            if f"/{version}/" not in entry["Key"]
        ]
        for start in range(0, len(stale), 1000):
            client.delete_objects(
                Bucket=self.composer.bucket, Delete={"Objects": stale[start : start + 1000]}
            )
