"""Bearer tokens for the uploader: given, obtained with client credentials, or the local stack's.

- A token given with ``--token`` or ``DICOMWEB_TOKEN`` is used as it is.
- For a deployed stack, a machine client (the template's ``uploader`` app client) gets its
  token from Cognito's token endpoint with the OAuth 2.0 client-credentials grant (RFC 6749
  §4.4): ``POST <token URL>`` with ``grant_type=client_credentials`` and the scope, the
  client id and secret in HTTP Basic authentication (§2.3.1). The token is renewed before
  it expires and once more if the API refuses it.
- Otherwise, the local stack: ``make serve`` writes ``$LOCAL_DIR/tokens.json`` with the
  API's base URL and a token per role; the ``uploader`` role's is taken.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

LOCAL_ROLE = "uploader"
# Renew a client-credentials token this long before Cognito says it expires.
RENEW_BEFORE_S = 60.0
TOKEN_TIMEOUT_S = 30.0


class AuthError(RuntimeError):
    """No usable credentials, or the token endpoint refused them."""


class TokenSource(Protocol):
    def token(self) -> str:
        """The bearer token to send now."""
        ...

    def renew(self) -> bool:
        """Get a new token after the API refused the current one; False when it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A token given by the user: sent as it is, never renewed."""

    value: str

    def token(self) -> str:
        return self.value

    def renew(self) -> bool:
        return False


class ClientCredentials:
    """Tokens from an OAuth 2.0 token endpoint (Cognito's ``/oauth2/token``), client-credentials grant."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        *,
        http: requests.Session | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self._http = http or requests.Session()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def renew(self) -> bool:
        with self._lock:
            self._fetch()
        return True

    def _fetch(self) -> None:
        try:
            answer = self._http.post(
                self.token_url,
                data={"grant_type": "client_credentials", "scope": self.scope},
                auth=(self.client_id, self._secret),
                headers={"Accept": "application/json"},
                timeout=TOKEN_TIMEOUT_S,
            )
        except requests.RequestException as exc:
            raise AuthError(f"the token endpoint {self.token_url} cannot be reached: {exc}") from None
        if answer.status_code != 200:
            detail = answer.text[:200].strip()
            raise AuthError(f"the token endpoint answered {answer.status_code}: {detail}")
        try:
            document = answer.json()
            token = str(document["access_token"])
            lifetime = float(document.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise AuthError("the token endpoint's answer has no access_token") from None
        self._token = token
        self._renew_at = time.monotonic() + max(lifetime - RENEW_BEFORE_S, lifetime / 2)


@dataclass(frozen=True, slots=True)
class LocalStack:
    """What ``make serve`` wrote to ``$LOCAL_DIR/tokens.json``."""

    base_url: str
    token: str


def read_local_stack(local_dir: Path, role: str = LOCAL_ROLE) -> LocalStack:
    """The local runtime's base URL and ``role``'s token, from its tokens file."""
    path = local_dir / "tokens.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return LocalStack(str(document["base_url"]).rstrip("/"), str(document["tokens"][role]))
    except FileNotFoundError:
        raise AuthError(
            f"no credentials: {path} does not exist. Start the local stack (make serve), or pass"
            " --url with --token (or DICOMWEB_TOKEN), or --client-id, --client-secret and --token-url"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"{path} has no base_url and {role!r} token") from None


@dataclass(frozen=True, slots=True)
class Target:
    """Where to upload, and with what token."""

    base_url: str
    auth: TokenSource


def resolve_target(
    *,
    url: str | None,
    token: str | None,
    client_id: str | None,
    client_secret: str | None,
    token_url: str | None,
    scope: str,
    environ: Mapping[str, str] = os.environ,
) -> Target:
    """The target from the command line, then the environment (``DICOMWEB_URL``,
    ``DICOMWEB_TOKEN``, ``DICOMWEB_CLIENT_ID``, ``DICOMWEB_CLIENT_SECRET``,
    ``DICOMWEB_TOKEN_URL``), then the local stack's tokens file."""
    url = url or environ.get("DICOMWEB_URL") or None
    token = token or environ.get("DICOMWEB_TOKEN") or None
    client_id = client_id or environ.get("DICOMWEB_CLIENT_ID") or None
    client_secret = client_secret or environ.get("DICOMWEB_CLIENT_SECRET") or None
    token_url = token_url or environ.get("DICOMWEB_TOKEN_URL") or None
    if token is not None:
        if url is None:
            url = read_local_stack(Path(environ.get("LOCAL_DIR", ".local"))).base_url
        return Target(url.rstrip("/"), StaticToken(token))
    if client_id or client_secret or token_url:
        missing = [
            name
            for name, value in (
                ("--client-id", client_id),
                ("--client-secret", client_secret),
                ("--token-url", token_url),
                ("--url", url),
            )
            if not value
        ]
        if missing:
            raise AuthError(f"client credentials need {', '.join(missing)} as well")
        assert client_id and client_secret and token_url and url
        return Target(url.rstrip("/"), ClientCredentials(token_url, client_id, client_secret, scope))
    local = read_local_stack(Path(environ.get("LOCAL_DIR", ".local")))
    if url is not None and url.rstrip("/") != local.base_url:
        # The local stack's token is for the local stack only: never sent anywhere else.
        raise AuthError(
            f"no credentials for {url}: pass --token (or DICOMWEB_TOKEN), or --client-id,"
            " --client-secret and --token-url"
        )
    return Target(local.base_url, StaticToken(local.token))
