"""The local stand-in for the API Gateway HTTP API JWT authorizer.

It validates bearer tokens the way the HTTP API JWT authorizer does (see "Authorizing API
requests with a JWT authorizer" in the API Gateway developer guide):

1. The identity source (the Authorization header) holds the token, bare or prefixed with
   ``Bearer``; a missing or empty header is refused.
2. The token is decoded; only RS256 is accepted (Cognito signs with RS256 only), so ``none``
   and HMAC algorithms (including HS256 keyed with the public key) are refused.
3. ``kid`` must name a key of the issuer's JWKS, and the signature must verify with it.
4. ``iss`` must equal the issuer; ``aud`` must be one of the audiences, or, only when the token
   has no ``aud``, ``client_id`` must be; ``exp`` must be after now; ``nbf`` and ``iat``, when
   present, must not be after now. No clock-skew leeway is allowed: the local runtime issues
   and checks tokens with the same clock, and zero leeway never accepts a token that API
   Gateway would refuse.
5. When a route has AuthorizationScopes, the token's ``scope`` (or ``scp``) claim must contain
   at least one of them.

Failures of steps 1-4 are ``401 {"message":"Unauthorized"}``, a failure of step 5 is
``403 {"message":"Forbidden"}``; both carry a ``www-authenticate`` challenge written the way
API Gateway writes it (space-separated attributes, ``scope`` first). Descriptions are fixed
texts, so nothing from the request (least of all the token) is echoed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import jwt

from infra.local.auth.signing_key import ALGORITHM

LEEWAY: Final = timedelta(0)


class AuthorizationFailure(Exception):
    """A refused request, carrying the response API Gateway would send."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        identified: AuthorizedRequest | None = None,
    ) -> None:
        super().__init__(f"{status} {body.get('message', '')}")
        self.status = status
        self.body = body
        self.headers = headers
        self.identified = identified  # a valid token that lacks the route's scope (403)

    def response(self) -> dict[str, Any]:
        """The refusal as a payload-v2 style response (statusCode, headers, body)."""
        return {
            "statusCode": self.status,
            "headers": {"content-type": "application/json", **self.headers},
            "body": json.dumps(self.body),
        }


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "").replace('"', "") + '"'


def _challenge(route_scopes: Sequence[str], error: str | None, description: str | None) -> str:
    """A ``www-authenticate`` value in API Gateway's form: ``Bearer scope="..." error=...``."""
    parts = ["Bearer", f"scope={_quoted(' '.join(route_scopes))}"]
    if error is not None:
        parts.append(f"error={_quoted(error)}")
    if description is not None:
        parts.append(f"error_description={_quoted(description)}")
    return " ".join(parts)


def _unauthorized(route_scopes: Sequence[str], description: str | None) -> AuthorizationFailure:
    """401: no token (``description`` None, so no error code, per RFC 6750) or an invalid one."""
    error = None if description is None else "invalid_token"
    headers = {"www-authenticate": _challenge(route_scopes, error, description)}
    return AuthorizationFailure(401, {"message": "Unauthorized"}, headers)


def _forbidden(route_scopes: Sequence[str]) -> AuthorizationFailure:
    description = "the token does not have any of the route's scopes"
    headers = {"www-authenticate": _challenge(route_scopes, "insufficient_scope", description)}
    return AuthorizationFailure(403, {"message": "Forbidden"}, headers)


def _go_string(value: Any) -> str:
    """A claim value as API Gateway renders it (Go's ``%v``): lists become ``[a b]``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + " ".join(_go_string(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{key}:{_go_string(value[key])}" for key in sorted(value)) + "]"
    if value is None:
        return "<nil>"
    return str(value)


@dataclass(frozen=True)
class AuthorizedRequest:
    """The outcome of a successful authorization: the token's claims and scopes."""

    claims: Mapping[str, Any] = field(repr=False)
    scopes: tuple[str, ...]

    def event_authorizer(self) -> dict[str, Any]:
        """The payload-v2 ``requestContext.authorizer`` value API Gateway passes to Lambda."""
        claims = {name: _go_string(value) for name, value in self.claims.items()}
        return {"jwt": {"claims": claims, "scopes": list(self.scopes)}}


def _token_scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """Scopes from ``scope`` (space-separated) or, failing that, ``scp`` (string or list)."""
    value = claims.get("scope")
    if not isinstance(value, str):
        value = claims.get("scp")
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _extract_token(authorization_header: str | None) -> str | None:
    """The token from ``Bearer <token>`` or a bare token; None when nothing was sent."""
    if authorization_header is None or not authorization_header.strip():
        return None
    value = authorization_header.strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value


