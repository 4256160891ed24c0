"""Local stand-in for Cognito tokens and the API Gateway HTTP API JWT authorizer.

LOCAL DEVELOPMENT ONLY. The RSA key this package creates lives in a plain file on the
developer's disk and the tokens it mints are trusted only by the local runtime
(``make serve``). It must never be deployed, packaged into a Lambda layer, or used to sign
anything an AWS environment trusts; in the cloud, Cognito issues tokens and API Gateway
validates them.

One module per job:

- :mod:`.signing_key`: the RSA key and its JWK set (Cognito's ``jwks.json``);
- :mod:`.issuer`: access and ID tokens shaped like Cognito's (moto's Cognito cannot mint
  access tokens with resource-server scopes);
- :mod:`.authorizer`: token validation as the HTTP API JWT authorizer does it;
- :mod:`.roles`: each role's scopes, read from template.yaml when a runtime is built, its
  token and the tokens file;
- :mod:`.private_files`: the 0600 files the key and the tokens live in.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from infra.local.auth.authorizer import AuthorizationFailure, AuthorizedRequest, JwtAuthorizer
from infra.local.auth.issuer import DEFAULT_LIFETIME, TokenIssuer
from infra.local.auth.roles import ROLE_CLIENTS, issue_role_tokens, role_scopes, write_tokens_file
from infra.local.auth.signing_key import LocalSigningKey
from infra.samtemplate import load_template

__all__ = [
    "DEFAULT_LIFETIME",
    "ROLE_CLIENTS",
    "ROLE_SCOPES",
    "AuthorizationFailure",
    "AuthorizedRequest",
    "JwtAuthorizer",
    "LocalSigningKey",
    "TokenIssuer",
    "issue_role_tokens",
    "role_scopes",
    "write_tokens_file",
]


@cache
def _repository_role_scopes() -> Mapping[str, tuple[str, ...]]:
    return role_scopes(load_template())


def __getattr__(name: str) -> Mapping[str, tuple[str, ...]]:
    """``ROLE_SCOPES``: the roles' scopes in the repository's template.yaml, read on first use.

    A convenience for tests and tools; nothing reads the template when this package is
    imported, and the runtime takes its roles from its own template (:func:`role_scopes`).
    """
    if name == "ROLE_SCOPES":
        return _repository_role_scopes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
