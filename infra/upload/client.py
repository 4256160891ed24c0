"""HTTP for the uploader: STOW-RS requests and upload sessions, retried where that is safe.

One ``requests.Session`` (kept-alive connections, a pool as large as the concurrency) is
shared by the worker threads. Every call is idempotent, so each is retried with
exponential backoff and jitter on a connection error, ``429`` and ``502``/``503``/``504``
(honouring ``Retry-After``):

- a STOW-RS request re-sends the same instances: one already stored by the lost attempt
  is identical and is answered as stored again (the store compares content; a *different*
  object under a stored UID follows its DuplicatePolicy, PS3.18 §10.5.3);
- an upload re-PUTs the same bytes to the same presigned URL (S3 keeps the last PUT of an
  object or part), and completing a multipart file twice completes it once.

API calls carry the bearer token; presigned URLs carry their own signature and must not
(S3 refuses a request with two authentication mechanisms).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import requests
from requests.adapters import HTTPAdapter

from dicomweb_core.web.multipart import encode_multipart, multipart_content_type
from infra.upload.auth import TokenSource
from infra.upload.files import Source
from infra.upload.outcomes import StoreResponse

RETRY_STATUSES = frozenset({429, 502, 503, 504})
CONNECT_TIMEOUT_S = 10.0
API_TIMEOUT_S = 120.0  # API Gateway ends an integration after 30 s; moto locally is slower
PUT_TIMEOUT_S = 300.0
CHUNK_BYTES = 1024 * 1024
DICOM_JSON = "application/dicom+json"

Progress = Callable[[int], None]


def _no_progress(count: int) -> None:
    return None


class UploadError(RuntimeError):
    """Base of the errors the client raises."""


class ConnectionFailure(UploadError):
    """The server could not be reached, or kept failing, after every retry."""


class Refused(UploadError):
    """The server answered a request with an error status that retrying cannot change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.message = message


class Unauthorized(Refused):
    """401 or 403 from the API: the token is missing, expired or lacks dicomweb/write."""


class PayloadTooLarge(Refused):
    """413: the request body is over what the API takes."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (full jitter, AWS's advice)."""
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_delay_s)
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))  # noqa: S311


def error_message(response: requests.Response) -> str:
    """What an error answer says: the API's JSON ``message``, S3's XML ``<Message>``, or text."""
    text = response.text[:2000]
    try:
        document = response.json()
        if isinstance(document, Mapping) and document.get("message"):
            return str(document["message"])[:300]
    except ValueError:
        pass
    found = re.search(r"<Message>(.*?)</Message>", text, re.DOTALL)
    if found:
        return found.group(1).strip()[:300]
    return " ".join(text.split())[:300]


