"""Compaction of finished runs' answer chunks (docs/operations.md "Compaction", docs/protocol.md §2 and §4).

Every coalesced chunk of a streamed answer is a durable `agent_delta` event, so a conversation's log, its
replays and its history pages grow with every token. The chat.v1 contract (§4) allows deleting the deltas of a
run that ended, since its terminal event carries the answer: `agent_completed.text` the whole of it,
`agent_cancelled.partial_text` all that was streamed. `agent_failed` carries no text, so a failed run keeps its
deltas: they are its only record of what it streamed.

What goes: the `agent_delta` events of runs that completed or were cancelled more than
AGENT_DELTA_COMPACT_AFTER_S ago (a socket that resumes right after the end, or an AG-UI stream catching up,
still replays the answer as it streamed). Nothing else: no other event type, no event of a run still queued,
running or waiting for approval, never the conversation's newest event (the head stays, so `last_seq` and a
resume against it keep working; a delta is never a finished run's head anyway, its terminal event comes after).
The readers already skip holes below the head (outbox fill, replay, history, AG-UI export).

Runs are taken oldest end first through a partial index of the ones still due; their deltas go
AGENT_DELTA_COMPACT_BATCH rows per transaction, and each run is marked (`deltas_compacted_at`) once none of its
deltas is left, so a pass cut short (a crash, a deploy, the worker's time slice) leaves it due and the next
pass finishes it. Running it twice deletes nothing the second time. Several workers may compact at once: each
batch deletes its rows in id order (no deadlock between two passes), and a row another pass deleted first is
simply not counted.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.models import AgentRun, RunStatus
from chat.models import Event

logger = logging.getLogger(__name__)

# Only these ends carry the answer in their terminal event (module docstring).
COMPACTABLE = (RunStatus.COMPLETED, RunStatus.CANCELLED)
# Runs taken per scan query: their deltas are then deleted batch by batch.
RUNS_PER_SCAN = 100
# Bounds of the settings (checked at startup and on every pass): a batch of one row is slow but valid; more
# than MAX_BATCH rows would hold locks on the log for longer than a reader should wait.
MAX_BATCH = 10_000
# The agent worker's hook: a pass at most this often per process, at most this long of work per call (a
# longer pass goes on at the next monitoring sweep: the runs left are still due).
PASS_EVERY_S = 60.0
SLICE_S = 5.0


@dataclass
class Compacted:
    runs: int = 0  # runs whose deltas are now gone (marked)
    events: int = 0  # agent_delta rows deleted
    batches: int = 0  # transactions that deleted rows

    def add(self, other: Compacted) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name}" for f in fields(self))


@dataclass(frozen=True)
class CompactionConfig:
    after_s: float
    batch: int


def check_after_s(value: object, name: str = "AGENT_DELTA_COMPACT_AFTER_S") -> float:
    """Seconds since a run's end before its deltas go: a finite number, at least 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ImproperlyConfigured(f"{name} must be a number of seconds, 0 or more, not {value!r}")
    return float(value)


def check_batch(value: object, name: str = "AGENT_DELTA_COMPACT_BATCH") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise ImproperlyConfigured(f"{name} must be a whole number from 1 to {MAX_BATCH}, not {value!r}")
    return value


def compaction_config() -> CompactionConfig:
    """The settings, validated (chat/apps.py calls this at startup, so a bad value stops the process there)."""
    after_s = check_after_s(settings.AGENT_DELTA_COMPACT_AFTER_S)
    return CompactionConfig(after_s=after_s, batch=check_batch(settings.AGENT_DELTA_COMPACT_BATCH))


def compact_finished_runs(
    now: datetime | None = None,
    *,
    older_than_s: float | None = None,
    batch: int | None = None,
    budget_s: float | None = None,
) -> Compacted:
    """Delete the deltas of every run due (module docstring), oldest end first. `older_than_s` and `batch`
    default to the settings; `budget_s`: stop after about this many seconds of work (the runs left stay due)."""
    config = compaction_config()
    after_s = config.after_s if older_than_s is None else check_after_s(older_than_s, "older_than_s")
    size = config.batch if batch is None else check_batch(batch, "batch")
    now = now or timezone.now()
    deadline = None if budget_s is None else time.monotonic() + budget_s
    due = AgentRun.objects.filter(
        status__in=COMPACTABLE, finished_at__lt=now - timedelta(seconds=after_s), deltas_compacted_at__isnull=True
    ).order_by("finished_at", "id")
    total = Compacted()
    while run_ids := list(due.values_list("id", flat=True)[:RUNS_PER_SCAN]):
        total.add(compact_runs(run_ids, batch=size))
        if deadline is not None and time.monotonic() >= deadline:
            break
    if total.events:
        logger.info("compaction: runs ended before %s: %s", (now - timedelta(seconds=after_s)).isoformat(), total)
    return total


def compact_runs(run_ids: list[uuid.UUID], *, batch: int) -> Compacted:
    """Delete these runs' agent_delta events below their conversation's head, `batch` rows per transaction,
    then mark them. Only runs that ended as COMPACTABLE are touched, whatever the caller passes."""
    out = Compacted()
    ended = list(AgentRun.objects.filter(id__in=run_ids, status__in=COMPACTABLE).values_list("id", flat=True))
    if not ended:
        return out
    deltas = Event.objects.filter(run_id__in=ended, type="agent_delta", seq__lt=F("conversation__last_seq"))
    while ids := list(deltas.order_by("id").values_list("id", flat=True)[:batch]):
        with transaction.atomic():
            out.events += Event.objects.filter(id__in=ids, type="agent_delta").delete()[0]
        out.batches += 1
    out.runs = AgentRun.objects.filter(id__in=ended, deltas_compacted_at__isnull=True).update(
        deltas_compacted_at=timezone.now()
    )
    return out


# --- the agent worker's hook ------------------------------------------------------------------------------------

_next_pass_at = 0.0


def compact_when_due() -> Compacted:
    """The agent worker's monitoring loop calls this every sweep: a pass at most once per PASS_EVERY_S in this
    process, working at most SLICE_S; when the slice ran out, the next sweep goes on with what is still due."""
    global _next_pass_at
    if time.monotonic() < _next_pass_at:
        return Compacted()
    started = time.monotonic()
    done = compact_finished_runs(budget_s=SLICE_S)
    # Cut short by its slice: the backlog goes on at the next sweep, not a whole interval later.
    if time.monotonic() - started < SLICE_S:
        _next_pass_at = time.monotonic() + PASS_EVERY_S
    return done
