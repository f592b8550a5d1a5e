"""What a socket does with a message for its user (chat/infra/doorbells.py UserMessage), which reaches
every socket of the user on every server process: close, a stored notification, a frame for the user's
other devices, a changed role, a revoked membership."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from channels.db import database_sync_to_async

from chat.errors import ProtocolError
from chat.realtime.auth import revoked_close_code
from chat.realtime.protocol import reply_error
from chat.realtime.session import Session

Close = Callable[[int], Coroutine[Any, Any, None]]


def handle(
    session: Session, message: Mapping[str, Any], *, spawn: Callable[[Coroutine[Any, Any, Any]], None], close: Close
) -> None:
    action = message.get("action")
    if action == "close":
        code = int(message.get("code", 4401))
        if message.get("drain"):  # this server is going down: what is queued first (chat/realtime/shutdown.py)
            session.outbox.close_after_queued(lambda: close(code))
        else:
            spawn(close_if_revoked(session, code, close) if message.get("recheck") else close(code))
    elif action == "notification":
        session.outbox.send_frame(message["frame"])
    elif action == "frame":  # e.g. a draft saved on another device: for this user's sockets on it
        if (
            message.get("conversation") in session.subscriptions
            and message.get("exclude_session") != session.session_id
        ):
            session.outbox.send_frame(message["frame"])
    elif action == "role":
        conversation_id = str(message.get("conversation"))
        held = session.subscription_access.get(conversation_id)
        if held is not None:
            session.subscription_access[conversation_id] = dataclasses.replace(held, role=str(message.get("role")))
    elif action == "revoke":
        conversation_id = str(message.get("conversation"))
        if conversation_id in session.subscriptions:
            # Stop now: the hub may dispatch the next event before the spawned clean-up runs.
            session.outbox.stop_stream(conversation_id)
            spawn(session.drop_subscription(conversation_id))
            session.outbox.send_frame(
                reply_error(None, ProtocolError("not_found", f"conversation {conversation_id} not found"))
            )


async def close_if_revoked(session: Session, code: int, close: Close) -> None:
    """A revocation's close (password change, log out everywhere, deactivation) may arrive after this
    socket authenticated against the changed account (a login with the new password): the database says
    whether this socket's identity stands. It closes when that cannot be told: a session's socket (its
    identity holds no token to check) or a database that does not answer."""
    if session.identity.claims is None:
        return await close(code)
    revoked = await database_sync_to_async(revoked_close_code)(session.identity, unknown=code)
    if revoked is not None:
        await close(revoked)
