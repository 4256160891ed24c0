"""Retrievals larger than a function response: a redirect on the API's own host, or 413.

A Lambda response carries about 4.4 MB of raw body, less than many instances, series and
some single frames (PS3.18 §10.4.1.1.1 and §10.4.1.1.4 set no size limit). Such an
answer is ``303 See Other`` (RFC 9110 §15.4.4) to a short-lived presigned path of a
stored object on the API's own host, which clients that pin their ``Host`` header follow
too (``ObjectReader.same_host_url``):

- one instance as single-part ``application/dicom`` as stored: the stored object itself;
- a multipart study, series or instance, or one frame: its exact body, built once when it
  is first asked for (``wado.bundles``) and kept for ``BundleRetentionDays``.

A body that is not built yet is ordered (a message to ``BundleQueue``). The request then
waits for it, up to ``wait_seconds``; when that is not enough for a large series, the
answer is ``303`` to the same URL with ``bundle-wait=<round>`` added, which every HTTP
client follows (requests and dicomweb-client up to 30 times, browsers 20, curl with
``-L``), so one request is answered once the body exists. Nothing is built ahead of time,
so a series that is never retrieved whole costs no second copy (docs/cost.md).

Everything else too large, and anything too large in the research store (which builds no
bodies), is ``413`` saying what to ask instead (docs/conformance.md, "Responses larger
than a Lambda response").
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlencode

from dicomweb_core.dicom.pixels import UNCOMPRESSED
from dicomweb_core.errors import PayloadTooLarge, ServiceUnavailable
from dicomweb_core.index.access import Index
from dicomweb_core.index.models import InstanceItem, SeriesItem, StudyItem
from dicomweb_core.storage import ObjectReader
from dicomweb_core.wado import media, prebuilt
from dicomweb_core.wado.prebuilt import BundleOrder
from dicomweb_core.web.reply import Reply
from dicomweb_core.web.uri import DicomWebURI

REDIRECT_SECONDS = 300  # lifetime of a presigned path
WAIT_PARAMETER = "bundle-wait"  # the round of a request waiting for its body
ORDERED_PARAMETER = "bundle-version"  # the version whose body the earlier round ordered
WAIT_ROUNDS = 25  # redirects to itself before 503 (clients follow 20 to 30)
POLL_SECONDS = 0.5


class BundleOrders(Protocol):
    """Where a body to build is ordered (``BundleQueue``, read by BundleFunction)."""

    def place(self, order: BundleOrder) -> None: ...


class LargeAnswers:
    """Answers the retrievals of one store that are over the response limit."""

    def __init__(
        self,
        reader: ObjectReader,
        index: Index,
        *,
        public_objects: bool,
        orders: BundleOrders | None = None,
        wait_seconds: float = 0.0,
    ) -> None:
        self.reader = reader
        self.index = index
        # Whether the bucket's objects are reachable on the API's host (primary store only).
        self.public_objects = public_objects
        self.orders = orders
        self.wait_seconds = wait_seconds

    def instances(
        self,
        uri: DicomWebURI,
        items: Sequence[InstanceItem],
        choice: media.Choice,
        query: Mapping[str, str],
    ) -> Reply:
        """A redirect to the stored instance, or to the resource's built body."""
        total_mb = sum(int(i.size) for i in items) / 1e6
        if not self.public_objects:
            raise PayloadTooLarge(
                f"The {len(items)} instance(s) total {total_mb:.1f} MB, more than one response can "
                "carry, and the research store builds no bodies for such responses; retrieve instances "
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
            self.index.series(uri.study, series) if series is not None else self.index.study(uri.study)
        )
        order = BundleOrder(owner.version, syntax, uri.study, series or "-", uri.instance or "-")
        return self._built(order, uri.base_url, uri.url, query, what=f"The response ({total_mb:.1f} MB)")

    def frame(
        self,
        uri: DicomWebURI,
        query: Mapping[str, str],
        item: InstanceItem,
        number: int,
        size: int,
        *,
        actual: str,
        part_type: str,
        url: str | None = None,
    ) -> Reply:
        """A redirect to one frame's built body: ``application/octet-stream``, as stored or
        (for compressed pixel data) decompressed to Explicit VR Little Endian. ``url`` is
        where it was asked for, when not ``uri`` itself (a bulk data path)."""
        what = f"Frame {number} is {size / 1e6:.1f} MB, more than one function response can carry"
        if not self.public_objects:
            raise PayloadTooLarge(f"{what}, and the research store builds no bodies for such responses.")
        stored = item.transfer_syntax_uid
        decompressed = stored not in UNCOMPRESSED and actual == media.EXPLICIT_VR_LITTLE_ENDIAN
        if part_type != media.OCTET_STREAM or not (actual == stored or decompressed):
            raise PayloadTooLarge(
                f"{what}; it is built only as application/octet-stream, as stored (transfer-syntax=*) "
                "or decompressed (Explicit VR Little Endian)."
            )
        series = self.index.series(item.study_uid, item.series_uid)
        syntax = media.EXPLICIT_VR_LITTLE_ENDIAN if decompressed else media.AS_STORED
        order = BundleOrder(series.version, syntax, item.study_uid, item.series_uid, item.sop_uid, number)
        return self._built(order, uri.base_url, url or uri.url, query, what=what)

    def _built(
        self, order: BundleOrder, base_url: str, url: str, query: Mapping[str, str], *, what: str
    ) -> Reply:
        """A redirect to the order's body: at once when it exists; else ordered (on a
        request's first round, or when the resource has a new version since the earlier
        round ordered one: its body would never be built), waited for, and if still
        missing, a redirect to ``url`` for the next round."""
        rounds = _wait_round(query)
        if self.reader.exists(order.key):
            return self._redirect(order.key, None, base_url)
        if self.orders is None:
            raise PayloadTooLarge(f"{what} is larger than one function response can carry.")
        if rounds == 0 or query.get(ORDERED_PARAMETER) != order.version:
            self.orders.place(order)
        elif rounds >= WAIT_ROUNDS:
            raise ServiceUnavailable(
                f"{what} is larger than one function response can carry, and its body is still "
                "being built; retry later, or retrieve instances one at a time.",
                retry_after=30,
            )
        deadline = time.monotonic() + self.wait_seconds
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            if self.reader.exists(order.key):
                return self._redirect(order.key, None, base_url)
        next_round = {**query, WAIT_PARAMETER: str(rounds + 1), ORDERED_PARAMETER: order.version}
        again = f"{url}?{urlencode(next_round)}"
        return Reply(int(HTTPStatus.SEE_OTHER), b"", None, {"Location": again, "Cache-Control": "no-store"})

    def _redirect(self, key: str, version_id: str | None, base_url: str) -> Reply:
        url = self.reader.same_host_url(
            key, version_id=version_id, public_base_url=base_url, expires_in=REDIRECT_SECONDS
        )
        return Reply(int(HTTPStatus.SEE_OTHER), b"", None, {"Location": url, "Cache-Control": "no-store"})


def _wait_round(query: Mapping[str, str]) -> int:
    """The round of a request redirected to itself while its body is built (0: the first)."""
    value = query.get(WAIT_PARAMETER, "0")
    return int(value) if value.isdigit() else 0
