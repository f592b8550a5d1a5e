"""History by messages (docs/protocol.md §3, `history` with `unit: "messages"`): a page counts items
a reader sees, not rows of the event log.

Paging by events made one long answer (hundreds of `agent_delta` rows) fill a page, so a reader saw
the tail of an answer and not the question. Here an item is a person's message, a whole agent run
(`agent_started` … its terminal event, with its thinking and tool events), or any other event of the
conversation's own (an edit, a deletion, a membership change). A page is one contiguous seq range
[low, before_seq) that holds `limit` items, widened downwards until no run in it is cut from its
start or from the message that asked for it; it returns every event of that range, oldest first,
except the `agent_delta` events of runs that already ended (their terminal event carries the whole
or partial text, which the chat.v1 contract's §4 allows). The next page is the range below `low`,
so paging backwards never skips or repeats an event.

Queries, on the (conversation, seq) unique index and the (run_id, type) index: one for the items'
seqs, one per widening step (one, rarely two), one for the page's rows and one for `has_more`.
The caller has checked access (`conversation_for_member`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from agents.models import TERMINAL_STATUSES, AgentRun
from chat.models import Event
from chat.wire.frames import StoredEvent

# How many times a page may widen to take in the start or the question of a run it cuts. Runs of
# one conversation do not overlap (one at a time), so each step reaches one queued run further
# back; a page needs more than two only behind a queue of runs asked for long before they started.
MAX_WIDENING = 20


@dataclass(frozen=True)
class HistoryPage:
    events: list[StoredEvent]
    has_more: bool
    # With has_more: the before_seq of the next older page.
    next_before_seq: int | None


def _log(conversation_id: str, retention_days: int | None) -> QuerySet[Event]:
    qs = Event.objects.filter(conversation_id=conversation_id)
    if retention_days is not None:
        qs = qs.filter(created_at__gte=timezone.now() - timedelta(days=retention_days))
    return qs


def messages_page(
    *, conversation_id: str, before_seq: int | None, limit: int, retention_days: int | None = None
) -> HistoryPage:
    """Up to `limit` items with seq < before_seq (all events of each, see the module), oldest first."""
    log = _log(conversation_id, retention_days)
    below = log.filter(seq__lt=before_seq) if before_seq is not None else log
    # An item starts at a row that is not part of a run, or at a run's agent_started.
    starts = list(
        below.filter(Q(run_id__isnull=True) | Q(type="agent_started"))
        .order_by("-seq")
        .values_list("seq", flat=True)[: limit + 1]
    )
    # Fewer items than asked: the page reaches the start of what the caller may read (0), taking the
    # rows of a run whose agent_started is older than the retention, if any.
    low = starts[limit - 1] if len(starts) > limit else 0
    runs = _runs_in(conversation_id, below.filter(seq__gte=low))
    for _ in range(MAX_WIDENING):
        firsts = [seq for _, _, started, asked in runs for seq in (started, asked) if seq is not None]
        widened = min([low, *firsts])
        if widened >= low:
            break
        low = widened
        runs = _runs_in(conversation_id, below.filter(seq__gte=low))
    ended = [run_id for run_id, status, _, _ in runs if status in TERMINAL_STATUSES]
    in_range = below.filter(seq__gte=low)
    rows = in_range.exclude(type="agent_delta", run_id__in=ended) if ended else in_range
    events = [StoredEvent.from_row(row) for row in rows.order_by("seq")]
    has_more = low > 0 and log.filter(seq__lt=low).exists()
    return HistoryPage(events, has_more, low if has_more else None)


def _runs_in(conversation_id: str, in_range: QuerySet[Event]) -> list[tuple[uuid.UUID, str, int | None, int | None]]:
    """(run id, status, seq of its agent_started, seq of the message that asked for it) of every run
    with an event in the range: one query."""
    started = Event.objects.filter(conversation_id=conversation_id, run_id=OuterRef("id"), type="agent_started")
    ids = in_range.filter(run_id__isnull=False).values("run_id")
    return list(
        AgentRun.objects.filter(conversation_id=conversation_id, id__in=ids)
        .annotate(started_seq=Subquery(started.values("seq")[:1]))
        .values_list("id", "status", "started_seq", "trigger_message__seq")
    )


def events_page(
    *, conversation_id: str, before_seq: int | None, limit: int, retention_days: int | None = None
) -> HistoryPage:
    """The classic page: up to `limit` events with seq < before_seq, oldest first."""
    log = _log(conversation_id, retention_days)
    if before_seq is not None:
        log = log.filter(seq__lt=before_seq)
    rows = list(log.order_by("-seq")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    next_before = rows[0].seq if has_more and rows else None
    return HistoryPage([StoredEvent.from_row(row) for row in rows], has_more, next_before)


def history_page(
    *, conversation_id: str, before_seq: int | None, limit: int, unit: str | None, retention_days: int | None = None
) -> HistoryPage:
    """A `history` page counted in `unit` ("messages", else events)."""
    page = messages_page if unit == "messages" else events_page
    return page(conversation_id=conversation_id, before_seq=before_seq, limit=limit, retention_days=retention_days)
