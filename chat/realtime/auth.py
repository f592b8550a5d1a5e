"""Handshake checks for /ws/chat/: the Origin, and who is connecting (PROTOCOL §1).

Three ways in: the Django session cookie, `Authorization: Bearer <access>`, or (for browsers on
another origin) an `auth` frame after the handshake. Tokens in the query string are refused
because they end up in access logs. Nothing here logs a token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie
from django.http.request import validate_host
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from chat.models import User

logger = logging.getLogger(__name__)

QUERY_TOKEN_KEYS = {"token", "access", "access_token", "jwt", "auth", "authorization"}


class AuthFailed(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    user_id: int
    username: str
    tier: str
    method: str  # "session" | "jwt"
    expires_at: int | None  # unix seconds; None for session auth


def identity_from_token(raw: str) -> Identity:
    """Validate an access token and load its (active) user. Sync: call via database_sync_to_async."""
    try:
        token = AccessToken(raw)  # type: ignore[arg-type]
    except TokenError as exc:
        raise AuthFailed("invalid or expired token") from exc
    user_id = token.get(str(settings.SIMPLE_JWT.get("USER_ID_CLAIM", "user_id")))
    user = User.objects.filter(id=user_id).only("id", "username", "tier", "is_active").first()
    if user is None or not user.is_active:
        raise AuthFailed("unknown or inactive user")
    return Identity(user.id, user.username, user.tier, "jwt", int(token["exp"]))


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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        scope = dict(scope)
        scope["identity"] = None
        scope["auth_error"] = None
        scope["origin_ok"] = origin_allowed(_header(scope, b"origin"))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        authorization = _header(scope, b"authorization")
        if QUERY_TOKEN_KEYS & {k.lower() for k in query}:
            scope["auth_error"] = (
                "tokens in the query string are refused; use the Authorization header or an auth frame"
            )
        elif authorization is not None:
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
        return await self.app(scope, receive, send)