def _numeric_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(name)
    return float(value)


class JwtAuthorizer:
    """Validates bearer tokens like an API Gateway HTTP API JWT authorizer."""

    def __init__(self, *, issuer: str, audiences: Sequence[str], jwks: Mapping[str, Any]) -> None:
        if not audiences:
            raise ValueError("a JWT authorizer needs at least one audience")
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self._keys = self._signing_keys(jwks)

    @staticmethod
    def _signing_keys(jwks: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
        """RSA signing keys of the JWK set by ``kid``; other keys are ignored."""
        keys = {}
        for data in jwks.get("keys", []):
            if data.get("kty") == "RSA" and data.get("use", "sig") == "sig" and data.get("kid"):
                keys[data["kid"]] = jwt.PyJWK(data, algorithm=ALGORITHM)
        return keys

    def authorize(
        self,
        authorization_header: str | None,
        required_scopes: Sequence[str],
        *,
        now: datetime | None = None,
    ) -> AuthorizedRequest:
        """Validate the header for a route; raise :class:`AuthorizationFailure` if refused.

        ``required_scopes`` are the route's AuthorizationScopes: empty means any valid token,
        otherwise the token needs at least one of them.
        """
        token = _extract_token(authorization_header)
        if token is None:
            raise _unauthorized(required_scopes, None)
        try:
            claims = self._verified_claims(token)
            self._check_claims(claims, (now or datetime.now(UTC)).timestamp())
        except _InvalidTokenError as exc:
            raise _unauthorized(required_scopes, exc.description) from None
        scopes = _token_scopes(claims)
        authorized = AuthorizedRequest(claims=MappingProxyType(claims), scopes=scopes)
        if required_scopes and not set(required_scopes) & set(scopes):
            failure = _forbidden(required_scopes)
            failure.identified = authorized
            raise failure
        return authorized

    def _verified_claims(self, token: str) -> dict[str, Any]:
        """Decode the token and check its algorithm, key id and signature."""
        if any(ch.isspace() for ch in token):
            raise _InvalidTokenError("the token is malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _InvalidTokenError("the token is malformed") from None
        if header.get("alg") != ALGORITHM:
            raise _InvalidTokenError("the token's signing algorithm is not supported")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise _InvalidTokenError("the token's signing key is unknown")
        return self._decode(token, key)

    @staticmethod
    def _decode(token: str, key: jwt.PyJWK) -> dict[str, Any]:
        """Verify the signature only; the claims are checked by :meth:`_check_claims`."""
        claim_checks = ("exp", "nbf", "iat", "aud", "iss", "sub", "jti")
        options: Any = {"verify_signature": True, **{f"verify_{name}": False for name in claim_checks}}
        try:
            return jwt.decode(token, key, algorithms=[ALGORITHM], options=options)
        except jwt.InvalidSignatureError:
            raise _InvalidTokenError("the token's signature is invalid") from None
        except jwt.PyJWTError:
            raise _InvalidTokenError("the token is malformed") from None

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        """iss, aud/client_id, exp, nbf and iat, in API Gateway's order, with no leeway."""
        if claims.get("iss") != self.issuer:
            raise _InvalidTokenError("the token does not have a valid issuer")
        if not self._audience_ok(claims):
            raise _InvalidTokenError("the token does not have a valid audience")
        try:
            expires, not_before, issued_at = (_numeric_claim(claims, n) for n in ("exp", "nbf", "iat"))
        except ValueError:
            raise _InvalidTokenError("the token has a malformed time claim") from None
        leeway = LEEWAY.total_seconds()
        if expires is None or now >= expires + leeway:
            raise _InvalidTokenError("the token has expired")
        if not_before is not None and now < not_before - leeway:
            raise _InvalidTokenError("the token is not valid yet")
        if issued_at is not None and now < issued_at - leeway:
            raise _InvalidTokenError("the token was issued in the future")

    def _audience_ok(self, claims: Mapping[str, Any]) -> bool:
        """``aud`` when present (string or list), otherwise ``client_id``."""
        if "aud" in claims:
            audience = claims["aud"]
            values = audience if isinstance(audience, list) else [audience]
            return any(isinstance(value, str) and value in self.audiences for value in values)
        client_id = claims.get("client_id")
        return isinstance(client_id, str) and client_id in self.audiences


class _InvalidTokenError(Exception):
    """Internal: why a token is refused with 401 (a fixed, token-free description)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description
