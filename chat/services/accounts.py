"""Account actions that reach live sockets: logout and deactivation close all of a user's sockets
on every server process (docs/protocol.md §1)."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from chat.infra.doorbells import UserMessage
from chat.models import User
from chat.publishing import UserTold, after_commit

CLOSE_LOGGED_OUT = 4401
CLOSE_DISABLED = 4403


def _after_commit(user_id: int, message: UserMessage) -> None:
    """Tell the user's sockets once the change that caused it is committed (at once outside a
    transaction). Told earlier, a socket could reconnect or resubscribe in between, still see the
    old state (an active account, a membership), and outlive the change it was closed for."""
    after_commit(UserTold(user_id, message))


def user_sockets_close(*, user_id: int, code: int) -> None:
    _after_commit(user_id, {"action": "close", "code": code})


def membership_revoked(*, user_id: int, conversation_id: str) -> None:
    """The user lost access to a conversation: every socket of theirs stops receiving it now."""
    _after_commit(user_id, {"action": "revoke", "conversation": conversation_id})


def membership_role_changed(*, user_id: int, conversation_id: str, role: str) -> None:
    """The user's role changed: sockets that keep an access for the conversation (used only while
    the database is unreachable) hold the new role once this commits."""
    _after_commit(user_id, {"action": "role", "conversation": conversation_id, "role": role})


def user_deactivate(*, user_id: int) -> None:
    User.objects.filter(id=user_id).update(is_active=False)
    user_sockets_close(user_id=user_id, code=CLOSE_DISABLED)


@receiver(user_logged_out)
def _close_sockets_on_logout(sender: object, request: HttpRequest, user: User | None, **kwargs: object) -> None:
    # Django's own logout hook (not domain logic of ours): the session is gone, so are its sockets.
    if user is not None:
        user_sockets_close(user_id=user.id, code=CLOSE_LOGGED_OUT)
