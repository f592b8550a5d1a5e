"""Reading durable events back for gap fills and replays: the hot buffer first, then the log."""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat import selectors
from chat.realtime.buffer import buffered_or_none, conversation_stream
from monitoring.metrics import metrics


@database_sync_to_async
def load_from_log(conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
    """(seq, encoded frame) for after_seq < seq ≤ up_to_seq, oldest first (compacted ones absent)."""
    events = selectors.events_after(
        conversation_id=conversation_id, after_seq=after_seq, up_to_seq=up_to_seq, limit=up_to_seq - after_seq
    )
    return [(e.seq, e.encoded()) for e in events]


async def load_events(conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
    """The events after_seq < seq ≤ up_to_seq: from the buffer when it has all of them, else the log."""
    rows = await buffered_or_none(conversation_stream(conversation_id), after_seq, up_to_seq)
    if rows is not None:
        metrics.inc("replays", source="buffer")
        return rows
    metrics.inc("replays", source="log")
    return await load_from_log(conversation_id, after_seq, up_to_seq)
