"""The per-conversation event log: gap-free seq under a row lock (DESIGN §2)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from chat.models import Conversation, Event


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StoredEvent:
    """A committed (or about to be committed) durable event, in its wire shape."""

    conversation_id: str
    seq: int
    type: str
    ts: str
    data: dict[str, Any]
    _encoded: list[str] = field(default_factory=list, compare=False, repr=False)

    def frame(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "conversation": self.conversation_id,
            "seq": self.seq,
            "ts": self.ts,
            "data": self.data,
        }

    def encoded(self) -> str:
        """The frame as JSON text, encoded once however many sockets receive it."""
        if not self._encoded:
            self._encoded.append(json.dumps(self.frame(), separators=(",", ":"), ensure_ascii=False))
        return self._encoded[0]

    @classmethod
    def from_row(cls, row: Event) -> StoredEvent:
        return cls(str(row.conversation_id), row.seq, row.type, rfc3339(row.created_at), row.data)


def append_event(
    *,
    conversation_id: uuid.UUID | str,
    type: str,
    data: dict[str, Any],
    run_id: uuid.UUID | str | None = None,
) -> StoredEvent:
    """Append one durable event and return it. Must run inside the caller's transaction.

    The UPDATE of the conversation's `last_seq` row-locks it for the rest of that transaction, so
    two writers of one conversation take seq N and N+1 in commit order: no holes, no reordering.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("append_event must be called inside transaction.atomic()")
    # UPDATE … RETURNING takes the row lock and the next seq in one round trip (PostgreSQL, and
    # SQLite ≥ 3.35 in embedded mode).
    table = Conversation._meta.db_table
    connection = transaction.get_connection()
    pk = Conversation._meta.pk.get_db_prep_value(conversation_id, connection)  # type: ignore[union-attr]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq", [pk])
        row = cursor.fetchone()
    if row is None:
        raise Conversation.DoesNotExist(str(conversation_id))
    seq = int(row[0])
    now = timezone.now()
    Event.objects.create(conversation_id=conversation_id, seq=seq, type=type, data=data, created_at=now, run_id=run_id)
    from monitoring.event_monitor import record_event  # monitoring observes the one write path

    record_event(type=type, data=data, at=now, conversation_id=str(conversation_id))
    return StoredEvent(str(conversation_id), seq, type, rfc3339(now), data)
