"""A local stand-in for API Gateway HTTP API in front of the Lambda handlers.

It does what the cloud does with each request, reading everything from template.yaml:
match a route, answer CORS preflights and add CORS headers to every response (errors and
authorizer rejections included), run the JWT authorizer with the route's scopes,
enforce the payload and time limits, build a payload-v2 event, invoke the function and
map its result back to HTTP.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import requests
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from dicomweb_core import audit
from infra.accounting.gateway import GatewayRecord
from infra.local.auth import AuthorizationFailure, AuthorizedRequest, JwtAuthorizer
from infra.local.workers import FunctionError, FunctionPool, InvocationTimeout
from infra.samtemplate import Route

# AWS limits (DESIGN.md): HTTP API payload, Lambda synchronous invocation payload.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_INVOKE_PAYLOAD_BYTES = 6 * 1024 * 1024
# S3's ceiling on a presigned URL's lifetime (SigV4 query authentication: one week).
MAX_LINK_LIFETIME_S = 7 * 24 * 3600
# One write per response up to this size; a larger body follows its head in a second write.
_SINGLE_WRITE_BYTES = 1024 * 1024
_STATUS_CODES = frozenset(status.value for status in HTTPStatus)
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


@dataclass(frozen=True)
class CorsPolicy:
    """The HttpApi CorsConfiguration (and how API Gateway applies it)."""

    allow_origins: tuple[str, ...]
    allow_headers: tuple[str, ...]
    allow_methods: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age: int

    @classmethod
    def from_template(cls, config: Mapping[str, Any], *, origins: Sequence[str]) -> CorsPolicy:
        return cls(
            allow_origins=tuple(origins),
            allow_headers=tuple(h.lower() for h in config.get("AllowHeaders", [])),
            allow_methods=tuple(m.upper() for m in config.get("AllowMethods", [])),
            expose_headers=tuple(config.get("ExposeHeaders", [])),
            max_age=int(config.get("MaxAge", 0)),
        )

    def allows(self, origin: str | None) -> bool:
        return origin is not None and ("*" in self.allow_origins or origin in self.allow_origins)

    def response_headers(self, origin: str | None) -> dict[str, str]:
        if not self.allows(origin):
            return {}
        assert origin is not None
        headers = {"access-control-allow-origin": origin, "vary": "origin"}
        if self.expose_headers:
            headers["access-control-expose-headers"] = ",".join(self.expose_headers)
        return headers

    def preflight_headers(
        self, origin: str | None, method: str, request_headers: str
    ) -> dict[str, str] | None:
        if not self.allows(origin) or method.upper() not in self.allow_methods:
            return None
        asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
        if any(h not in self.allow_headers for h in asked):
            return None
        headers = self.response_headers(origin)
        headers.update(
            {
                "access-control-allow-methods": ",".join(self.allow_methods),
                "access-control-allow-headers": ",".join(self.allow_headers),
                "access-control-max-age": str(self.max_age),
            }
        )
        return headers


@dataclass(frozen=True)
class Invoked:
    """The invocation behind a response: the function, the event's request id, its time."""

    function: str
    request_id: str
    ms: float


@dataclass
class GatewayResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    unanswered: bool = False  # the gateway answered instead of the function
    invoked: Invoked | None = None  # set when a function was invoked for it

    @classmethod
    def message(cls, status: HTTPStatus, text: str | None = None) -> GatewayResponse:
        """API Gateway's own JSON error shape: {"message": "..."}."""
        body = json.dumps({"message": text or status.phrase}).encode()
        return cls(int(status), {"content-type": "application/json"}, body, unanswered=True)


