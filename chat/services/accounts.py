"""Account actions that reach live sockets and tokens: logout, log-out-everywhere, a password change and
deactivation close the user's sockets on every server process (docs/protocol.md §1), and the last three
revoke every token minted before (docs/operations.md "Tokens: lifetime and revocation").

How a token is revoked: every token carries simplejwt's password claim (a hash of the password hash,
CHECK_REVOKE_TOKEN) and the user's token version (`stamp_token`); `selectors.token_holder` refuses a token
whose claims no longer match the user row. A password change changes the first on every road that
saves a new hash; log-out-everywhere and deactivation bump the second.

Also the user's own profile settings the page writes: the time zone the browser reports
(`time_zone_set`), which agents answer times in.
"""

from __future__ import annotations

import functools
import zoneinfo
from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import HttpRequest

from chat.errors import ServiceError
from chat.infra.doorbells import UserMessage
from chat.models import User
from chat.publishing import UserTold, after_commit
from chat.selectors import TOKEN_VERSION_CLAIM

CLOSE_LOGGED_OUT = 4401
CLOSE_DISABLED = 4403


def _after_commit(user_id: int, message: UserMessage) -> None:
    """Tell the user's sockets once the change that caused it is committed (at once outside a
    transaction). Told earlier, a socket could reconnect or resubscribe in between, still see the
    old state (an active account, a membership), and outlive the change it was closed for."""
    after_commit(UserTold(user_id, message))


def user_sockets_close(*, user_id: int, code: int, recheck: bool = True) -> None:
    """Close the user's sockets: with `recheck`, those whose identity the change revoked (each asks the
    database); without it (a Django session's logout, which revokes no token), all of them."""
    _after_commit(user_id, {"action": "close", "code": code, "recheck": recheck})


def membership_revoked(*, user_id: int, conversation_id: str) -> None:
    """The user lost access to a conversation: every socket of theirs stops receiving it now."""
    _after_commit(user_id, {"action": "revoke", "conversation": conversation_id})


def membership_role_changed(*, user_id: int, conversation_id: str, role: str) -> None:
    """The user's role changed: sockets that keep an access for the conversation (used only while
    the database is unreachable) hold the new role once this commits."""
    _after_commit(user_id, {"action": "role", "conversation": conversation_id, "role": role})


def stamp_token(token: Any, user: User) -> Any:
    """Put the user's token version in a token about to be handed out (a refresh token passes it on
    to every access token minted from it)."""
    token[TOKEN_VERSION_CLAIM] = user.token_version
    return token


@functools.cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # reads the tz database: ~70 ms, once


def time_zone_set(*, user_id: int, body: object) -> User:
    """Store the IANA zone the user's browser reports: `{"time_zone": "Europe/Paris"}` ("" for none:
    UTC). Only names the tz database lists (never a path, never a guess); nothing else is changed."""
    if not isinstance(body, dict) or set(body) != {"time_zone"}:
        raise ServiceError("bad_request", "expected a JSON object with time_zone, and only that")
    name = body["time_zone"]
    if not isinstance(name, str):
        raise ServiceError("bad_request", "time_zone: expected a string")
    if name and name not in _known_timezones():
        shown = name if len(name) <= 64 else name[:63] + "…"
        raise ServiceError(
            "bad_request", f"time_zone: unknown time zone {shown!r}, expected an IANA name such as 'Europe/Paris'"
        )
    User.objects.filter(id=user_id).update(time_zone=name)
    return User.objects.only("id", "username", "tier", "time_zone").get(id=user_id)


def tokens_revoke(*, user_id: int) -> None:
    """Log out everywhere: every token minted before stops working (REST, socket, refresh), every
    Django session ends (the version is part of its auth hash), and every open socket is closed 4401."""
    User.objects.filter(id=user_id).update(token_version=F("token_version") + 1)
    user_sockets_close(user_id=user_id, code=CLOSE_LOGGED_OUT)


def user_deactivate(*, user_id: int) -> None:
    # The version bump keeps the old tokens dead even if staff reactivate the account later.
    User.objects.filter(id=user_id).update(is_active=False, token_version=F("token_version") + 1)
    user_sockets_close(user_id=user_id, code=CLOSE_DISABLED)


@receiver(user_logged_out)
def _close_sockets_on_logout(sender: object, request: HttpRequest, user: User | None, **kwargs: object) -> None:
    # Django's own logout hook (not domain logic of ours): the session is gone, so are its sockets.
    if user is not None:
        user_sockets_close(user_id=user.id, code=CLOSE_LOGGED_OUT, recheck=False)


@receiver(post_save, sender=User)
def _close_sockets_on_password_change(sender: object, instance: User, created: bool, **kwargs: object) -> None:
    # Django's hook for every road that saves a new password (set_password then save: the admin's
    # password form, the password change view, a shell). `_password` holds the new raw password from
    # set_password until the save completes; a hash upgrade at login clears it first and is no change.
    # The tokens are already dead (their password claim no longer matches); their sockets close here.
    if not created and getattr(instance, "_password", None) is not None:
        user_sockets_close(user_id=instance.id, code=CLOSE_LOGGED_OUT)


@receiver(post_delete, sender=User)
def _close_sockets_on_delete(sender: object, instance: User, **kwargs: object) -> None:
    # A deleted account's tokens name nobody and are refused; its open sockets go too.
    user_sockets_close(user_id=instance.id, code=CLOSE_DISABLED)
