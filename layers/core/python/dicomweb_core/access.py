"""Object-level access rules, checked inside every API function (defence in depth).

API Gateway's JWT authorizer already checks each route's scopes (template.yaml). The
functions check again, from the same token's scopes, what the request may touch, so a
route added or edited with the wrong scopes cannot open a store:

- the primary store (``/studies``...) is read with ``dicomweb/read``, written with
  ``dicomweb/write``, deleted from with ``dicomweb/delete``;
- the de-identified research store (``/deid/...``) is read with ``dicomweb/deid.read``
  and nothing else, and no scope writes to it through the API;
- operations (``/admin/...``) need ``dicomweb/admin``;
- upload sessions (``/upload-sessions...``) need ``dicomweb/write``, their status too.

A researcher's token therefore never reaches the primary store, and a reader can never
write or delete. Unknown UIDs and UIDs of the other store answer 404 alike (each store
has its own index), so existence is not revealed across stores.

``REQUIRE_SCOPES=false`` (only the local runtime with ``AUTH=off`` sets it) turns the
check off, as there are no tokens then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import wraps
from http import HTTPStatus
from typing import Any

from dicomweb_core.web.roots import is_research


class Permission(StrEnum):
    READ = "dicomweb/read"
    DEID_READ = "dicomweb/deid.read"
    WRITE = "dicomweb/write"
    DELETE = "dicomweb/delete"
    ADMIN = "dicomweb/admin"


class NoPermission(Exception):
    """The request is outside what any scope allows (e.g. writing to the research store)."""


def required(method: str, raw_path: str) -> Permission:
    """The one scope a request needs (PS3.18 resources by method, per store)."""
    research = is_research(raw_path)
    if raw_path.startswith("/admin/"):
        return Permission.ADMIN
    if raw_path == "/upload-sessions" or raw_path.startswith("/upload-sessions/"):
        return Permission.WRITE  # a session's status is its uploader's, read or not
    if method in {"GET", "HEAD"}:
        return Permission.DEID_READ if research else Permission.READ
    if research:
        raise NoPermission("The research store is written only by de-identification.")
    if method == "DELETE":
        return Permission.DELETE
    return Permission.WRITE


def token_scopes(event: Mapping[str, Any]) -> frozenset[str]:
    jwt = ((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt") or {}
    scopes = jwt.get("scopes")
    if scopes is None:  # API Gateway also passes the raw claim
        scopes = str((jwt.get("claims") or {}).get("scope") or "").split()
    return frozenset(str(s) for s in scopes)


def token_subject(event: Mapping[str, Any]) -> str:
    """The token's subject (a user, or an app client for client credentials); "" without one."""
    jwt = ((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt") or {}
    return str((jwt.get("claims") or {}).get("sub") or "")


def denial(event: Mapping[str, Any]) -> str | None:
    """Why the request must be refused, or None when its token allows it."""
    if os.environ.get("REQUIRE_SCOPES", "true").lower() == "false":
        return None
    method = str(((event.get("requestContext") or {}).get("http") or {}).get("method") or "")
    try:
        permission = required(method, str(event.get("rawPath") or "/"))
    except NoPermission as exc:
        return str(exc)
    if permission.value not in token_scopes(event):
        return f"This request needs the {permission.value} scope."
    return None


def enforced(
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """Refuse (403) any request whose token lacks the scope for what it touches."""

    @wraps(handler)
    def wrapper(event: dict[str, Any], context: Any) -> dict[str, Any]:
        reason = denial(event)
        if reason is not None:
            body = f'{{"status":403,"error":"Forbidden","message":"{reason}"}}'
            return {
                "statusCode": int(HTTPStatus.FORBIDDEN),
                "headers": {"Content-Type": "application/json"},
                "body": body,
            }
        return handler(event, context)

    return wrapper