class Activity:
    """Counts invocations in flight, so state can be snapshotted while none runs."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._paused = False

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._paused)
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._paused)
            self._paused = True
            self._condition.wait_for(lambda: self._running == 0)
        try:
            yield
        finally:
            with self._condition:
                self._paused = False
                self._condition.notify_all()


class Gateway:
    """Routes, authorizes and invokes; independent of the HTTP server around it."""

    def __init__(
        self,
        *,
        routes: Sequence[Route],
        functions: Mapping[str, FunctionPool],
        authorizer: JwtAuthorizer | None,
        cors: CorsPolicy,
        api_id: str = "local",
        on_invoke: Callable[[str, str], None] | None = None,
        audit_sink: audit.AuditSink | None = None,
        objects: ObjectProxy | None = None,
        on_request: Callable[[GatewayRecord], None] | None = None,
    ) -> None:
        self.routes = list(routes)
        self.functions = functions
        self.authorizer = authorizer
        self.cors = cors
        self.api_id = api_id
        self.on_invoke = on_invoke
        self.audit_sink = audit_sink
        self.objects = objects
        # Called with each request's timing once it is answered (infra.accounting.gateway).
        self.on_request = on_request
        self.activity = Activity()

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, *, source_ip: str, host: str
    ) -> GatewayResponse:
        origin = headers.get("origin")
        response, unaudited = self._handle(method, target, headers, body, source_ip=source_ip, host=host)
        if unaudited is not None and self.audit_sink is not None:
            # The function did not run (or did not answer): record the request here, as the
            # API's access log does in the cloud.
            self.audit_sink.write(audit.http_message(unaudited, response.status))
        if method != "OPTIONS":
            response.headers.update(self.cors.response_headers(origin))
        response.headers.setdefault("apigw-requestid", uuid.uuid4().hex[:16])
        return response

    def uploads_to(self, method: str, target: str) -> bool:
        """Is ``method target`` an upload to a bucket behavior (a presigned PUT or part)?"""
        if method not in {"PUT", "POST"} or self.objects is None:
            return False
        return self.objects.bucket_for(method, urlsplit(target).path or "/") is not None

    def upload(
        self, method: str, target: str, headers: Mapping[str, str], body: _Readable
    ) -> GatewayResponse:
        """A presigned upload, streamed to the bucket: S3's answer, with CORS."""
        split = urlsplit(target)
        length = headers.get("content-length", "")
        if not length.isdigit():
            response = _s3_error(
                HTTPStatus.LENGTH_REQUIRED,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
            )
        else:
            assert self.objects is not None
            forwarded = self.objects.forward(method, split.path, split.query, body=body, length=int(length))
            assert forwarded is not None
            response = forwarded
        response.headers.update(self.cors.response_headers(headers.get("origin")))
        response.headers.setdefault("apigw-requestid", uuid.uuid4().hex[:16])
        return response

    def reject(self, status: HTTPStatus, headers: Mapping[str, str]) -> GatewayResponse:
        """A gateway-level error before routing (body too large, unreadable), with CORS."""
        response = GatewayResponse.message(status)
        response.headers.update(self.cors.response_headers(headers.get("origin")))
        return response

    def _handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, *, source_ip: str, host: str
    ) -> tuple[GatewayResponse, dict[str, Any] | None]:
        """The response, and the request's event when no function recorded it in the audit trail."""
        split = urlsplit(target)
        path = split.path or "/"
        if self.objects is not None and method in {"GET", "HEAD"}:
            served = self.objects.serve(method, path, split.query)
            if served is not None:
                return served, None
        if method == "OPTIONS" and "access-control-request-method" in headers:
            preflight = self.cors.preflight_headers(
                headers.get("origin"),
                headers["access-control-request-method"],
                headers.get("access-control-request-headers", ""),
            )
            return GatewayResponse(int(HTTPStatus.NO_CONTENT), preflight or {}), None
        matched = self._match(method, path)
        if matched is None:
            unrouted = {
                "routeKey": f"{method} {path}",
                "rawPath": path,
                "rawQueryString": split.query,
                "requestContext": {"http": {"method": method, "sourceIp": source_ip}},
            }
            return GatewayResponse.message(HTTPStatus.NOT_FOUND), unrouted
        route, path_parameters = matched
        authorized: AuthorizedRequest | None = None
        if self.authorizer is not None and route.authorizer is not None:
            try:
                authorized = self.authorizer.authorize(headers.get("authorization"), route.scopes)
            except AuthorizationFailure as failure:
                refused = self._event(
                    route,
                    path,
                    split.query,
                    path_parameters,
                    headers,
                    b"",
                    failure.identified,
                    source_ip,
                    host,
                )
                return GatewayResponse(
                    failure.status,
                    {"content-type": "application/json", **failure.headers},
                    json.dumps(failure.body).encode(),
                ), refused
        event = self._event(
            route, path, split.query, path_parameters, headers, body, authorized, source_ip, host
        )
        if len(body) > MAX_REQUEST_BYTES:
            return GatewayResponse.message(HTTPStatus.REQUEST_ENTITY_TOO_LARGE), {**event, "body": ""}
        response = self._invoke(route.function, event)
        return response, (event if response.unanswered else None)

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            if route.method not in (method, "ANY"):
                continue
            match = route.pattern.match(path)
            if match:
                return route, match.groupdict()
        return None

    def _event(  # noqa: PLR0917 (mirrors the event fields)
        self,
        route: Route,
        path: str,
        query: str,
        path_parameters: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        authorized: AuthorizedRequest | None,
        source_ip: str,
        host: str,
    ) -> dict[str, Any]:
        """A payload format 2.0 event, as HTTP API sends it to Lambda."""
        now = datetime.now(UTC)
        query_parameters: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            query_parameters[name] = (
                f"{query_parameters[name]},{value}" if name in query_parameters else value
            )
        content_type = headers.get("content-type", "")
        is_text = content_type.startswith(_TEXT_TYPES)
        request_context: dict[str, Any] = {
            "accountId": "123456789012",
            "apiId": self.api_id,
            "domainName": host,
            "domainPrefix": host.split(".", maxsplit=1)[0],
            "http": {
                "method": route.method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        }
        if authorized is not None:
            request_context["authorizer"] = authorized.event_authorizer()
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route.route_key,
            "rawPath": path,
            "rawQueryString": query,
            "headers": dict(headers),
            "requestContext": request_context,
            "isBase64Encoded": bool(body) and not is_text,
        }
        if query_parameters:
            event["queryStringParameters"] = query_parameters
        if path_parameters:
            event["pathParameters"] = dict(path_parameters)
        if body:
            event["body"] = body.decode("utf-8", "replace") if is_text else base64.b64encode(body).decode()
        return event

    def _invoke(self, function: str, event: dict[str, Any]) -> GatewayResponse:
        payload_size = len(json.dumps(event))
        if payload_size > MAX_INVOKE_PAYLOAD_BYTES:
            # Lambda refuses a request payload over 6 MB (base64 makes a body ~4/3 larger).
            return GatewayResponse.message(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        started = time.perf_counter()
        failed: GatewayResponse | None = None
        try:
            with self.activity.running():
                result = self.functions[function].invoke(event)
        except InvocationTimeout:
            failed = GatewayResponse.message(HTTPStatus.SERVICE_UNAVAILABLE)
        except FunctionError as exc:
            print(f"[{function}] unhandled error:\n{exc}", flush=True)
            failed = GatewayResponse.message(HTTPStatus.INTERNAL_SERVER_ERROR)
        finally:
            took_ms = (time.perf_counter() - started) * 1000
            if self.on_invoke is not None:
                self.on_invoke(function, f"{took_ms:.0f} ms")
        if failed is not None:
            response = failed
        elif len(json.dumps(result)) > MAX_INVOKE_PAYLOAD_BYTES:
            print(f"[{function}] response exceeds the 6 MB Lambda payload limit", flush=True)
            response = GatewayResponse.message(HTTPStatus.BAD_GATEWAY, "Internal Server Error")
        else:
            response = _http_response(result)
        request_id = str(event.get("requestContext", {}).get("requestId", ""))
        response.invoked = Invoked(function, request_id, took_ms)
        return response


@dataclass(frozen=True)
class LinkSigningKey:
    """The credentials the local runtime signs object links with, and checks them with.

    moto accepts any credentials and verifies no signature, so a fixed, well-known key
    would let anyone mint a link to any object. The runtime draws a fresh secret at each
    start and gives it to the function workers only (as their ``AWS_SECRET_ACCESS_KEY``):
    the core's presigner signs with it exactly as it signs with the function role's
    credentials in the cloud, and :class:`ObjectProxy` verifies with it as S3 does."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str

    @classmethod
    def generate(cls, region: str, *, access_key_id: str = "local") -> LinkSigningKey:
        return cls(access_key_id, secrets.token_urlsafe(32), region)

    def environment(self) -> dict[str, str]:
        """The variables a worker signs with (boto3's default credential chain reads them)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}

    def signature(self, method: str, url: str, query: Mapping[str, str], amz_date: str) -> str:
        """The SigV4 query signature S3 expects for ``method url?query`` signed at ``amz_date``.

        botocore's own presigned-URL signer computes it, pinned to the link's X-Amz-Date
        instead of the current time; ``query`` is every parameter but X-Amz-Signature."""
        signer = S3SigV4QueryAuth(Credentials(self.access_key_id, self.secret_access_key), "s3", self.region)
        request = AWSRequest(method=method, url=url, params=dict(query))
        request.context["timestamp"] = amz_date
        canonical_request = signer.canonical_request(request)
        return str(signer.signature(signer.string_to_sign(request, canonical_request), request))


class ObjectProxy:
    """CloudFront's bucket behaviors, locally: presigned object paths on the API's own host.

    As deployed, ``/studies/*.dcm`` and ``/bundles/*`` (the template's distribution) go to
    the bucket with only the query string, and S3 checks the SigV4 query signature and its
    expiry. moto checks neither, so this proxy does it before fetching anything: it
    recomputes the signature for the bucket's path-style URL on the moto endpoint (the
    host and path the core's presigner signed) with the runtime's :class:`LinkSigningKey`,
    and answers as S3 would (403 ``AccessDenied``, ``SignatureDoesNotMatch``, ...). A path
    with an empty, ``.`` or ``..`` segment, encoded or not, or an encoded separator is
    refused outright, so the object fetched is always the one the signature covers.

    Without a key (``key=None``) the proxy draws one nobody else holds and so refuses
    every link."""

    def __init__(
        self,
        routes: Sequence[tuple[re.Pattern[str], str, frozenset[str]]],
        endpoint_url: str,
        *,
        key: LinkSigningKey | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        read: ObjectRead | None = None,
    ) -> None:
        self.routes = list(routes)  # (path pattern, bucket name, methods the behavior allows)
        self.endpoint_url = endpoint_url.rstrip("/")
        self.key = key or LinkSigningKey.generate("us-east-1")
        self.clock = clock
        self.read = read  # GETs answered from moto's memory when it runs in this process

    def bucket_for(self, method: str, path: str) -> str | None:
        """The bucket a behavior serves ``method path`` from, None when none does."""
        return next(
            (name for pattern, name, methods in self.routes if method in methods and pattern.match(path)),
            None,
        )

    def serve(self, method: str, path: str, query: str) -> GatewayResponse | None:
        """The object for a signed link, an S3 error, or None when no bucket route matches."""
        return self.forward(method, path, query)

    def forward(
        self, method: str, path: str, query: str, *, body: _Readable | None = None, length: int = 0
    ) -> GatewayResponse | None:
        """A signed link's request passed on to the bucket (a PUT's body streamed, never
        held whole), an S3 error, or None when no bucket route serves ``method path``."""
        bucket = self.bucket_for(method, path)
        if bucket is None:
            return None
        if not _plain_path(path):
            return _s3_error(HTTPStatus.BAD_REQUEST, "InvalidURI", "Couldn't parse the specified URI.")
        url = f"{self.endpoint_url}/{bucket}{path}"
        refusal = self._refusal(method, url, query)
        if refusal is not None:
            return refusal
        if method == "GET" and self.read is not None:
            version = dict(parse_qsl(query)).get("versionId")
            found = self.read(bucket, unquote(path.lstrip("/")), version)
            if found is not None:
                return GatewayResponse(200, found.headers, found.body)
        answer = requests.request(
            method,
            f"{url}?{query}",
            data=_BoundedReader(body, length) if body is not None else None,
            headers={"Content-Length": str(length)} if body is not None else None,
            timeout=300,
        )
        headers = {
            name.lower(): value
            for name, value in answer.headers.items()
            if name.lower() in {"content-type", "content-length", "etag", "last-modified"}
        }
        return GatewayResponse(answer.status_code, headers, answer.content)

    def _refusal(self, method: str, url: str, query: str) -> GatewayResponse | None:
        """S3's answer to a link whose query-string authentication fails, None when it holds."""
        parameters: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in parameters:  # never in a link the runtime signs; ambiguous to check
                return _query_auth_error(f"{name} must appear once.")
            parameters[name] = value
        if "X-Amz-Signature" not in parameters:
            return _s3_error(HTTPStatus.FORBIDDEN, "AccessDenied", "Query-string authentication required")
        try:
            signed = datetime.strptime(parameters.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _query_auth_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        expires = parameters.get("X-Amz-Expires", "")
        if not expires.isdigit() or not 1 <= int(expires) <= MAX_LINK_LIFETIME_S:
            return _query_auth_error(f"X-Amz-Expires must be 1 to {MAX_LINK_LIFETIME_S} seconds.")
        if (self.clock() - signed).total_seconds() > int(expires):
            return _s3_error(HTTPStatus.FORBIDDEN, "AccessDenied", "Request has expired")
        if parameters.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or "X-Amz-Credential" not in parameters:
            return _query_auth_error(
                "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential,"
                " X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
            )
        if parameters["X-Amz-Credential"].split("/", 1)[0] != self.key.access_key_id:
            return _s3_error(
                HTTPStatus.FORBIDDEN,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            )
        unsigned = {name: value for name, value in parameters.items() if name != "X-Amz-Signature"}
        expected = self.key.signature(method, url, unsigned, parameters["X-Amz-Date"])
        if parameters.get("X-Amz-SignedHeaders") != "host" or not hmac.compare_digest(
            expected.encode(), parameters["X-Amz-Signature"].encode()
        ):
            return _s3_error(
                HTTPStatus.FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None


class _StoredBody(Protocol):
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def body(self) -> bytes: ...


# (bucket, key, version id or None) -> the whole object, None to ask the bucket over HTTP
ObjectRead = Callable[[str, str, str | None], _StoredBody | None]


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _BoundedReader:
    """The next ``length`` bytes of a client's connection, as a file for ``requests``."""

    def __init__(self, stream: _Readable, length: int) -> None:
        self.stream = stream
        self.left = length

    def read(self, size: int = -1) -> bytes:
        wanted = self.left if size < 0 else min(size, self.left)
        chunk = self.stream.read(wanted) if wanted else b""
        self.left -= len(chunk)
        return chunk

    def __len__(self) -> int:
        return self.left


def _plain_path(path: str) -> bool:
    """True when every segment of a raw request path names itself.

    No empty (``//``), ``.`` or ``..`` segment, plain or percent-encoded, and no encoded
    ``/``, ``\\``, ``%`` or control character: nothing that the HTTP client (which removes
    dot segments) or moto (which decodes the path) could turn into another key or bucket."""
    if not path.startswith("/"):
        return False
    for segment in path[1:].split("/"):
        try:
            decoded = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            return False
        if decoded in {"", ".", ".."} or not decoded.isprintable() or any(c in decoded for c in "/\\%"):
            return False
    return True


def _query_auth_error(message: str) -> GatewayResponse:
    return _s3_error(HTTPStatus.BAD_REQUEST, "AuthorizationQueryParametersError", message)


def _s3_error(status: HTTPStatus, code: str, message: str) -> GatewayResponse:
    body = "<?xml version='1.0' encoding='UTF-8'?>"
    body += f"<Error><Code>{code}</Code><Message>{xml_escape(message)}</Message>"
    body += "</Error>"
    return GatewayResponse(int(status), {"content-type": "application/xml"}, body.encode())


def _http_response(result: Any) -> GatewayResponse:
    """Map a payload-v2 Lambda result to HTTP, as API Gateway does."""
    if not isinstance(result, dict) or "statusCode" not in result:
        text = result if isinstance(result, str) else json.dumps(result)
        return GatewayResponse(200, {"content-type": "application/json"}, text.encode())
    headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name.lower()] = ", ".join(str(v) for v in values)
    if result.get("cookies"):
        headers["set-cookie"] = "; ".join(result["cookies"])
    raw = str(result.get("body") or "")
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
    # With a statusCode the function's headers are passed on as they are: API Gateway
    # assumes application/json only for a result that is not in this shape (above). An
    # empty 303 therefore has no Content-Type, which Orthanc's WADO-RS client requires.
    return GatewayResponse(int(result["statusCode"]), headers, body)


class _RequestTooLarge(Exception):
    pass


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Read a Content-Length or chunked body, never more than the API's payload limit."""
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = handler.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_REQUEST_BYTES:
                raise _RequestTooLarge
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline(16)
    length = int(handler.headers.get("content-length") or 0)
    if length > MAX_REQUEST_BYTES:
        raise _RequestTooLarge
    return handler.rfile.read(length) if length else b""


def make_server(gateway: Gateway, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "local-apigateway"
        # TCP_NODELAY on each accepted socket: with Nagle's algorithm a response's last
        # small segment waits for the ACK of the previous one, which a kept-alive client
        # delays by up to 40 ms (delayed ACK), on every request of the connection.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            started, clock = time.time(), time.perf_counter()
            self._body_bytes = 0
            response = self._answer()
            self._send(response)
            if gateway.on_request is not None:
                invoked = response.invoked
                gateway.on_request(
                    GatewayRecord(
                        method=self.command,
                        path=urlsplit(self.path).path,
                        status=response.status,
                        started=started,
                        total_ms=(time.perf_counter() - clock) * 1000,
                        function=invoked.function if invoked else None,
                        request_id=invoked.request_id if invoked else None,
                        invoke_ms=invoked.ms if invoked else 0.0,
                        request_bytes=self._body_bytes,
                        response_bytes=len(response.body),
                    )
                )

        def _answer(self) -> GatewayResponse:
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                key = name.lower()
                headers[key] = f"{headers[key]},{value}" if key in headers else value
            if gateway.uploads_to(self.command, self.path):
                response = gateway.upload(self.command, self.path, headers, self.rfile)
                if response.status >= 400:  # the body may be unread: don't parse it as a request
                    response.headers["connection"] = "close"
                return response
            try:
                body = _read_body(self)
                self._body_bytes = len(body)
            except _RequestTooLarge:
                response = gateway.reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, headers)
                response.headers["connection"] = "close"
                self.close_connection = True
                return response
            except ValueError:
                return gateway.reject(HTTPStatus.BAD_REQUEST, headers)
            return gateway.handle(
                self.command,
                self.path,
                headers,
                body,
                source_ip=self.client_address[0],
                host=headers.get("host", f"{host}:{port}"),
            )

        def _send(self, response: GatewayResponse) -> None:
            """Status line, headers and body in one write (two for a body over 1 MiB)."""
            self.log_request(response.status)
            reason = HTTPStatus(response.status).phrase if response.status in _STATUS_CODES else ""
            # One Content-Length, the body's; a HEAD answer keeps the object's size.
            length = str(len(response.body))
            if self.command == "HEAD" and not response.body:
                length = response.headers.get("content-length", length)
            lines = [
                f"{self.protocol_version} {response.status} {reason}",
                f"server: {self.version_string()}",
                f"date: {self.date_time_string()}",
                *(f"{name}: {value}" for name, value in response.headers.items() if name != "content-length"),
                f"content-length: {length}",
            ]
            if response.headers.get("connection", "").lower() == "close":
                self.close_connection = True
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            body = b"" if self.command == "HEAD" else response.body
            if len(body) <= _SINGLE_WRITE_BYTES:
                self.wfile.write(head + body)
            else:
                self.wfile.write(head)
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_HEAD = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            print(f"{self.address_string()} {format % args}", flush=True)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
