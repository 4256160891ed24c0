"""Object-level access rules in the core layer (defence in depth behind the API's authorizer)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dicomweb_core import access
from dicomweb_core.access import Permission
from infra.local.auth import ROLE_SCOPES
from infra.samtemplate import load_template


def event(method: str, path: str, scopes: tuple[str, ...] | None) -> dict[str, Any]:
    context: dict[str, Any] = {"http": {"method": method, "path": path}}
    if scopes is not None:
        context["authorizer"] = {"jwt": {"claims": {"scope": " ".join(scopes)}, "scopes": list(scopes)}}
    return {"rawPath": path, "requestContext": context}


@pytest.mark.parametrize("route", load_template().routes(), ids=lambda r: r.route_key)
def test_the_core_rule_agrees_with_every_route_scope_in_the_template(route: Any) -> None:
    path = route.path.replace("{", "").replace("}", "").replace("+", "")
    assert access.required(route.method, path).value in route.scopes


@pytest.mark.parametrize(
    ("method", "path", "role", "allowed"),
    [
        ("GET", "/studies/1.2.3/metadata", "viewer", True),
        ("GET", "/studies/1.2.3/metadata", "researcher", False),  # never the primary store
        ("GET", "/deid/studies/1.2.3/metadata", "researcher", True),
        ("GET", "/deid/studies", "viewer", False),  # the research store needs its own scope
        ("GET", "/deid/studies", "admin", False),  # not even the admin's
        ("POST", "/studies", "viewer", False),  # a reader never writes
        ("DELETE", "/studies/1.2.3", "viewer", False),  # nor deletes
        ("DELETE", "/studies/1.2.3", "uploader", False),
        ("DELETE", "/studies/1.2.3", "admin", True),
        ("POST", "/studies", "uploader", True),
        ("GET", "/studies", "uploader", False),  # a gateway that stores cannot search
        ("POST", "/deid/studies", "admin", False),  # nobody writes to the research store
        ("POST", "/admin/deidentify/studies/1.2.3", "admin", True),
        ("POST", "/admin/deidentify/studies/1.2.3", "uploader", False),
    ],
)
def test_roles_against_stores_and_actions(method: str, path: str, role: str, allowed: bool) -> None:
    assert (access.denial(event(method, path, ROLE_SCOPES[role])) is None) is allowed


def test_a_request_without_token_context_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUIRE_SCOPES", raising=False)
    assert access.denial(event("GET", "/studies", None)) == "This request needs the dicomweb/read scope."


def test_the_local_runtime_without_auth_turns_the_check_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_SCOPES", "false")
    assert access.denial(event("POST", "/studies", None)) is None


def test_scopes_from_the_raw_claim_when_the_list_is_absent() -> None:
    raw = {
        "rawPath": "/studies",
        "requestContext": {
            "http": {"method": "GET"},
            "authorizer": {"jwt": {"claims": {"scope": "openid dicomweb/read"}}},
        },
    }
    assert access.denial(raw) is None


def test_the_wrapper_answers_403_without_running_the_handler() -> None:
    ran: list[bool] = []

    @access.enforced
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        ran.append(True)
        return {"statusCode": 200}

    response = handler(event("GET", "/deid/studies", (Permission.READ.value,)), None)
    assert response["statusCode"] == 403
    assert json.loads(response["body"])["message"] == "This request needs the dicomweb/deid.read scope."
    assert ran == []
    assert handler(event("GET", "/studies", (Permission.READ.value,)), None) == {"statusCode": 200}
