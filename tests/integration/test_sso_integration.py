"""Single sign-on (enterprise/sso.py, docs/operations.md "Single sign-on") through the real code flow.

A real OpenID Connect provider (tests/support/oidc_provider.py) runs on a local port: the browser (Django's
test client) starts at /oidc/authenticate/, is sent to the provider's authorize endpoint, comes back to
/oidc/callback/ with a code, and the server exchanges it over HTTP for a signed id_token, checks it against
the provider's JWKS and reads userinfo. Then it is logged in, or refused and told so, and the audit log
says which and why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.db import connection
from django.test import Client as HttpClient

from chat.models import Role, User, Workspace, WorkspaceMember
from chat.services.conversations import user_create
from enterprise.models import AuditEntry
from enterprise.sso import check_id_token
from enterprise.sso_accounts import SsoRefused, match_or_create
from tests.conftest import unique
from tests.support.oidc_provider import CLIENT_ID, OidcProvider

pytestmark = pytest.mark.usefixtures("fast_password_hashing")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    running = OidcProvider().start()
    yield running
    running.stop()


@pytest.fixture
def sso(provider: OidcProvider, settings: Any) -> OidcProvider:
    """SSO on, against the test provider, with a fresh person logging in there each test."""
    for name, value in provider.settings().items():
        setattr(settings, name, value)
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "enterprise.sso.SsoBackend"]
    settings.OIDC_WORKSPACE_DOMAINS = {}
    settings.OIDC_ALLOW_STAFF_LOGIN = False
    provider.id_token_overrides = {}
    provider.identity = person()
    return provider


def person(local: str | None = None, domain: str = "acme.test", **claims: Any) -> dict[str, Any]:
    local = local or unique("p")
    return {"sub": uuid.uuid4().hex, "email": f"{local}@{domain}", "email_verified": True, **claims}


def sso_login(browser: HttpClient) -> str:
    """One trip through the code flow; returns where the callback sent the browser."""
    start = browser.get("/oidc/authenticate/?next=/settings/notifications/")
    assert start.status_code == 302, start
    authorize = start["Location"]
    assert authorize.startswith(f"{urlsplit(authorize).scheme}://127.0.0.1:")
    assert f"client_id={CLIENT_ID}" in authorize
    at_provider = httpx.get(authorize, follow_redirects=False, timeout=5)
    assert at_provider.status_code == 302, at_provider.text
    back = urlsplit(at_provider.headers["Location"])
    assert back.netloc == "testserver"
    assert back.path == "/oidc/callback/"
    callback = browser.get(f"{back.path}?{back.query}")
    assert callback.status_code == 302, callback
    return str(callback["Location"])


def logged_in_as(browser: HttpClient) -> User | None:
    user = browser.get("/").wsgi_request.user
    return user if isinstance(user, User) else None


def audit(action: str, since: int) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action, id__gt=since).order_by("id"))


def audit_head() -> int:
    return AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0


# --- SSO off ---------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_off_no_button_and_the_routes_are_not_there(settings: Any) -> None:
    settings.OIDC_ENABLED = False
    browser = HttpClient()
    page = browser.get("/login/")
    assert page.status_code == 200
    assert b"Sign in with SSO" not in page.content
    assert browser.get("/oidc/authenticate/").status_code == 404
    assert browser.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_on_exactly_when_the_client_id_is_set_and_then_everything_must_be() -> None:
    """chatsite/config/sso.py read from a bare environment: no client id, off; a client id with the
    provider's endpoints missing refuses to start, naming what is missing."""

    def load(**env: str) -> subprocess.CompletedProcess[str]:
        code = "import chatsite.config.sso as s; print(s.OIDC_ENABLED)"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
        return subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=30
        )

    assert load().stdout.strip() == "False"
    half = load(OIDC_RP_CLIENT_ID="x", OIDC_RP_CLIENT_SECRET="s", OIDC_OP_TOKEN_ENDPOINT="https://idp/token")
    assert half.returncode != 0
    assert "OIDC_OP_AUTHORIZATION_ENDPOINT" in half.stderr
    assert "OIDC_OP_ISSUER" in half.stderr
    full = {
        name: "https://idp.example/x"
        for name in (
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            "OIDC_OP_JWKS_ENDPOINT",
            "OIDC_OP_ISSUER",
        )
    }
    assert load(OIDC_RP_CLIENT_ID="x", OIDC_RP_CLIENT_SECRET="s", **full).stdout.strip() == "True"
    bad_domains = load(OIDC_WORKSPACE_DOMAINS_JSON='{"acme.com": "not-a-uuid"}')
    assert bad_domains.returncode != 0
    assert "acme.com" in bad_domains.stderr


