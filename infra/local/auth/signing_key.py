"""The local runtime's RSA token signing key and its public JWK set.

Cognito signs its tokens with RS256 and publishes the public keys at
``/.well-known/jwks.json``; this key plays that part for ``make serve``. Its ``kid`` is the
RFC 7638 thumbprint of the public key, so it stays the same for as long as the key file does.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from infra.local.auth.private_files import restrict_mode, write_private_file

ALGORITHM: Final = "RS256"
KEY_SIZE: Final = 2048


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
            if write_private_file(path, candidate.private_pem(), overwrite=False):
                return candidate
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> LocalSigningKey:
        """Load an existing unencrypted PEM RSA private key, tightening its mode to 0600."""
        restrict_mode(path)
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
