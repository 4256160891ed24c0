"""The local roles: their scopes from template.yaml, their tokens and the tokens file.

Each role is one of the template's Cognito app clients; its scopes are the client's
resource-server ``AllowedOAuthScopes``, read from the template the runtime is built from
(template.yaml is the single source of truth), never written down here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final

from infra.local.auth.issuer import DEFAULT_LIFETIME, TokenIssuer
from infra.local.auth.private_files import write_private_file
from infra.samtemplate import Template

ROLE_CLIENTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "viewer": "ViewerClient",
        "uploader": "UploaderClient",
        "admin": "AdminClient",
        "researcher": "ResearcherClient",
    }
)


def role_scopes(template: Template) -> Mapping[str, tuple[str, ...]]:
    """Each local role's resource-server scopes: its app client's ``AllowedOAuthScopes``.

    OpenID scopes (``openid``, ``email``) are dropped; only ``<server>/<scope>`` ones are kept.
    """
    clients = template.resources_of_type("AWS::Cognito::UserPoolClient")
    allowed = {
        role: clients[logical_id]["Properties"].get("AllowedOAuthScopes", [])
        for role, logical_id in ROLE_CLIENTS.items()
    }
    return MappingProxyType({role: tuple(s for s in scopes if "/" in s) for role, scopes in allowed.items()})


def issue_role_tokens(
    issuer: TokenIssuer,
    client_ids: Mapping[str, str],
    *,
    scopes: Mapping[str, tuple[str, ...]],
    lifetime: timedelta = DEFAULT_LIFETIME,
) -> dict[str, str]:
    """One access token per role, for the role's client id (physical, as created in moto).

    ``scopes`` are the roles' scopes (:func:`role_scopes`); a role without any is refused
    rather than given a token that no scoped route accepts.
    """
    unknown = set(client_ids) - set(scopes)
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
    return {
        role: issuer.issue(client_id=client_id, scopes=scopes[role], lifetime=lifetime)
        for role, client_id in client_ids.items()
    }


def write_tokens_file(
    path: Path,
    tokens: Mapping[str, str],
    *,
    scopes: Mapping[str, tuple[str, ...]],
    base_url: str,
    expires_at: datetime,
) -> None:
    """Write the role tokens and their ``scopes`` as JSON (mode 0600, atomically) with a curl hint."""
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
        "scopes": {role: list(scopes.get(role, ())) for role in tokens},
        "tokens": dict(tokens),
    }
    write_private_file(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), overwrite=True)
