"""Retrievals larger than one function response: a redirect on the API's own host, or 413.

A Lambda response carries about 4.4 MB of raw body, less than many instances, series and
some single frames (PS3.18 §10.4.1.1.1 and §10.4.1.1.4 set no size limit). Such an
answer is ``303 See Other`` (RFC 9110 §15.4.4) to a short-lived presigned path of a
stored object on the API's own host, which clients that pin their ``Host`` header follow
too (``ObjectReader.same_host_url``):

- one instance as single-part ``application/dicom`` as stored: the stored object itself;
- a multipart study, series or instance, or one frame: the exact body the bundle hook
  pre-built when the series (or study) became stable (``hooks.bundles``), if it exists
  for the current version; until then ``413`` with ``Retry-After``.

Everything else too large, and anything too large in the research store (which has no
pre-built bodies), is ``413`` saying what to ask instead (docs/conformance.md, "Responses
larger than a Lambda response").
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from dicomweb_core.dicom.pixels import UNCOMPRESSED
from dicomweb_core.errors import PayloadTooLarge
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.index.reader import series_item, study_item
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado import media, prebuilt
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

REDIRECT_SECONDS = 300  # lifetime of a presigned path


class LargeAnswers:
    """Answers the retrievals of one store that are over the response limit."""

    def __init__(self, reader: ObjectReader, *, public_objects: bool) -> None:
        self.reader = reader
        # Whether the bucket's objects are reachable on the API's host (primary store only).
        self.public_objects = public_objects

    def instances(self, uri: DicomWebURI, items: Sequence[InstanceItem], choice: media.Choice) -> Reply:
        """A redirect to the stored instance, or to the resource's pre-built body."""
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
        syntax = prebuilt.bundle_syntax(choice.transfer_syntax, items)
        # A study of one series has no bundle of its own: its series' bundle is the same body.
        series_uids = {i.series_uid for i in items}
        series = uri.series or (series_uids.pop() if len(series_uids) == 1 else None)
        owner: SeriesItem | StudyItem = (
            series_item(uri.study, series) if series is not None else study_item(uri.study)
        )
        if owner.bundle_version == owner.version:
            key = prebuilt.bundle_key(owner.version, syntax, uri.study, series or "-", uri.instance or "-")
            return self._redirect(key, None, uri.base_url)
        raise PayloadTooLarge(
            f"The response ({total_mb:.1f} MB) is larger than one function response can carry. It is "
            "prepared as a pre-built response once the series has received no new instance for the "
            "stable age (a minute by default); retry then, or retrieve instances one at a time.",
            retry_after=60,
        )

    def frame(
        self, uri: DicomWebURI, item: InstanceItem, number: int, size: int, *, actual: str, part_type: str
    ) -> Reply:
        """A redirect to one frame's pre-built body: ``application/octet-stream``, as stored or
        (for compressed pixel data) decompressed to Explicit VR Little Endian."""
        what = f"Frame {number} is {size / 1e6:.1f} MB, more than one function response can carry"
        if not self.public_objects:
            raise PayloadTooLarge(f"{what}, and the research store serves no pre-built responses.")
        stored = item.transfer_syntax_uid
        decompressed = stored not in UNCOMPRESSED and actual == media.EXPLICIT_VR_LITTLE_ENDIAN
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
        key = prebuilt.bundle_key(series.version, syntax, uri.study, uri.series, item.sop_uid, frame=number)
        return self._redirect(key, None, uri.base_url)

    def _redirect(self, key: str, version_id: str | None, base_url: str) -> Reply:
        url = self.reader.same_host_url(
            key, version_id=version_id, public_base_url=base_url, expires_in=REDIRECT_SECONDS
        )
        return Reply(int(HTTPStatus.SEE_OTHER), b"", None, {"Location": url, "Cache-Control": "no-store"})
