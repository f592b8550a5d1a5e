"""OpenID Connect login (docs/operations.md "Single sign-on"): mozilla-django-oidc's backend, stricter.

The library runs the code flow (state, nonce, PKCE, the token request, the id_token's signature against the
provider's JWKS). On top of it, every id_token must name our client in `aud`, the configured issuer in `iss`,
an `exp` in the future and a `sub`; the userinfo must be about the same `sub`; and the e-mail must be
verified (`email_verified` exactly true). The account is then chosen by enterprise/sso_accounts.py.

Every outcome is audited: `sso.login`, `sso.user_created`, `sso.refused` with its reason. No token, code or
claim set beyond the subject and e-mail is ever written to the audit log or the logs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from chat.infra.client_address import meta_client_ip
from chat.models import User
from enterprise.audit import audit_record
from enterprise.sso_accounts import SsoRefused, domain_workspace_id, match_or_create

log = logging.getLogger(__name__)

# The request attribute the refusal's reason is left on, for the login page to word it.
REFUSAL_ATTR = "sso_refusal"


def check_id_token(claims: dict[str, Any], *, client_id: str, issuer: str, now: float) -> str:
    """The id_token's subject, once its audience, issuer, expiry and subject are ours; SsoRefused if not."""
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise SsoRefused("wrong_audience")
    if claims.get("iss") != issuer:
        raise SsoRefused("wrong_issuer")
    expires = claims.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= now:
        raise SsoRefused("expired")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise SsoRefused("no_subject")
    return subject


def verified_email(id_claims: dict[str, Any], userinfo: dict[str, Any]) -> str:
    """The e-mail the provider vouches for: userinfo's claims where it has them, else the id_token's. The
    userinfo must be about the id_token's subject (OpenID Connect Core 5.3.2), or it is someone else's."""
    if userinfo.get("sub") != id_claims.get("sub"):
        raise SsoRefused("subject_mismatch")
    email = userinfo.get("email", id_claims.get("email"))
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise SsoRefused("no_email")
    # Exactly the JSON boolean: "true", 1 or a missing claim are not a provider's word that it checked.
    if userinfo.get("email_verified", id_claims.get("email_verified")) is not True:
        raise SsoRefused("email_unverified", email)
    return email


class SsoBackend(OIDCAuthenticationBackend):  # type: ignore[misc]  # the library ships no type hints
    """Acts only on the SSO callback (the view passes `nonce`), never on a password login's credentials."""

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        if request is None or not settings.OIDC_ENABLED or "nonce" not in kwargs:
            return None
        try:
            user: User | None = super().authenticate(request, **kwargs)
        except SsoRefused as refused:
            self._refuse(request, refused.reason, refused.email)
        except (jwt.InvalidTokenError, SuspiciousOperation):
            self._refuse(request, "invalid_token")  # bad signature, unknown key, nonce, alg
        except requests.RequestException as exc:
            log.warning("SSO provider call failed: %s", type(exc).__name__)
            self._refuse(request, "provider_error")
        else:
            return user
        return None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """The library's signature and nonce checks, then ours. Userinfo served as a JWT is verified here
        too (no nonce), so it must also be a token issued to us."""
        try:
            payload: dict[str, Any] = super().verify_token(token, **kwargs)
        except jwt.ExpiredSignatureError:
            raise SsoRefused("expired") from None
        check_id_token(payload, client_id=self.OIDC_RP_CLIENT_ID, issuer=settings.OIDC_OP_ISSUER, now=time.time())
        return payload

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User | None:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(userinfo, dict):
            raise SsoRefused("bad_userinfo")
        email = verified_email(payload, userinfo)
        matched = match_or_create(email)
        ip = meta_client_ip(self.request.META)
        data = {"sub": payload["sub"], "issuer": payload["iss"]}
        if matched.created:
            audit_record(
                "sso.user_created", matched.user, matched.workspace_id, target=matched.user.username, data=data
            )
        audit_record("sso.login", matched.user, matched.workspace_id, target=matched.user.username, data=data, ip=ip)
        return matched.user

    def get_user(self, user_id: Any) -> User | None:
        # The library's would hand a deactivated account its session back; Django's own backend does not.
        user: User | None = User.objects.filter(pk=user_id, is_active=True).first()
        return user

    def _refuse(self, request: HttpRequest, reason: str, email: str = "") -> None:
        setattr(request, REFUSAL_ATTR, reason)
        log.info("SSO login refused: %s", reason)
        data = {"reason": reason, **({"email": email} if email else {})}
        audit_record(
            "sso.refused",
            None,
            domain_workspace_id(email) if email else None,
            data=data,
            ip=meta_client_ip(request.META),
        )
