"""Cognito groups → OAuth scopes for human users (pre token generation trigger, event V2).

Machine clients (hospital gateways, pipelines) get their scopes from their app client
(client credentials; the trigger does not run for them). People sign in through the
viewer client, and what they may do depends on who they are, not on the app: the trigger
adds the ``dicomweb/*`` scopes their groups grant to the access token and removes every
other ``dicomweb/*`` scope, so a viewer-client user in no group can read nothing.
API Gateway then checks these scopes per route as for any token. Access-token
customisation needs the Essentials (or Plus) Cognito feature plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

RESOURCE_SERVER = "dicomweb/"


def parse_group_scopes(text: str) -> dict[str, frozenset[str]]:
    """``GROUP_SCOPES``: a JSON object of group name → space-separated scopes."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("GROUP_SCOPES must be a JSON object of group → scopes")
    mapping: dict[str, frozenset[str]] = {}
    for group, scopes in raw.items():
        if not isinstance(scopes, str):
            raise ValueError(f"GROUP_SCOPES[{group!r}] must be a space-separated string")
        values = frozenset(scopes.split())
        foreign = [s for s in values if not s.startswith(RESOURCE_SERVER)]
        if foreign:
            raise ValueError(f"GROUP_SCOPES[{group!r}] has scopes outside {RESOURCE_SERVER}: {foreign}")
        mapping[str(group)] = values
    return mapping


def granted(groups: Iterable[str], mapping: Mapping[str, frozenset[str]]) -> frozenset[str]:
    return frozenset().union(*(mapping.get(g, frozenset()) for g in groups))


def customise(event: dict[str, Any], mapping: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    """Fill ``response.claimsAndScopeOverrideDetails`` of a V2 pre token generation event."""
    request = event.get("request") or {}
    groups = (request.get("groupConfiguration") or {}).get("groupsToOverride") or []
    requested = [s for s in request.get("scopes") or [] if isinstance(s, str)]
    allowed = granted(groups, mapping)
    ours = {s for s in requested if s.startswith(RESOURCE_SERVER)}
    event.setdefault("response", {})["claimsAndScopeOverrideDetails"] = {
        "accessTokenGeneration": {
            "scopesToAdd": sorted(allowed - set(requested)),
            "scopesToSuppress": sorted(ours - allowed),
        }
    }
    return event
