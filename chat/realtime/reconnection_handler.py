"""Reading durable events back for gap fills and replays: the hot buffer first, then the log.

Log reads go through breaker("postgres"): while PostgreSQL is refusing connections each read
would otherwise wait out the connection pool's timeout on the process's one database thread,
holding up every other database call behind it. With the circuit open they fail at once, and the
callers (hub, outbox) try again later.
"""

from __future__ import annotations

from dataclasses import dataclass

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


async def log_heads(conversation_ids: list[str]) -> list[int]:
    """The newest seq of each conversation, from the log, in one query. A background read (the
    hub's resync), so not on the process's shared database thread: queued behind commands, or
    holding them up while the database is slow, it would cost more than the thread it needs."""
    async with breaker("postgres").guard():
        return await database_sync_to_async(selectors.conversation_heads, thread_sensitive=False)(
            conversation_ids=conversation_ids
        )


@dataclass(frozen=True)
class Resume:
    """Where a subscription's stream starts: `recovered` is None for a fresh subscribe (no
    since_seq), True when every missed event will be replayed, False when the gap is larger than
    the tier's replay limit (the client reloads history instead; the stream starts at the head)."""

    start_seq: int
    recovered: bool | None


def resume_from(*, head_seq: int, since_seq: int | None, replay_limit: int) -> Resume:
    """Decide a (re)subscribe's starting point. A client ahead of the head (a stale cursor of a
    recreated conversation) starts at the head rather than waiting for seqs that will be reused."""
    if since_seq is None:
        return Resume(head_seq, None)
    if head_seq - since_seq > replay_limit:
        return Resume(head_seq, False)
    return Resume(min(since_seq, head_seq), True)
