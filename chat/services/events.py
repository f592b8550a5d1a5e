"""The per-conversation event log: gap-free seq under a row lock."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from chat.models import Conversation, Event
from chat.publishing import events_committed
from chat.services.notifications import RUN_ENDS, run_ended
from chat.wire.frames import StoredEvent, rfc3339
from enterprise.sla import record_run_end
from enterprise.webhooks import enqueue_for_event


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
    # UPDATE … RETURNING takes the row lock and the next seq (and the workspace, for webhooks) in one
    # round trip (PostgreSQL, and SQLite ≥ 3.35 in embedded mode).
    table = Conversation._meta.db_table
    connection = transaction.get_connection()
    pk = Conversation._meta.pk.get_db_prep_value(conversation_id, connection)  # type: ignore[union-attr]
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seq = last_seq + 1, last_activity_at = %s WHERE id = %s"
            " RETURNING last_seq, workspace_id",
            [connection.ops.adapt_datetimefield_value(now), pk],
        )
        row = cursor.fetchone()
    if row is None:
        raise Conversation.DoesNotExist(str(conversation_id))
    seq = int(row[0])
    Event.objects.create(conversation_id=conversation_id, seq=seq, type=type, data=data, created_at=now, run_id=run_id)
    from monitoring.event_monitor import record_event  # monitoring observes the one write path

    record_event(type=type, data=data, at=now, conversation_id=str(conversation_id))
    # The workspace's subscribed webhook endpoints get a delivery, written in this transaction (outbox).
    enqueue_for_event(workspace_id=row[1], conversation_id=str(conversation_id), seq=seq, type=type, data=data, at=now)
    if run_id is not None and type in RUN_ENDS:  # its requester may be told, if they were away
        run_ended(run_id=str(run_id), conversation_id=str(conversation_id), seq=seq, type=type, data=data)
        # The workspace's SLA measurements (enterprise/sla.py) count the run's end with it.
        record_run_end(workspace_id=row[1], run_id=str(run_id), type=type, at=now)
    event = StoredEvent(str(conversation_id), seq, type, rfc3339(now), data)
    events_committed([event])  # every durable event is published once it commits, by whoever wrote it
    return event
