"""Reading durable events back for gap fills and replays: the hot buffer first, then the log.

Log reads go through breaker("postgres"): while PostgreSQL is refusing connections each read
would otherwise wait out the connection pool's timeout on the process's one database thread,
holding up every other database call behind it. With the circuit open they fail at once, and the
callers (hub, outbox) try again later.
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat import selectors
from chat.infra.breakers import breaker
from chat.infra.message_buffer import buffered_or_none, conversation_stream
from monitoring.metrics import metrics


def _events_from_log(conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
    events = selectors.events_after(
        conversation_id=conversation_id, after_seq=after_seq, up_to_seq=up_to_seq, limit=up_to_seq - after_seq
    )
    return [(e.seq, e.encoded()) for e in events]


async def load_from_log(conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
    """(seq, encoded frame) for after_seq < seq ≤ up_to_seq, oldest first (compacted ones absent)."""
    async with breaker("postgres").guard():
        return await database_sync_to_async(_events_from_log)(conversation_id, after_seq, up_to_seq)


async def load_events(conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
    """The events after_seq < seq ≤ up_to_seq: from the buffer when it has all of them, else the log."""
    rows = await buffered_or_none(conversation_stream(conversation_id), after_seq, up_to_seq)
    if rows is not None:
        metrics.inc("replays", source="buffer")
        return rows
    metrics.inc("replays", source="log")
    return await load_from_log(conversation_id, after_seq, up_to_seq)


def _heads(conversation_ids: list[str]) -> list[int]:
    from chat.models import Conversation

    rows = Conversation.objects.filter(id__in=conversation_ids).values_list("id", "last_seq")
    found = {str(conversation_id): int(last_seq) for conversation_id, last_seq in rows}
    return [found.get(c, 0) for c in conversation_ids]  # a deleted conversation: nothing to catch up on


async def log_heads(conversation_ids: list[str]) -> list[int]:
    """The newest seq of each conversation, from the log, in one query. A background read (the
    hub's resync), so not on the process's shared database thread: queued behind commands, or
    holding them up while the database is slow, it would cost more than the thread it needs."""
    async with breaker("postgres").guard():
        return await database_sync_to_async(_heads, thread_sensitive=False)(conversation_ids)
