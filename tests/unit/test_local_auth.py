"""The local token issuer and JWT authorizer behave like Cognito and the HTTP API authorizer."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from infra.local.auth import (
    ROLE_CLIENTS,
    ROLE_SCOPES,
    AuthorizationFailure,
    AuthorizedRequest,
    JwtAuthorizer,
    LocalSigningKey,
    TokenIssuer,
    issue_role_tokens,
    role_scopes,
    write_tokens_file,
)
from infra.samtemplate import Route, Template, load_template

ISSUER = "http://localhost:3001/local_TestPool"
NOW = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
CLIENT_IDS = {role: f"{role}-client-id" for role in ROLE_CLIENTS}
WRITE = ("dicomweb/write",)

# Synthetic route scope lists (the template has only dicomweb/write routes so far) and which
# roles each admits: ANY of a route's scopes is enough, as in API Gateway.
SYNTHETIC_ACCESS: list[tuple[tuple[str, ...], set[str]]] = [
    (("dicomweb/read",), {"viewer", "admin"}),
    (("dicomweb/write",), {"uploader", "admin"}),
    (("dicomweb/delete",), {"admin"}),
    (("dicomweb/deid.read",), {"researcher"}),
    (("dicomweb/read", "dicomweb/deid.read"), {"viewer", "admin", "researcher"}),
    (("dicomweb/unknown",), set()),
]

Issue = Callable[..., str]
Authorize = Callable[..., AuthorizedRequest]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "nested" / "signing-key.pem"


@pytest.fixture(scope="module")
def key(key_path: Path) -> LocalSigningKey:
    return LocalSigningKey.load_or_create(key_path)


@pytest.fixture(scope="module")
def other_key() -> LocalSigningKey:
    return LocalSigningKey.generate()


@pytest.fixture(scope="module")
def issuer(key: LocalSigningKey) -> TokenIssuer:
    return TokenIssuer(key, ISSUER)


@pytest.fixture(scope="module")
def authorizer(key: LocalSigningKey) -> JwtAuthorizer:
    return JwtAuthorizer(issuer=ISSUER, audiences=list(CLIENT_IDS.values()), jwks=key.jwks())


@pytest.fixture
def issue(issuer: TokenIssuer) -> Issue:
    """Issue an uploader access token at NOW unless told otherwise."""

    def _issue(**kwargs: Any) -> str:
        kwargs.setdefault("client_id", CLIENT_IDS["uploader"])
        kwargs.setdefault("scopes", ROLE_SCOPES["uploader"])
        kwargs.setdefault("now", NOW)
        return issuer.issue(**kwargs)

    return _issue


@pytest.fixture
def authorize(authorizer: JwtAuthorizer) -> Authorize:
    """Authorize a bearer token for the given route scopes at NOW."""

    def _authorize(token: str, scopes: Sequence[str] = WRITE, now: datetime = NOW) -> AuthorizedRequest:
        return authorizer.authorize(f"Bearer {token}", scopes, now=now)

    return _authorize


def refusal(call: Callable[[], object]) -> AuthorizationFailure:
    with pytest.raises(AuthorizationFailure) as info:
        call()
    return info.value


def assert_unauthorized(failure: AuthorizationFailure, description: str | None = None) -> None:
    assert failure.status == 401
    assert failure.body == {"message": "Unauthorized"}
    challenge = failure.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if description is not None:
        assert 'error="invalid_token"' in challenge
        assert f'error_description="{description}"' in challenge


def assert_forbidden(failure: AuthorizationFailure, route_scopes: Sequence[str]) -> None:
    assert failure.status == 403
    assert failure.body == {"message": "Forbidden"}
    challenge = failure.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer scope="{" ".join(route_scopes)}"')
    assert 'error="insufficient_scope"' in challenge


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def handmade_token(
    header: Mapping[str, Any], claims: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def valid_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# ---------------------------------------------------------------- acceptance


def test_a_valid_access_token_is_authorized_with_its_claims(issue: Issue, authorize: Authorize) -> None:
    # Given an uploader access token
    token = issue()
    # When it is presented on a dicomweb/write route
    result = authorize(token)
    # Then it is authorized with the token's claims and scopes
    assert result.scopes == ("dicomweb/write",)
    assert result.claims["client_id"] == CLIENT_IDS["uploader"]
    assert result.claims["token_use"] == "access"


def test_a_bare_token_without_bearer_prefix_is_accepted(issue: Issue, authorizer: JwtAuthorizer) -> None:
    # Given a token sent without the Bearer prefix (API Gateway accepts both forms)
    token = issue()
    # When it is authorized
    result = authorizer.authorize(token, WRITE, now=NOW)
    # Then it passes like a prefixed one
    assert result.scopes == WRITE


def test_access_tokens_have_cognitos_shape(issue: Issue, key: LocalSigningKey) -> None:
    # Given an access token
    token = issue()
    # When its header and claims are read
    header = jwt.get_unverified_header(token)
    claims = valid_claims(token)
    # Then they look like a Cognito client_credentials access token
    assert header == {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    assert set(claims) == {
        "sub",
        "token_use",
        "scope",
        "auth_time",
        "iss",
        "exp",
        "iat",
        "version",
        "jti",
        "client_id",
    }
    assert claims["sub"] == CLIENT_IDS["uploader"]
    assert claims["iss"] == ISSUER
    assert claims["version"] == 2
    assert claims["exp"] - claims["iat"] == 12 * 3600
    assert claims["auth_time"] == claims["iat"] == int(NOW.timestamp())


def test_nbf_is_present_only_when_given(issue: Issue) -> None:
    # Given a token issued with an explicit not-before
    token = issue(not_before=NOW - timedelta(minutes=1))
    # When its claims are read
    claims = valid_claims(token)
    # Then nbf is set, while a default token has none
    assert claims["nbf"] == int((NOW - timedelta(minutes=1)).timestamp())
    assert "nbf" not in valid_claims(issue())


# ---------------------------------------------------------------- rejections (401)


def test_missing_header_is_unauthorized(authorizer: JwtAuthorizer) -> None:
    # Given no Authorization header
    # When the request is authorized
    failure = refusal(lambda: authorizer.authorize(None, WRITE, now=NOW))
    # Then it is 401 with a bare Bearer challenge (RFC 6750: no error code without credentials)
    assert_unauthorized(failure)
    assert failure.headers["www-authenticate"] == 'Bearer scope="dicomweb/write"'


def test_empty_header_is_unauthorized(authorizer: JwtAuthorizer) -> None:
    # Given an empty Authorization header
    # When the request is authorized
    failure = refusal(lambda: authorizer.authorize("  ", WRITE, now=NOW))
    # Then it is 401
    assert_unauthorized(failure)


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer x y",
        "Token abc.def.ghi",
    ],
)
def test_header_without_a_bearer_jwt_is_unauthorized(authorizer: JwtAuthorizer, header: str) -> None:
    # Given an Authorization header that does not carry a JWT
    # When the request is authorized
    failure = refusal(lambda: authorizer.authorize(header, WRITE, now=NOW))
    # Then it is 401 invalid_token
    assert failure.status == 401
    assert failure.body == {"message": "Unauthorized"}
    assert 'error="invalid_token"' in failure.headers["www-authenticate"]


def test_malformed_token_is_unauthorized(authorize: Authorize) -> None:
    # Given a token whose segments are not base64url JSON
    # When it is authorized
    failure = refusal(lambda: authorize("eyJhbGciOi.!!!.???"))
    # Then it is 401 as malformed
    assert_unauthorized(failure, "the token is malformed")


def test_token_signed_by_another_key_is_unauthorized(
    other_key: LocalSigningKey, key: LocalSigningKey, authorize: Authorize
) -> None:
    # Given a token signed by a different key that claims our kid
    token = jwt.encode(
        valid_claims(
            TokenIssuer(other_key, ISSUER).issue(client_id=CLIENT_IDS["admin"], scopes=WRITE, now=NOW)
        ),
        other_key.private_key,
        algorithm="RS256",
        headers={"kid": key.kid},
    )
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then the signature check refuses it
    assert_unauthorized(failure, "the token's signature is invalid")


def test_token_with_unknown_kid_is_unauthorized(other_key: LocalSigningKey, authorize: Authorize) -> None:
    # Given a token signed by another key under its own kid
    token = TokenIssuer(other_key, ISSUER).issue(client_id=CLIENT_IDS["admin"], scopes=WRITE, now=NOW)
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then the kid is not in the JWKS
    assert_unauthorized(failure, "the token's signing key is unknown")


def test_token_with_tampered_claims_is_unauthorized(issue: Issue, authorize: Authorize) -> None:
    # Given a viewer token whose payload was swapped for one claiming write scope
    header, _, signature = issue(scopes=["dicomweb/read"]).split(".")
    forged = b64url(json.dumps(valid_claims(issue())).encode())
    # When it is authorized
    failure = refusal(lambda: authorize(f"{header}.{forged}.{signature}"))
    # Then the signature no longer matches
    assert_unauthorized(failure, "the token's signature is invalid")


def test_wrong_issuer_is_unauthorized(key: LocalSigningKey, authorize: Authorize) -> None:
    # Given a token from another issuer signed with the trusted key
    token = TokenIssuer(key, "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other").issue(
        client_id=CLIENT_IDS["uploader"], scopes=WRITE, now=NOW
    )
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then it is 401 for the issuer
    assert_unauthorized(failure, "the token does not have a valid issuer")


def test_unknown_client_id_is_unauthorized(issue: Issue, authorize: Authorize) -> None:
    # Given an access token of a client that is not an audience
    token = issue(client_id="some-other-client")
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then it is 401 for the audience
    assert_unauthorized(failure, "the token does not have a valid audience")


def test_aud_is_checked_before_client_id(issue: Issue, authorize: Authorize) -> None:
    # Given a token with a foreign aud but a trusted client_id
    token = issue(extra={"aud": "some-other-client"})
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then aud decides (API Gateway reads client_id only when aud is absent)
    assert_unauthorized(failure, "the token does not have a valid audience")


def test_trusted_aud_wins_over_foreign_client_id(issue: Issue, authorize: Authorize) -> None:
    # Given a token with a trusted aud and a foreign client_id
    token = issue(client_id="some-other-client", extra={"aud": CLIENT_IDS["uploader"]})
    # When it is authorized
    result = authorize(token)
    # Then aud decides and the token passes
    assert result.claims["aud"] == CLIENT_IDS["uploader"]


def test_expired_token_is_unauthorized(issue: Issue, authorize: Authorize) -> None:
    # Given a token that expires an hour after NOW
    token = issue(lifetime=timedelta(hours=1))
    # When it is used one second before and exactly at expiry (no leeway)
    authorize(token, now=NOW + timedelta(minutes=59, seconds=59))
    failure = refusal(lambda: authorize(token, now=NOW + timedelta(hours=1)))
    # Then only the earlier use passes
    assert_unauthorized(failure, "the token has expired")


def test_token_without_exp_is_unauthorized(issue: Issue, authorize: Authorize) -> None:
    # Given a token whose exp is null
    token = issue(extra={"exp": None})
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then it is 401
    assert_unauthorized(failure, "the token has expired")


def test_not_yet_valid_token_is_unauthorized(issue: Issue, authorize: Authorize) -> None:
    # Given a token valid from a minute after NOW
    token = issue(not_before=NOW + timedelta(minutes=1))
    # When it is used at NOW
    failure = refusal(lambda: authorize(token))
    # Then it is 401, and it passes once nbf is reached
    assert_unauthorized(failure, "the token is not valid yet")
    assert authorize(token, now=NOW + timedelta(minutes=1)).scopes == WRITE


def test_token_issued_in_the_future_is_unauthorized(issue: Issue, authorize: Authorize) -> None:
    # Given a token issued a minute after NOW
    token = issue(now=NOW + timedelta(minutes=1))
    # When it is used at NOW
    failure = refusal(lambda: authorize(token))
    # Then it is 401 for iat
    assert_unauthorized(failure, "the token was issued in the future")


def test_alg_none_is_unauthorized(issue: Issue, key: LocalSigningKey, authorize: Authorize) -> None:
    # Given an unsigned token with alg none and our kid
    header = {"alg": "none", "typ": "JWT", "kid": key.kid}
    token = handmade_token(header, valid_claims(issue()), lambda _: b"")
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then the algorithm is refused
    assert_unauthorized(failure, "the token's signing algorithm is not supported")


def test_hs256_with_the_public_key_as_secret_is_unauthorized(
    issue: Issue, key: LocalSigningKey, authorize: Authorize
) -> None:
    # Given an HS256 token keyed with the (public) JWK's PEM, the classic confusion attack
    public_pem = key.private_key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    token = handmade_token(
        header, valid_claims(issue()), lambda data: hmac.new(public_pem, data, hashlib.sha256).digest()
    )
    # When it is authorized
    failure = refusal(lambda: authorize(token))
    # Then the algorithm is refused
    assert_unauthorized(failure, "the token's signing algorithm is not supported")


def test_refusals_never_echo_the_token(issue: Issue, authorize: Authorize) -> None:
    # Given an expired token
    token = issue(lifetime=timedelta(seconds=1))
    # When it is refused
    failure = refusal(lambda: authorize(token, now=NOW + timedelta(hours=1)))
    # Then neither the body nor the headers contain any part of it
    rendered = json.dumps([failure.body, failure.headers, str(failure)])
    assert all(part not in rendered for part in token.split("."))


# ---------------------------------------------------------------- scopes (403)


def test_missing_scope_is_forbidden(issue: Issue, authorize: Authorize) -> None:
    # Given a viewer token (dicomweb/read only)
    token = issue(client_id=CLIENT_IDS["viewer"], scopes=ROLE_SCOPES["viewer"])
    # When it is used on a dicomweb/write route
    failure = refusal(lambda: authorize(token, WRITE))
    # Then it is 403 insufficient_scope naming the route's scopes
    assert_forbidden(failure, WRITE)


def test_id_token_is_forbidden_on_a_scoped_route(issue: Issue, authorize: Authorize) -> None:
    # Given a valid ID token (aud is a trusted client, but it has no scope claim)
    token = issue(client_id=CLIENT_IDS["viewer"], scopes=(), token_use="id", subject="alice")
    claims = valid_claims(token)
    assert claims["aud"] == CLIENT_IDS["viewer"]
    assert "scope" not in claims
    assert claims["cognito:username"] == "alice"
    # When it is used on a scoped route
    failure = refusal(lambda: authorize(token, ("dicomweb/read",)))
    # Then it is 403, as in API Gateway
    assert_forbidden(failure, ("dicomweb/read",))


def test_id_token_passes_a_route_without_scopes(issue: Issue, authorize: Authorize) -> None:
    # Given a valid ID token
    token = issue(client_id=CLIENT_IDS["viewer"], scopes=(), token_use="id")
    # When it is used on a route with an authorizer but no scopes
    result = authorize(token, ())
    # Then it passes (API Gateway does not look at token_use)
    assert result.scopes == ()


def test_any_one_of_the_route_scopes_is_enough(issue: Issue, authorize: Authorize) -> None:
    # Given a researcher token (dicomweb/deid.read only)
    token = issue(client_id=CLIENT_IDS["researcher"], scopes=ROLE_SCOPES["researcher"])
    # When the route accepts read or deid.read
    result = authorize(token, ("dicomweb/read", "dicomweb/deid.read"))
    # Then one matching scope suffices
    assert result.scopes == ("dicomweb/deid.read",)


def test_scp_claim_alone_grants_scopes(key: LocalSigningKey, authorize: Authorize) -> None:
    # Given a token with scp and no scope claim
    claims = {
        "iss": ISSUER,
        "client_id": CLIENT_IDS["uploader"],
        "exp": int(NOW.timestamp()) + 60,
        "scp": ["dicomweb/write"],
    }
    token = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})
    # When it is authorized
    result = authorize(token, WRITE)
    # Then its scp scopes count
    assert result.scopes == WRITE


# ---------------------------------------------------------------- roles


def test_role_scopes_come_from_the_template_clients() -> None:
    # Given the template's app clients
    template = load_template()
    clients = template.resources_of_type("AWS::Cognito::UserPoolClient")
    # When the roles' scopes are read from the template
    scopes = role_scopes(template)
    for role, logical_id in ROLE_CLIENTS.items():
        allowed = clients[logical_id]["Properties"]["AllowedOAuthScopes"]
        # Then each role has exactly its client's resource-server scopes
        assert scopes[role] == tuple(s for s in allowed if "/" in s)
    assert "openid" not in scopes["viewer"]
    assert dict(ROLE_SCOPES) == dict(scopes)


def test_role_scopes_follow_the_template_they_are_read_from() -> None:
    # Given a template whose viewer client has been granted the write scope as well
    document = copy.deepcopy(dict(load_template().raw))
    viewer = document["Resources"][ROLE_CLIENTS["viewer"]]["Properties"]
    viewer["AllowedOAuthScopes"] = [*viewer["AllowedOAuthScopes"], "dicomweb/write"]
    # When the roles' scopes are read from it
    scopes = role_scopes(Template(document))
    # Then the viewer has the write scope there, and not in the repository's template
    assert "dicomweb/write" in scopes["viewer"]
    assert "dicomweb/write" not in role_scopes(load_template())["viewer"]


def test_importing_the_runtime_reads_no_template() -> None:
    # Given a fresh interpreter in which reading template.yaml raises
    repo = Path(__file__).resolve().parents[2]
    script = (
        "import infra.samtemplate as sam\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('template.yaml read at import time')\n"
        "sam.load_template = refuse\n"
        "import infra.local.auth, infra.local.gateway, infra.local.serve\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "layers/core/python"), str(repo)])}
    # When the auth package and the runtime that uses it are imported
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then the imports succeed: the roles are read when a runtime is built, from its template
    assert result.returncode == 0, result.stderr


def case_id(value: object) -> str:
    if isinstance(value, Route):
        return value.route_key
    if isinstance(value, tuple | set | frozenset):
        return "+".join(sorted(value)) or "none"
    return str(value)


def template_cases() -> list[tuple[str, Route]]:
    routes = [route for route in load_template().routes() if route.authorizer]
    return [(role, route) for route in routes for role in ROLE_CLIENTS]


@pytest.mark.parametrize(("role", "route"), template_cases(), ids=case_id)
def test_each_role_on_each_template_route(
    role: str, route: Route, issuer: TokenIssuer, authorizer: JwtAuthorizer
) -> None:
    # Given the role's token as issued by the local runtime
    token = issue_role_tokens(issuer, {role: CLIENT_IDS[role]}, scopes=ROLE_SCOPES)[role]
    allowed = not route.scopes or bool(set(route.scopes) & set(ROLE_SCOPES[role]))
    # When it calls the template route (now: the tokens are issued at the real clock)
    if allowed:
        # Then a role holding one of the route's scopes is authorized
        assert authorizer.authorize(f"Bearer {token}", route.scopes).claims["client_id"] == CLIENT_IDS[role]
    else:
        # Then any other role is forbidden
        assert_forbidden(refusal(lambda: authorizer.authorize(f"Bearer {token}", route.scopes)), route.scopes)


def test_template_routes_admit_some_roles_and_refuse_others() -> None:
    # Given the scoped template routes
    scoped = [route for route in load_template().routes() if route.scopes]
    assert scoped
    for route in scoped:
        # When the roles holding one of their scopes are counted
        admitted = {role for role, scopes in ROLE_SCOPES.items() if set(scopes) & set(route.scopes)}
        # Then at least one role may call it and at least one may not
        assert admitted
        assert admitted != set(ROLE_CLIENTS)


@pytest.mark.parametrize(("route_scopes", "admitted"), SYNTHETIC_ACCESS, ids=case_id)
@pytest.mark.parametrize("role", list(ROLE_CLIENTS))
def test_each_role_on_synthetic_scope_lists(
    role: str, route_scopes: tuple[str, ...], admitted: set[str], issue: Issue, authorize: Authorize
) -> None:
    # Given the role's token
    token = issue(client_id=CLIENT_IDS[role], scopes=ROLE_SCOPES[role])
    # When it calls a route requiring any of route_scopes
    if role in admitted:
        # Then roles with a matching scope pass
        assert set(authorize(token, route_scopes).scopes) & set(route_scopes)
    else:
        # Then the others are forbidden
        assert_forbidden(refusal(lambda: authorize(token, route_scopes)), route_scopes)


def test_issue_role_tokens_refuses_unknown_roles(issuer: TokenIssuer) -> None:
    # Given a role the template does not define
    # When tokens are issued for it
    # Then it is an error rather than a token without scopes
    with pytest.raises(ValueError, match="unknown roles: intern"):
        issue_role_tokens(issuer, {"intern": "x"}, scopes=ROLE_SCOPES)


# ---------------------------------------------------------------- key and files


def test_key_file_is_private(key: LocalSigningKey, key_path: Path) -> None:
    # Given a key created by load_or_create in a directory that did not exist
    # When the file's mode is read
    mode = stat.S_IMODE(key_path.stat().st_mode)
    # Then it is 0600 and no temporary files are left behind
    assert mode == 0o600
    assert [p.name for p in key_path.parent.iterdir()] == [key_path.name]
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_key_persists_across_reloads(key: LocalSigningKey, key_path: Path, issue: Issue) -> None:
    # Given a token issued before a restart
    token = issue()
    # When the key is loaded again from the same file
    reloaded = LocalSigningKey.load_or_create(key_path)
    authorizer = JwtAuthorizer(issuer=ISSUER, audiences=list(CLIENT_IDS.values()), jwks=reloaded.jwks())
    # Then the kid is the same and the old token is still valid
    assert reloaded.kid == key.kid
    assert authorizer.authorize(f"Bearer {token}", WRITE, now=NOW).scopes == WRITE


def test_kid_is_the_rfc7638_thumbprint(key: LocalSigningKey) -> None:
    # Given the public JWK
    jwk = key.jwks()["keys"][0]
    # When its RFC 7638 thumbprint is computed independently
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    thumbprint = b64url(hashlib.sha256(canonical.encode()).digest())
    # Then it is the kid, and the JWK holds no private parameters
    assert key.kid == jwk["kid"] == thumbprint
    assert set(jwk) == {"alg", "e", "kid", "kty", "n", "use"}
    assert key.private_key.key_size == 2048


def test_loose_key_file_mode_is_tightened(tmp_path: Path, key: LocalSigningKey) -> None:
    # Given a key file readable by others
    path = tmp_path / "key.pem"
    path.write_bytes(key.private_pem())
    path.chmod(0o644)
    # When it is loaded
    loaded = LocalSigningKey.load_or_create(path)
    # Then it is the same key and the file is 0600 again
    assert loaded.kid == key.kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_non_key_file_is_refused(tmp_path: Path) -> None:
    # Given a file that is not a PEM key
    path = tmp_path / "key.pem"
    path.write_text("not a key")
    # When it is loaded
    # Then loading fails instead of silently replacing it
    with pytest.raises(ValueError):
        LocalSigningKey.load_or_create(path)
    assert path.read_text() == "not a key"


def test_tokens_file_is_private_json_with_usage(tmp_path: Path, issuer: TokenIssuer) -> None:
    # Given tokens for every role
    tokens = issue_role_tokens(issuer, CLIENT_IDS, scopes=ROLE_SCOPES, lifetime=timedelta(hours=1))
    path = tmp_path / "state" / "tokens.json"
    # When they are written
    write_tokens_file(path, tokens, scopes=ROLE_SCOPES, base_url="http://localhost:3000", expires_at=NOW)
    # Then the file is 0600 JSON with the tokens, their scopes and a curl hint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["tokens"] == tokens
    assert document["base_url"] == "http://localhost:3000"
    assert document["expires_at"] == "2025-01-15T12:00:00+00:00"
    assert document["scopes"]["admin"] == list(ROLE_SCOPES["admin"])
    assert "Authorization: Bearer $(jq -r .tokens.viewer" in document["usage"]
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"]


# ---------------------------------------------------------------- event shape


def test_event_authorizer_has_the_api_gateway_shape(issue: Issue, authorize: Authorize) -> None:
    # Given an authorized token with a list claim and a boolean claim
    token = issue(extra={"cognito:groups": ["radiology", "admins"], "email_verified": True})
    # When the payload-v2 authorizer context is built
    context = authorize(token).event_authorizer()
    # Then it is {"jwt": {"claims": {...strings...}, "scopes": [...]}} as API Gateway sends it
    assert set(context) == {"jwt"}
    assert set(context["jwt"]) == {"claims", "scopes"}
    claims = context["jwt"]["claims"]
    assert all(isinstance(value, str) for value in claims.values())
    assert claims["exp"] == str(int(NOW.timestamp()) + 12 * 3600)
    assert claims["version"] == "2"
    assert claims["cognito:groups"] == "[radiology admins]"
    assert claims["email_verified"] == "true"
    assert claims["scope"] == "dicomweb/write"
    assert context["jwt"]["scopes"] == ["dicomweb/write"]
    json.dumps(context)