# --- logging in ------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_first_login_creates_the_user_in_their_domain_workspace(sso: OidcProvider, settings: Any) -> None:
    owner = user_create(username=unique("own"), password="pw")
    acme = Workspace.objects.create(name="Acme")
    WorkspaceMember.objects.create(workspace=acme, user=owner, role=Role.OWNER)
    settings.OIDC_WORKSPACE_DOMAINS = {"acme.test": str(acme.id)}
    sso.identity = person("Jane.Doe-" + uuid.uuid4().hex[:6])
    head = audit_head()
    browser = HttpClient()
    assert b"Sign in with SSO" in browser.get("/login/").content

    assert sso_login(browser) == "/settings/notifications/"  # the `next` it started with

    user = logged_in_as(browser)
    assert user is not None
    assert user.email == sso.identity["email"]
    assert user.username == sso.identity["email"].split("@")[0].replace(".", "_").replace("-", "_")
    assert not user.has_usable_password()
    assert not user.is_staff
    assert WorkspaceMember.objects.get(workspace=acme, user=user).role == Role.MEMBER
    assert Workspace.objects.filter(personal_for=user).exists()
    created, login = audit("sso.user_created", head), audit("sso.login", head)
    assert [(e.actor_id, e.workspace_id) for e in created + login] == [(user.id, acme.id)] * 2
    assert login[0].data == {"sub": sso.identity["sub"], "issuer": sso.issuer}  # and nothing of the tokens
    assert login[0].ip == "127.0.0.1"

    # The second login is the same account, not a new one.
    again = HttpClient()
    sso_login(again)
    assert logged_in_as(again) == user
    assert User.objects.filter(email__iexact=sso.identity["email"]).count() == 1
    assert len(audit("sso.user_created", head)) == 1
    assert len(audit("sso.login", head)) == 2


@pytest.mark.django_db
def test_an_existing_account_is_matched_by_email_whatever_its_case(sso: OidcProvider) -> None:
    existing = user_create(username=unique("bob"), password="pw", email=sso.identity["email"].upper())
    browser = HttpClient()
    assert sso_login(browser) == "/settings/notifications/"
    assert logged_in_as(browser) == existing
    assert User.objects.filter(email__iexact=sso.identity["email"]).count() == 1


@pytest.mark.django_db
def test_staff_may_log_in_by_sso_only_when_allowed(sso: OidcProvider, settings: Any) -> None:
    staff = user_create(username=unique("st"), password="pw", email=sso.identity["email"], is_staff=True)
    settings.OIDC_ALLOW_STAFF_LOGIN = True
    browser = HttpClient()
    sso_login(browser)
    assert logged_in_as(browser) == staff


# --- refusals ----------------------------------------------------------------------------------------------
def unverified(p: OidcProvider) -> None:
    p.identity["email_verified"] = False


def verified_as_a_string(p: OidcProvider) -> None:
    p.identity["email_verified"] = "true"


def verified_missing(p: OidcProvider) -> None:
    del p.identity["email_verified"]


def two_accounts_share_the_email(p: OidcProvider) -> None:
    user_create(username=unique("d1"), password="pw", email=p.identity["email"])
    user_create(username=unique("d2"), password="pw", email=p.identity["email"].upper())


def a_staff_account_has_the_email(p: OidcProvider) -> None:
    user_create(username=unique("st"), password="pw", email=p.identity["email"], is_staff=True)


def a_superuser_has_the_email(p: OidcProvider) -> None:
    user_create(username=unique("su"), password="pw", email=p.identity["email"], is_superuser=True)


def a_deactivated_account_has_the_email(p: OidcProvider) -> None:
    User.objects.filter(pk=user_create(username=unique("off"), password="pw", email=p.identity["email"]).pk).update(
        is_active=False
    )


def audience_is_another_client(p: OidcProvider) -> None:
    p.id_token_overrides = {"aud": ["some-other-client"]}


def issuer_is_another(p: OidcProvider) -> None:
    p.id_token_overrides = {"iss": "https://evil.example"}


