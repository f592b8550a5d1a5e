"""Reading durable events back from the log for gap fills and replays (async wrapper)."""

from __future__ import annotations

from channels.db import database_sync_to_async

from chat import selectors


@database_sync_to_async
def load_events(conversation_id: str, after_seq: int, up_to_seq: int) -> list[tuple[int, str]]:
    """(seq, encoded frame) for after_seq < seq ≤ up_to_seq, oldest first (compacted ones absent)."""
    events = selectors.events_after(
        conversation_id=conversation_id, after_seq=after_seq, up_to_seq=up_to_seq, limit=up_to_seq - after_seq
    )
    return [(e.seq, e.encoded()) for e in events]
