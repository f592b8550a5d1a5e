"""Single sign-on with OpenID Connect (enterprise/sso.py; docs/operations.md "Single sign-on").

SSO is on exactly when OIDC_RP_CLIENT_ID is set; then the provider's endpoints and issuer must be set too,
or the server refuses to start (a half-configured SSO would fail at the first login instead). The names are
mozilla-django-oidc's own settings, so the library reads them where it expects them.
"""

from __future__ import annotations

import json
import os
import uuid

from django.core.exceptions import ImproperlyConfigured

from chatsite.config.env import env_bool, env_int

OIDC_RP_CLIENT_ID = os.environ.get("OIDC_RP_CLIENT_ID", "")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
OIDC_RP_CLIENT_SECRET = os.environ.get("OIDC_RP_CLIENT_SECRET", "")
OIDC_OP_AUTHORIZATION_ENDPOINT = os.environ.get("OIDC_OP_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = os.environ.get("OIDC_OP_TOKEN_ENDPOINT", "")
OIDC_OP_USER_ENDPOINT = os.environ.get("OIDC_OP_USER_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = os.environ.get("OIDC_OP_JWKS_ENDPOINT", "")
# The `iss` every id_token must carry, exactly (the library does not check it).
OIDC_OP_ISSUER = os.environ.get("OIDC_OP_ISSUER", "")
# Asymmetric only: with RS256 the provider's public keys (JWKS) verify the token, so a leaked client secret
# alone cannot mint one.
OIDC_RP_SIGN_ALGO = os.environ.get("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = os.environ.get("OIDC_RP_SCOPES", "openid email profile")
OIDC_USE_PKCE = env_bool("OIDC_USE_PKCE", True)
# Seconds for each call to the provider (token, JWKS, userinfo): a hung provider must not hold a worker.
OIDC_TIMEOUT = env_int("OIDC_TIMEOUT_S", 10)
# Staff and superuser accounts are never matched by e-mail unless this is on: an identity provider (or
# whoever administers it) must not be able to log in as this deployment's staff.
OIDC_ALLOW_STAFF_LOGIN = env_bool("OIDC_ALLOW_STAFF_LOGIN", False)
# Tokens are never kept in the session: nothing here calls the provider on the user's behalf later.
OIDC_STORE_ACCESS_TOKEN = False
OIDC_STORE_ID_TOKEN = False
# Where a refused or failed SSO login lands: the login page, which says so.
LOGIN_REDIRECT_URL_FAILURE = "/login/?sso=refused"

# {"acme.com": "<workspace uuid>"}: a user SSO creates joins their e-mail domain's workspace as a member.
OIDC_WORKSPACE_DOMAINS: dict[str, str] = json.loads(os.environ.get("OIDC_WORKSPACE_DOMAINS_JSON") or "{}")

if OIDC_ENABLED:
    _missing = [
        name
        for name in (
            "OIDC_RP_CLIENT_SECRET",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            "OIDC_OP_JWKS_ENDPOINT",
            "OIDC_OP_ISSUER",
        )
        if not globals()[name]
    ]
    if _missing:
        raise ImproperlyConfigured(f"OIDC_RP_CLIENT_ID is set, so SSO is on, but these are not: {', '.join(_missing)}")
    if not OIDC_RP_SIGN_ALGO.startswith(("RS", "ES", "PS")):
        raise ImproperlyConfigured(f"OIDC_RP_SIGN_ALGO={OIDC_RP_SIGN_ALGO!r}: only asymmetric algorithms are accepted")
if not isinstance(OIDC_WORKSPACE_DOMAINS, dict):
    raise ImproperlyConfigured('OIDC_WORKSPACE_DOMAINS_JSON must be an object: {"acme.com": "<workspace uuid>"}')
for _domain, _workspace in OIDC_WORKSPACE_DOMAINS.items():
    try:
        uuid.UUID(str(_workspace))
    except ValueError:
        raise ImproperlyConfigured(f"OIDC_WORKSPACE_DOMAINS_JSON[{_domain!r}] = {_workspace!r} is not a uuid") from None
OIDC_WORKSPACE_DOMAINS = {domain.strip().lower(): str(ws) for domain, ws in OIDC_WORKSPACE_DOMAINS.items()}
