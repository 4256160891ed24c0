"""Local stand-in for Cognito tokens and the API Gateway HTTP API JWT authorizer.

LOCAL DEVELOPMENT ONLY. The RSA key this module creates lives in a plain file on the
developer's disk and the tokens it mints are trusted only by the local runtime
(``make serve``). It must never be deployed, packaged into a Lambda layer, or used to sign
anything an AWS environment trusts; in the cloud, Cognito issues tokens and API Gateway
validates them.

moto's Cognito cannot mint access tokens with resource-server scopes, so the local runtime
issues its own tokens shaped like Cognito's and validates them the way the HTTP API JWT
authorizer does (see "Authorizing API requests with a JWT authorizer" in the API Gateway
developer guide):

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

import base64
import hashlib
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from infra.samtemplate import Template, load_template

ALGORITHM: Final = "RS256"
KEY_SIZE: Final = 2048
DEFAULT_LIFETIME: Final = timedelta(hours=12)
LEEWAY: Final = timedelta(0)
PRIVATE_FILE_MODE: Final = 0o600
ACCESS: Final = "access"  # token_use of access tokens
ID: Final = "id"  # token_use of ID tokens

ROLE_CLIENTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "viewer": "ViewerClient",
        "uploader": "UploaderClient",
        "admin": "AdminClient",
        "researcher": "ResearcherClient",
    }
)


# ---------------------------------------------------------------- files


def _write_private_file(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Atomically write ``data`` to ``path`` with mode 0600; never exposes a partial file.

    With ``overwrite=False`` an existing file is kept (it may have been created concurrently)
    and False is returned; otherwise True.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), PRIVATE_FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            tmp.replace(path)
            return True
        try:
            os.link(tmp, path)  # fails instead of clobbering a key created meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _restrict_mode(path: Path) -> None:
    """Take group and other permissions away from an existing private file."""
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(PRIVATE_FILE_MODE)


# ---------------------------------------------------------------- signing key


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _rfc7638_thumbprint(public_numbers: rsa.RSAPublicNumbers) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public key."""
    members = {"e": _b64url_uint(public_numbers.e), "kty": "RSA", "n": _b64url_uint(public_numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


class LocalSigningKey:
    """The local runtime's RSA-2048 token signing key. Local development only."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        if private_key.key_size < KEY_SIZE:
            raise ValueError(f"the signing key must have at least {KEY_SIZE} bits")
        self._private_key = private_key
        self._kid = _rfc7638_thumbprint(private_key.public_key().public_numbers())

    @classmethod
    def generate(cls) -> LocalSigningKey:
        """A fresh key that lives only in memory."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE))

    @classmethod
    def load_or_create(cls, path: Path) -> LocalSigningKey:
        """Load the PEM key at ``path``, creating it (mode 0600, atomically) if it is missing.

        Reusing the file keeps the ``kid`` and every issued token valid across restarts.
        """
        if not path.exists():
            candidate = cls.generate()
            if _write_private_file(path, candidate.private_pem(), overwrite=False):
                return candidate
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> LocalSigningKey:
        """Load an existing unencrypted PEM RSA private key, tightening its mode to 0600."""
        _restrict_mode(path)
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return cls(private_key)

    @property
    def kid(self) -> str:
        """The key id: the RFC 7638 thumbprint of the public key, stable for the key's life."""
        return self._kid

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return self._private_key

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self._private_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK, as Cognito publishes it."""
        numbers = self._private_key.public_key().public_numbers()
        return {
            "alg": ALGORITHM,
            "e": _b64url_uint(numbers.e),
            "kid": self._kid,
            "kty": "RSA",
            "n": _b64url_uint(numbers.n),
            "use": "sig",
        }

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWK set (the issuer's ``/.well-known/jwks.json``)."""
        return {"keys": [self.public_jwk()]}


# ---------------------------------------------------------------- issuing


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return int(moment.timestamp())


def _check_scopes(scopes: Sequence[str]) -> None:
    for scope in scopes:
        if not scope or any(ch.isspace() for ch in scope):
            raise ValueError(f"invalid scope {scope!r}")


class TokenIssuer:
    """Mints RS256 tokens shaped like Cognito's, signed with a :class:`LocalSigningKey`."""

    def __init__(self, key: LocalSigningKey, issuer: str) -> None:
        self.key = key
        self.issuer = issuer

    def issue(
        self,
        *,
        client_id: str,
        scopes: Sequence[str],
        subject: str | None = None,
        lifetime: timedelta = DEFAULT_LIFETIME,
        token_use: str = ACCESS,
        not_before: datetime | None = None,
        now: datetime | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed token; ``token_use`` "access" (default) or "id" (scopes are ignored).

        ``sub`` defaults to ``client_id``, as in Cognito's client_credentials tokens; ``nbf``
        appears only when ``not_before`` is given; ``extra`` claims are added last.
        """
        issued_at = _epoch(now or datetime.now(UTC))
        common = {
            "sub": subject or client_id,
            "iss": self.issuer,
            "auth_time": issued_at,
            "iat": issued_at,
            "exp": issued_at + int(lifetime.total_seconds()),
            "jti": str(uuid.uuid4()),
        }
        if token_use == ACCESS:
            _check_scopes(scopes)
            claims = self._access_claims(common, client_id, scopes)
        elif token_use == ID:
            claims = self._id_claims(common, client_id)
        else:
            raise ValueError(f"token_use must be 'access' or 'id', not {token_use!r}")
        if not_before is not None:
            claims["nbf"] = _epoch(not_before)
        claims.update(extra or {})
        return jwt.encode(claims, self.key.private_key, algorithm=ALGORITHM, headers={"kid": self.key.kid})

    @staticmethod
    def _access_claims(common: Mapping[str, Any], client_id: str, scopes: Sequence[str]) -> dict[str, Any]:
        """Cognito access token claims, in Cognito's order; no ``aud``."""
        return {
            "sub": common["sub"],
            "token_use": ACCESS,
            "scope": " ".join(scopes),
            "auth_time": common["auth_time"],
            "iss": common["iss"],
            "exp": common["exp"],
            "iat": common["iat"],
            "version": 2,
            "jti": common["jti"],
            "client_id": client_id,
        }

    @staticmethod
    def _id_claims(common: Mapping[str, Any], client_id: str) -> dict[str, Any]:
        """Cognito ID token claims: ``aud`` is the client id and there is no ``scope``."""
        return {
            "sub": common["sub"],
            "aud": client_id,
            "iss": common["iss"],
            "cognito:username": common["sub"],
            "token_use": ID,
            "auth_time": common["auth_time"],
            "exp": common["exp"],
            "iat": common["iat"],
            "jti": common["jti"],
        }


# ---------------------------------------------------------------- authorizing


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


# ---------------------------------------------------------------- roles


def role_scopes(template: Template | None = None) -> dict[str, tuple[str, ...]]:
    """Each local role's resource-server scopes: its app client's ``AllowedOAuthScopes``.

    OpenID scopes (``openid``, ``email``) are dropped; only ``<server>/<scope>`` ones are kept.
    """
    clients = (template or load_template()).resources_of_type("AWS::Cognito::UserPoolClient")
    return {
        role: tuple(s for s in clients[logical_id]["Properties"].get("AllowedOAuthScopes", []) if "/" in s)
        for role, logical_id in ROLE_CLIENTS.items()
    }


ROLE_SCOPES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(role_scopes())


def issue_role_tokens(
    issuer: TokenIssuer, client_ids: Mapping[str, str], *, lifetime: timedelta = DEFAULT_LIFETIME
) -> dict[str, str]:
    """One access token per role, for the role's client id (physical, as created in moto)."""
    unknown = set(client_ids) - set(ROLE_SCOPES)
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
    return {
        role: issuer.issue(client_id=client_id, scopes=ROLE_SCOPES[role], lifetime=lifetime)
        for role, client_id in client_ids.items()
    }


def write_tokens_file(path: Path, tokens: Mapping[str, str], *, base_url: str, expires_at: datetime) -> None:
    """Write the role tokens as JSON (mode 0600, atomically) with a curl usage hint."""
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    example_role = next(iter(tokens), "viewer")
    document = {
        "warning": "Local development tokens, signed by a local key; they grant nothing in AWS.",
        "base_url": base_url,
        "expires_at": expires_at.astimezone(UTC).isoformat(),
        "usage": (
            f'curl -H "Authorization: Bearer $(jq -r .tokens.{example_role} {path})" '
            f"{base_url.rstrip('/')}/studies"
        ),
        "scopes": {role: list(ROLE_SCOPES.get(role, ())) for role in tokens},
        "tokens": dict(tokens),
    }
    _write_private_file(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), overwrite=True)
