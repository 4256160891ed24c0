"""How a WADO-RS answer is sent: cache policy, validators, content coding, one-response ceiling.

- ``Cache-Control``: instances, frames and bulk data never change under their checksum
  (``immutable``, RFC 8246); metadata of a series grows, so it is revalidated
  (``no-cache``). Both are ``private``: the bodies hold PHI (RFC 9111 §5.2.2).
- ``ETag`` and ``If-None-Match``: a matching validator is ``304 Not Modified`` with the
  same ``ETag`` (RFC 9110 §13.1.2), what viewers rely on to re-open a series quickly.
- ``Content-Encoding: gzip`` for DICOM JSON when the client accepts it (RFC 9110 §8.4).
- A body over what one function response carries is ``413`` (PS3.18 §10.4 status codes)
  with what to ask instead, never a truncated answer.

docs/conformance.md ("Caching") states these choices.
"""

from __future__ import annotations

import gzip
from http import HTTPStatus

from dicomweb_core.errors import PayloadTooLarge
from dicomweb_core.wado.prebuilt import RESPONSE_LIMIT
from dicomweb_core.web.reply import Reply

IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"
GZIP_OVER = 1024  # bytes: smaller bodies are sent as they are


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` value lists ``etag`` (weak comparison) or is ``*``."""
    if not header:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return etag in tags or "*" in tags


def not_modified(etag: str) -> Reply:
    """``304 Not Modified``: the client's copy is current."""
    return Reply(int(HTTPStatus.NOT_MODIFIED), b"", None, {"ETag": f'"{etag}"'})


def ok_reply(
    body: bytes, content_type: str, *, cache: str, etag: str | None = None, gzip_ok: bool = False
) -> Reply:
    """``200 OK`` with ``body``, its cache policy and validator; gzipped when ``gzip_ok``
    and worth it; ``413`` when even so it exceeds one response."""
    headers: dict[str, str | list[str]] = {"Cache-Control": cache}
    if etag:
        headers["ETag"] = f'"{etag}"'
    if gzip_ok and len(body) > GZIP_OVER:
        body = gzip.compress(body, 6)
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    if len(body) > RESPONSE_LIMIT:
        raise PayloadTooLarge(
            "The answer is larger than one response can carry; ask with Accept-Encoding: gzip, "
            "or retrieve per series or instance."
        )
    return Reply(int(HTTPStatus.OK), body, content_type, headers)
