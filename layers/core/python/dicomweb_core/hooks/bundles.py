"""Pre-built responses for retrievals too large for a Lambda response (PS3.18 §10.4.1.1.1, §10.4.1.1.4).

A Lambda response carries about 4.4 MB of raw bytes, so a study, series or instance
retrieval above that cannot come from the retrieve function. When a series (or study)
becomes stable, the bundle hook writes the exact ``multipart/related;
type="application/dicom"`` body of each large resource as one S3 object, with the
response's Content-Type stored on the object:

- the series, and each of its instances above the limit (for a client that retrieves
  them one by one, as dicomweb-client's ``retrieve_instance`` does, in multipart);
- the study, on ``StudyStable``, when it has more than one series (a study of one series
  is answered with its series' bundle: the same body);

each as stored (``transfer-syntax=*``) and, when some instance is stored in another
syntax, in the default Explicit VR Little Endian (decompressed or transcoded by
``dicom.pixels``, with the imaging layer's codecs). Each frame above the limit is
written too, as a one-part ``multipart/related; type="application/octet-stream"`` body:
as stored and, for compressed pixel data the codecs decode, decompressed.

The retrieve function then answers ``303 See Other`` to a short-lived presigned URL of
the bundle *on the API's own host* (``wado.redirects``; CloudFront routes the
``/bundles/*`` and ``/studies/*.dcm`` paths to the bucket; see template.yaml and
docs/conformance.md), which every client follows, including those that pin the Host
header.

Bundles are composed with S3 multipart uploads: framing bytes and small instances are
buffered into parts of at least 5 MiB, and long object ranges are copied server-side
(UploadPartCopy), so memory stays bounded whatever the series size. A bundle's key names
the series/study version; the index records which version has bundles
(``bundle_version``), so the retrieve function never probes S3 for a missing one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dicomweb_core.dicom.codecs import CannotDecode
from dicomweb_core.dicom.pixels import InstancePixels, instance_in_syntax
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.index.reader import instances_of
from dicomweb_core.index.versions import at_version, record_version
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado import media
from dicomweb_core.wado.prebuilt import RESPONSE_LIMIT, bundle_key
from dicomweb_core.web.multipart import closing_delimiter, multipart_content_type, new_boundary, part_opening
from dicomweb_core.web.uri import DicomWebURI

MIN_PART = 5 * 1024 * 1024  # S3: every part but the last
BUFFER_TARGET = 8 * 1024 * 1024


def syntaxes(items: Sequence[InstanceItem]) -> list[str]:
    """The transfer syntaxes bundles are built in: as stored, and the default one when it differs."""
    if all(i.transfer_syntax_uid == media.EXPLICIT_VR_LITTLE_ENDIAN for i in items):
        return [media.AS_STORED]  # the same bytes serve both requests
    return [media.AS_STORED, media.EXPLICIT_VR_LITTLE_ENDIAN]


def needs_bundle(items: Sequence[InstanceItem]) -> bool:
    return sum(int(i.size) for i in items) > RESPONSE_LIMIT


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


# ---------------------------------------------------------------------- the hook
class BundleBuilder:
    """Builds the bundles of a stable series or study version (the bundle hook).

    Instances in another syntax than the bundle's are converted, and large compressed
    frames decompressed, by the pixel code (``dicom.pixels``) from the composer's reader.
    """

    def __init__(self, composer: BundleComposer) -> None:
        self.composer = composer

    def convert(self, item: InstanceItem, syntax: str) -> bytes:
        """The instance's Part 10 bytes in ``syntax`` (a UID other than its stored one)."""
        return instance_in_syntax(self.composer.reader, item, syntax)

    def build_series(self, study: str, series: str, version: str) -> str:
        current = at_version(SeriesItem, SeriesItem.key(study, series), version)
        if current is None:
            return "changed"
        if current.bundle_version == version:
            return "exists"
        items = instances_of(DicomWebURI("", study=study, series=series))
        written = 0
        if needs_bundle(items):
            for syntax in syntaxes(items):
                self._write(items, syntax, bundle_key(version, syntax, study, series))
                for item in items:
                    if needs_bundle([item]):
                        self._write([item], syntax, bundle_key(version, syntax, study, series, item.sop_uid))
            written += 1
        written += sum(self._write_large_frames(item, version) for item in items)
        if not written:
            return "small"
        outcome = self._record(current, SeriesItem.bundle_version)
        if outcome == "built":
            self._remove_superseded(f"bundles/{study}/{series}/", version)
        return outcome

    def build_study(self, study: str, version: str) -> str:
        current = at_version(StudyItem, StudyItem.key(study), version)
        if current is None:
            return "changed"
        if current.bundle_version == version:
            return "exists"
        items = instances_of(DicomWebURI("", study=study))
        if not needs_bundle(items):
            return "small"
        if len({item.series_uid for item in items}) == 1:
            return "single-series"  # its series' bundle serves the study (wado.redirects)
        for syntax in syntaxes(items):
            self._write(items, syntax, bundle_key(version, syntax, study))
        outcome = self._record(current, StudyItem.bundle_version)
        if outcome == "built":
            self._remove_superseded(f"bundles/{study}/-/", version)
        return outcome

    def _remove_superseded(self, prefix: str, version: str) -> None:
        """Delete the bundles of older versions under ``prefix`` (no longer referenced by the
        index; the versioned bucket keeps them recoverable for the retention period)."""
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

    def _write_large_frames(self, item: InstanceItem, version: str) -> int:
        """Frames over the limit (as stored; and decompressed, for compressed pixel data)."""
        source = InstancePixels(self.composer.reader, item)
        index = source.index
        if index is None:
            return 0
        written = 0
        key = functools.partial(bundle_key, version, study=item.study_uid, series=item.series_uid)
        decoded_size = source.decoded_size() if index.encapsulated else 0
        for number in range(1, len(index) + 1):
            size = index.frame_size(number)
            if size > RESPONSE_LIMIT:
                ranges = [
                    ObjectRange(item.s3_key, item.s3_version_id, offset, offset + length)
                    for offset, length in index.frames[number - 1]
                ]
                segments, content_type = frame_segments(item.transfer_syntax_uid, ranges, size)
                target = key(media.AS_STORED, instance=item.sop_uid, frame=number)
                self.composer.compose(target, segments, content_type=content_type)
                written += 1
            if decoded_size > RESPONSE_LIMIT:
                try:
                    (decoded,) = source.decoded([number], source.stored([number]))
                except CannotDecode:  # logged by the pixel code; the frame stays 406 uncompressed
                    continue
                syntax = media.EXPLICIT_VR_LITTLE_ENDIAN
                segments, content_type = frame_segments(syntax, [decoded], len(decoded))
                target = key(syntax, instance=item.sop_uid, frame=number)
                self.composer.compose(target, segments, content_type=content_type)
                written += 1
        return written

    def _write(self, items: Sequence[InstanceItem], syntax: str, key: str) -> None:
        segments, content_type = multipart_segments(items, syntax, self.convert)
        self.composer.compose(key, segments, content_type=content_type)

    @staticmethod
    def _record(item: SeriesItem | StudyItem, attribute: Any) -> str:
        """Announce the bundles only while this is still the current version."""
        return "built" if record_version(item, attribute) else "changed"