def expired(p: OidcProvider) -> None:
    p.id_token_overrides = {"exp": int(time.time()) - 60, "iat": int(time.time()) - 400}


def no_subject(p: OidcProvider) -> None:
    p.id_token_overrides = {"sub": None}


def userinfo_about_someone_else(p: OidcProvider) -> None:
    p.id_token_overrides = {"sub": "someone-else"}


REFUSALS = {
    unverified: "email_unverified",
    verified_as_a_string: "email_unverified",
    verified_missing: "email_unverified",
    two_accounts_share_the_email: "ambiguous_email",
    a_staff_account_has_the_email: "staff_account",
    a_superuser_has_the_email: "staff_account",
    a_deactivated_account_has_the_email: "inactive_account",
    audience_is_another_client: "wrong_audience",
    issuer_is_another: "wrong_issuer",
    expired: "expired",
    no_subject: "no_subject",
    userinfo_about_someone_else: "subject_mismatch",
}


@pytest.mark.django_db
@pytest.mark.parametrize("arrange", list(REFUSALS), ids=lambda f: f.__name__)
def test_refused(sso: OidcProvider, arrange: Any) -> None:
    arrange(sso)
    accounts_before = set(User.objects.values_list("id", flat=True))
    head = audit_head()
    browser = HttpClient()

    assert sso_login(browser) == "/login/?sso=refused"

    assert logged_in_as(browser) is None
    assert set(User.objects.values_list("id", flat=True)) == accounts_before  # nobody created
    assert b"Single sign-on did not log you in" in browser.get("/login/?sso=refused").content
    (refused,) = audit("sso.refused", head)
    assert refused.data["reason"] == REFUSALS[arrange]
    assert refused.actor_id is None
    assert set(refused.data) <= {"reason", "email"}
    assert not audit("sso.login", head)


@pytest.mark.django_db
def test_a_code_is_good_once(sso: OidcProvider) -> None:
    """A replayed callback (the same code and state) logs nobody in: its state was used up."""
    browser = HttpClient()
    start = browser.get("/oidc/authenticate/")
    back = urlsplit(httpx.get(start["Location"], follow_redirects=False, timeout=5).headers["Location"])
    assert browser.get(f"{back.path}?{back.query}").status_code == 302
    replay = HttpClient()
    assert replay.get(f"{back.path}?{back.query}").status_code == 302  # no SSO under way in this session
    assert logged_in_as(replay) is None


# --- one e-mail, concurrent first logins -------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_logins_create_one_user(settings: Any) -> None:
    settings.OIDC_WORKSPACE_DOMAINS = {}
    email = f"{unique('race')}@acme.test"
    start = threading.Barrier(6)

    def first_login(i: int) -> int:
        try:
            start.wait(timeout=10)
            return match_or_create(email.upper() if i % 2 else email).user.id
        finally:
            connection.close()

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(first_login, range(6)))
    assert len(ids) == 1
    assert User.objects.filter(email__iexact=email).count() == 1


# --- the claim checks' edges, without a provider --------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "chat-test-client"}, None),  # a single audience as a string is the usual form
        ({"aud": ["other", "chat-test-client"]}, None),
        ({"aud": "chat-test-client-evil"}, "wrong_audience"),  # no substring matching
        ({"aud": None}, "wrong_audience"),
        ({"iss": "https://idp.example/"}, "wrong_issuer"),  # exactly: a trailing slash is another issuer
        ({"exp": True}, "expired"),
        ({"exp": "9999999999"}, "expired"),
        ({"exp": None}, "expired"),
        ({"sub": ""}, "no_subject"),
        ({"sub": 42}, "no_subject"),
    ],
)
def test_id_token_claims(change: dict[str, Any], reason: str | None) -> None:
    claims = {"aud": [CLIENT_ID], "iss": "https://idp.example", "exp": time.time() + 60, "sub": "s1"} | change
    claims = {k: v for k, v in claims.items() if v is not None}
    if reason is None:
        assert check_id_token(claims, client_id=CLIENT_ID, issuer="https://idp.example", now=time.time()) == "s1"
        return
    with pytest.raises(SsoRefused) as refused:
        check_id_token(claims, client_id=CLIENT_ID, issuer="https://idp.example", now=time.time())
    assert refused.value.reason == reason
