"""Handshake checks for /ws/chat/: the Origin, and who is connecting (docs/protocol.md §1).

Three ways in: the Django session cookie, `Authorization: Bearer <access>`, or (for browsers on
another origin) an `auth` frame after the handshake. Tokens in the query string are refused
because they end up in access logs. Nothing here logs a token, and `install_log_redaction` keeps
the ASGI server's own log lines (uvicorn logs every WebSocket handshake's path *with* its query
string, even with its access log off) from carrying one either.

A token is good only while `selectors.token_holder` says so (not revoked by a password change, a
log-out-everywhere or a deactivation); REST asks the same through `RevocableJWTAuthentication`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http.cookie import parse_cookie
from django.http.request import validate_host
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken, Token

from chat import selectors
from chat.errors import AuthFailed
from chat.infra.log_redaction import JWT_PATTERN, QUERY_TOKEN_KEYS, install_log_redaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    user_id: int
    username: str
    tier: str
    method: str  # "session" | "jwt"
    expires_at: int | None  # unix seconds; None for session auth
    # A token's verified claims, so the socket can ask again later whether the token still stands.
    claims: Mapping[str, Any] | None = field(default=None, compare=False)


def identity_from_token(raw: str) -> Identity:
    """Validate an access token and load its (active) user; a revoked token (password changed, logged
    out everywhere, deactivated) is refused like a forged one. Sync: call via database_sync_to_async."""
    try:
        token = AccessToken(raw)  # type: ignore[arg-type]
    except TokenError as exc:
        raise AuthFailed("invalid or expired token") from exc
    user = selectors.token_holder(token.payload)
    if user is None:
        raise AuthFailed("unknown or inactive user, or revoked token")
    return Identity(user.id, user.username, user.tier, "jwt", int(token["exp"]), dict(token.payload))


def revoked_close_code(identity: Identity, *, unknown: int | None = None) -> int | None:
    """The close code for an open socket's identity that no longer stands (4403 deactivated, 4401 its
    token revoked: password changed, logged out everywhere), or None while it does. `unknown` when the
    database cannot say (None: the handshake's check stands). Sync."""
    try:
        if not selectors.user_is_active(user_id=identity.user_id):
            return 4403
        if identity.claims is not None and selectors.token_holder(identity.claims) is None:
            return 4401
    except (OperationalError, InterfaceError):
        return unknown
    return None


class RevocableJWTAuthentication(JWTAuthentication):
    """REST's Bearer authentication (REST_FRAMEWORK in settings): simplejwt's, with the same holder
    check as the socket, so a revoked token is refused on every road. It lives here, beside
    identity_from_token, because DRF imports its authentication classes while `rest_framework.views`
    is being imported, which chat.api cannot be imported during."""

    def get_user(self, validated_token: Token) -> Any:  # the User (AuthUser in the stubs)
        user = selectors.token_holder(validated_token.payload)
        if user is None:
            raise AuthenticationFailed("unknown or inactive user, or revoked token", code="token_not_valid")
        return user


def query_carries_token(query_string: bytes) -> bool:
    """True if the query string names a token parameter or carries anything shaped like a JWT
    (under any name: `?t=eyJ…` is just as logged as `?token=eyJ…`)."""
    raw = query_string.decode("latin-1")
    if JWT_PATTERN.search(unquote_plus(raw)):
        return True
    return bool(QUERY_TOKEN_KEYS & {key.lower() for key in parse_qs(raw)})


def origin_allowed(origin: str | None) -> bool:
    """No Origin (a non-browser client) is allowed; a browser's must be ours or listed."""
    if origin is None:
        return True
    if origin in settings.CHAT_ALLOWED_ORIGINS:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return validate_host(parts.hostname, settings.ALLOWED_HOSTS)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _session_identity(scope: dict[str, Any]) -> Identity | None:
    """The Django session cookie's user, read once at the handshake.

    Deliberately not channels' SessionMiddlewareStack: that wraps `send` to save the session and
    its check ran on every outbound frame (~16% of a server's CPU in the fan-out benchmark). A
    socket never changes the session, so reading it here is all it needs."""
    cookies = parse_cookie(_header(scope, b"cookie") or "")
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    engine = import_module(settings.SESSION_ENGINE)
    user = await get_user({"session": engine.SessionStore(session_key)})
    if user.is_authenticated and user.is_active:
        return Identity(user.id, user.username, user.tier, "session", None)
    return None


class ChatAuthMiddleware:
    """Sets scope["identity"] (or None), scope["auth_error"] and scope["origin_ok"]. It never wraps
    `send`: the fan-out path must not pay for middleware on every frame."""

    def __init__(self, app: Any) -> None:
        self.app = app
        # Built once per server process, when the ASGI application is imported: by then the
        # server's and Django's log handlers exist.
        install_log_redaction()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        scope = dict(scope)
        scope["identity"] = None
        scope["auth_error"] = None
        scope["origin_ok"] = origin_allowed(_header(scope, b"origin"))
        authorization = _header(scope, b"authorization")
        if query_carries_token(scope.get("query_string", b"")):
            scope["auth_error"] = (
                "tokens in the query string are refused; use the Authorization header or an auth frame"
            )
        else:
            try:
                await self._identify(scope, authorization)
            except (OSError, OperationalError, InterfaceError) as exc:
                # The database cannot say who this is: the consumer closes 1013 (try again later),
                # never 4401, which would tell a client with a good token to log in again.
                logger.warning("handshake: cannot authenticate, database unavailable (%s)", type(exc).__name__)
                scope["auth_unavailable"] = True
        return await self.app(scope, receive, send)

    @staticmethod
    async def _identify(scope: dict[str, Any], authorization: str | None) -> None:
        if authorization is not None:
            scheme, _, raw = authorization.partition(" ")
            if scheme.lower() != "bearer" or not raw.strip():
                scope["auth_error"] = "Authorization must be 'Bearer <access token>'"
            else:
                try:
                    scope["identity"] = await database_sync_to_async(identity_from_token)(raw.strip())
                except AuthFailed as exc:
                    scope["auth_error"] = str(exc)
        else:
            scope["identity"] = await _session_identity(scope)
