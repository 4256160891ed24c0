"""The local token issuer: RS256 access and ID tokens shaped like Cognito's.

moto's Cognito cannot mint access tokens with resource-server scopes, so the local runtime
mints its own, with Cognito's claims in Cognito's order, signed by a :class:`LocalSigningKey`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt

from infra.local.auth.signing_key import ALGORITHM, LocalSigningKey

DEFAULT_LIFETIME: Final = timedelta(hours=12)
ACCESS: Final = "access"  # token_use of access tokens
ID: Final = "id"  # token_use of ID tokens


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
