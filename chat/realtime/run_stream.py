"""One run's durable events, live, for a reader that is not a socket (the AG-UI stream).

The source is the conversation's own stream, never a separate one: this joins the process's hub on
the conversation's group like a socket does (chat/realtime/broadcast_manager.py), reads what came
before the join or past a gap from the hot buffer, else the log (`load_events`), and keeps the
events of one run. Seqs only increase: an event at or below the last one handed on is a repeat.
A doorbell lost with nothing after it is caught by the idle poll of the log's head, so the reader
never waits on Redis for an event PostgreSQL already has.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from channels.db import database_sync_to_async

from chat import selectors
from chat.errors import NotFound
from chat.realtime.broadcast_manager import Hub
from chat.realtime.reconnection_handler import load_events, log_heads

# Doorbells held for a slow reader; past this they are dropped and the reader fills the gap from the
# buffer or the log when it catches up (an HTTP client reading slowly must not grow memory).
MAX_QUEUED = 1000


class AccessEnded(Exception):
    """The reader was removed from the conversation, or logged out everywhere: it gets nothing more."""


class _Doorbells:
    """The hub's sink for this reader: seqs (and the frame, when it rode along) in arrival order, and
    whether the reader's access ended (the same user messages that stop a socket)."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.queue: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue(maxsize=MAX_QUEUED)
        self.ended = False

    def deliver_event(self, conversation_id: str, seq: int, text: str | None) -> None:
        if not self.queue.full():
            self.queue.put_nowait((seq, text))

    def deliver_user(self, message: Mapping[str, Any]) -> None:
        action = message.get("action")
        if action == "close" or (action == "revoke" and message.get("conversation") == self.conversation_id):
            self.ended = True
            if not self.queue.full():
                self.queue.put_nowait((0, None))  # wake the reader now

    def send_frame(self, text: str) -> None:
        return None  # ephemeral frames (typing, presence) are no part of a run


async def _head(conversation_id: str) -> int:
    return (await log_heads([conversation_id]))[0]


async def run_frames(
    *, hub: Hub, user_id: int, conversation_id: str, run_id: str, after_seq: int, idle_s: float
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """The frames of run `run_id` with seq > after_seq, oldest first, as they are committed; None
    after every `idle_s` without any event of the conversation (the caller's keep-alive tick).
    Endless: the caller stops reading at the run's end (and must close the iterator). Raises
    AccessEnded once `user_id` is removed from the conversation or logged out everywhere."""
    doorbells = _Doorbells(conversation_id)
    await hub.join_user(user_id, doorbells)
    await hub.join(conversation_id, doorbells)
    try:
        try:  # removed before the join: no revoke reached this reader (as a socket's subscribe checks again)
            await database_sync_to_async(selectors.conversation_for_member)(
                user_id=user_id, conversation_id=conversation_id
            )
        except NotFound as exc:
            raise AccessEnded() from exc
        last = after_seq
        head = await _head(conversation_id)
        hub.observe_head(conversation_id, head)  # the hub's resync then catches a lost first doorbell
        rows = await load_events(conversation_id, last, head) if head > last else []
        while True:
            for seq, text in rows:
                if doorbells.ended:
                    raise AccessEnded()
                if seq <= last:
                    continue
                last = seq
                frame = json.loads(text)
                if (frame.get("data") or {}).get("run_id") == run_id:
                    yield frame
            try:
                rung, rung_text = await asyncio.wait_for(doorbells.queue.get(), idle_s)
            except TimeoutError:
                rung, rung_text = -1, None
            if doorbells.ended:
                raise AccessEnded()
            if rung < 0:
                head = await _head(conversation_id)
                rows = await load_events(conversation_id, last, head) if head > last else []
                if not rows:
                    yield None
                continue
            if rung <= last:
                rows = []
            elif rung == last + 1 and rung_text is not None:
                rows = [(rung, rung_text)]
            else:  # past a gap, or a frame too large to ride on its doorbell
                rows = await load_events(conversation_id, last, rung)
    finally:
        await hub.leave(conversation_id, doorbells)
        await hub.leave_user(user_id, doorbells)
