"""Doorbells on the channel layer, rung after commit.

The channel layer is a doorbell, not a mailbox (DESIGN, lesson 1): a lost doorbell costs latency,
never data, because every receiver checks `seq` continuity and reads gaps from the log. Small
frames ride in the doorbell so the common case needs no read at all; larger ones are fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from channels.layers import get_channel_layer

from chat.realtime.buffer import conversation_stream, get_buffer, user_stream
from chat.services.events import StoredEvent
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

# Frames above this ride the log, not the doorbell: pub/sub payloads stay small (DESIGN "facts").
DOORBELL_INLINE_MAX = 16 * 1024


def conversation_group(conversation_id: str) -> str:
    return f"conv.{conversation_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


async def publish_events(events: Sequence[StoredEvent]) -> None:
    """Buffer, then ring. The buffer is written first so that a receiver whose doorbell shows a
    gap finds the missing events there rather than in the log."""
    await _buffer_events(events)
    layer = get_channel_layer()
    if layer is None:
        return
    for event in events:
        text = event.encoded()
        message: dict[str, Any] = {"type": "conv.event", "c": event.conversation_id, "s": event.seq}
        if len(text) <= DOORBELL_INLINE_MAX:
            message["f"] = text
        try:
            await layer.group_send(conversation_group(event.conversation_id), message)
        except Exception:  # the event is durable; subscribers fill the gap from the log
            metrics.inc("doorbell_failures")
            logger.warning("doorbell for %s#%s not delivered", event.conversation_id, event.seq, exc_info=True)


async def _buffer_events(events: Sequence[StoredEvent]) -> None:
    by_stream: dict[str, list[tuple[int, str]]] = {}
    for event in events:
        by_stream.setdefault(conversation_stream(event.conversation_id), []).append((event.seq, event.encoded()))
    for stream, entries in by_stream.items():
        try:
            await get_buffer().append(stream, entries)
        except Exception:  # the log has them; a replay will read it instead
            metrics.inc("buffer_errors")
            logger.warning("buffer append failed for %s", stream, exc_info=True)


async def publish_notification(user_id: int, seq: int, frame: str) -> None:
    """A stored notification: into the user's hot buffer, then to every socket of the user."""
    try:
        await get_buffer().append(user_stream(user_id), [(seq, frame)])
    except Exception:  # the database has it; sync_notifications reads it from there instead
        metrics.inc("buffer_errors")
        logger.warning("buffer append failed for user %s", user_id, exc_info=True)
    await publish_to_user(user_id, {"action": "notification", "f": frame})


async def publish_to_user(user_id: int, message: dict[str, Any]) -> None:
    """Control or notification message for every socket of one user, on every server process."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(user_group(user_id), {"type": "user.event", "u": user_id, **message})
    except Exception:
        metrics.inc("doorbell_failures")
        logger.warning("user doorbell for %s not delivered", user_id, exc_info=True)