class _Body:
    """A region of a file as a request body: read in chunks as it is sent, counted for the
    progress bar, opened afresh for each attempt."""

    def __init__(self, source: Source, offset: int, size: int, progress: Progress) -> None:
        self.source, self.offset, self.size, self.progress = source, offset, size, progress
        self.sent = 0
        self._stream: IO[bytes] | None = None

    def __len__(self) -> int:
        return self.size

    def read(self, count: int = -1) -> bytes:
        if self._stream is None:
            self._stream = self.source.open()
            if self.offset:
                self._stream.seek(self.offset)
        left = self.size - self.sent
        count = left if count is None or count < 0 else min(count, left)
        data = self._stream.read(count) if count else b""
        self.sent += len(data)
        self.progress(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


@dataclass(frozen=True, slots=True)
class StowAnswer:
    status: int
    response: StoreResponse


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    url: str


@dataclass(frozen=True, slots=True)
class SessionFile:
    """One file of an open session: one presigned PUT, or parts and a complete URL."""

    index: int
    name: str
    size: int
    url: str | None = None
    part_size: int = 0
    parts: tuple[Part, ...] = ()
    complete: str | None = None

    @property
    def multipart(self) -> bool:
        return self.url is None


@dataclass(frozen=True, slots=True)
class OpenSession:
    session_id: str
    status_url: str
    expires_at: str
    files: tuple[SessionFile, ...] = field(default=())

    @classmethod
    def read(cls, document: Mapping[str, Any]) -> OpenSession:
        files = []
        for item in document["files"]:
            parts = tuple(Part(int(p["partNumber"]), str(p["url"])) for p in item.get("parts") or ())
            files.append(
                SessionFile(
                    index=int(item["index"]),
                    name=str(item["name"]),
                    size=int(item["size"]),
                    url=str(item["url"]) if item.get("url") else None,
                    part_size=int(item.get("partSize") or 0),
                    parts=parts,
                    complete=str(item["complete"]) if item.get("complete") else None,
                )
            )
        return cls(
            str(document["sessionId"]),
            str(document["status"]),
            str(document.get("expiresAt", "")),
            tuple(files),
        )


class UploadClient:
    """The DICOMweb API and its presigned URLs, for one base URL and token source."""

    def __init__(
        self,
        base_url: str,
        auth: TokenSource,
        *,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.http = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, 2 * concurrency), max_retries=0)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ transport
    def _send(
        self,
        method: str,
        url: str,
        *,
        api: bool,
        timeout: float = API_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        body: Callable[[], _Body] | None = None,
    ) -> requests.Response:
        """One idempotent request, retried; 401 from the API renews the token once."""
        renewed = False
        attempt = 0
        while True:
            sent_headers = dict(headers or {})
            if api:
                sent_headers["Authorization"] = f"Bearer {self.auth.token()}"
            stream = body() if body is not None else None
            try:
                response = self.http.request(
                    method,
                    url,
                    data=stream if stream is not None else data,
                    headers=sent_headers,
                    timeout=(CONNECT_TIMEOUT_S, timeout),
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if stream is not None:
                    stream.progress(-stream.sent)
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise ConnectionFailure(f"{method} {_shown(url)}: {exc}") from None
                self._sleep(self.retry.delay(attempt))
                continue
            finally:
                if stream is not None:
                    stream.close()
            if response.status_code in RETRY_STATUSES and attempt + 1 < self.retry.attempts:
                if stream is not None:
                    stream.progress(-stream.sent)
                attempt += 1
                self._sleep(self.retry.delay(attempt, response.headers.get("Retry-After")))
                continue
            if api and response.status_code == 401 and not renewed and self.auth.renew():
                renewed = True
                if stream is not None:
                    stream.progress(-stream.sent)
                continue
            return response

    def _api_json(self, method: str, url: str, document: Any, expected: Sequence[int]) -> Any:
        response = self._send(
            method,
            url,
            api=True,
            data=json.dumps(document).encode() if document is not None else None,
            headers={"Content-Type": "application/json", "Accept": "application/json"}
            if document is not None
            else {"Accept": "application/json"},
        )
        _raise_for(response, expected)
        try:
            return response.json()
        except ValueError:
            raise Refused(response.status_code, "the answer is not JSON") from None

    # ------------------------------------------------------------------ STOW-RS
    def stow(self, payloads: Sequence[bytes]) -> StowAnswer:
        """POST {base}/studies with the instances as multipart/related (PS3.18 §10.5.1)."""
        body, boundary = encode_multipart(({"Content-Type": "application/dicom"}, p) for p in payloads)
        response = self._send(
            "POST",
            f"{self.base_url}/studies",
            api=True,
            data=body,
            headers={
                "Content-Type": multipart_content_type(boundary, "application/dicom"),
                "Accept": DICOM_JSON,
            },
        )
        if response.status_code in (200, 202, 409) and response.content:
            try:
                document = response.json()
            except ValueError:
                raise Refused(response.status_code, "the Store Instances Response is not JSON") from None
            warnings = response.raw.headers.getlist("Warning") if response.raw is not None else []
            return StowAnswer(response.status_code, StoreResponse.read(document, warnings=warnings))
        _raise_for(response, ())
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ upload sessions
    def open_session(self, files: Sequence[Mapping[str, Any]]) -> OpenSession:
        """POST {base}/upload-sessions: presigned URLs for each declared file."""
        document = self._api_json("POST", f"{self.base_url}/upload-sessions", {"files": list(files)}, (201,))
        try:
            return OpenSession.read(document)
        except (KeyError, TypeError, ValueError) as exc:
            raise Refused(201, f"the session's description is not as documented: {exc!r}") from None

    def put(self, url: str, source: Source, *, offset: int, size: int, progress: Progress) -> str:
        """PUT a file, or one part of it, to its presigned URL; the ETag S3 answers."""
        response = self._send(
            "PUT",
            url,
            api=False,
            timeout=PUT_TIMEOUT_S,
            headers={"Content-Length": str(size)},
            body=lambda: _Body(source, offset, size, progress),
        )
        _raise_for(response, (200,), api=False)
        return response.headers.get("ETag", "")

    def complete(self, url: str, etags: Mapping[int, str]) -> None:
        """POST a multipart file's complete URL with its parts' ETags, in part order."""
        parts = [{"partNumber": number, "etag": etags[number]} for number in sorted(etags)]
        self._api_json("POST", url, {"parts": parts}, (200, 202))

    def session_status(self, url: str) -> Mapping[str, Any]:
        document = self._api_json("GET", url, None, (200,))
        if not isinstance(document, Mapping):
            raise Refused(200, "the session status is not a JSON object")
        return document


def _raise_for(response: requests.Response, expected: Sequence[int], *, api: bool = True) -> None:
    """Raise what an unexpected status means. A presigned URL's 403 (expired, or a bad
    signature) is that URL's failure, not the token's."""
    status = response.status_code
    if status in expected:
        return
    message = error_message(response)
    if api and status in (401, 403):
        raise Unauthorized(status, message)
    if status == 413:
        raise PayloadTooLarge(status, message)
    raise Refused(status, message)


def _shown(url: str) -> str:
    """A URL without its query: presigned signatures do not belong in messages."""
    return url.split("?", 1)[0]
