"""History retention, enforced (docs/operations.md "Retention"): what the tier table's `history_retention_days`
says is expired is deleted (or archived, then deleted), not only hidden from readers.

Whose tier: readers are served as far back as their own tier allows (chat/history.py, chat/selectors.py
`events_before`: the caller's `history_retention_days`). So that the purge never takes away anything a reader is
still shown, a conversation keeps its history as long as the LONGEST retention among the people who read it: its
active members and its workspace's active owners (whose tier is the workspace's, as for analytics). Any of them
on a tier that keeps history forever (enterprise) keeps the whole conversation. Nobody at all: the free tier's.

What goes, per conversation, older than now - that retention:
- events, except the newest one (the head stays, so `last_seq` and a resume against it keep working; replay and
  history already skip holes below the head, as after compaction, docs/protocol.md §4);
- messages (their feedback with them), except the head's own;
- agent runs that ended before the cutoff (their tool calls and approvals in cascade).
Each in batches of BATCH rows, one short transaction per batch; messages and runs before the events, so a pass
cut short (a crash, a deploy) leaves the conversation due and the next pass finishes it. Running it twice
deletes nothing the second time.

HISTORY_RETENTION_MODE "archive": before each batch of events is deleted, it is written to
HISTORY_ARCHIVE_DIR/<conversation id>/<first seq>-<last seq>.jsonl.gz, one event frame per line (the socket's
shape), written to a temporary name and renamed, so a file is whole or absent; a batch retried after a crash
rewrites the same file.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from agents.models import AgentRun
from chat.models import Conversation, ConversationMember, Event, Message, MessageFeedback, Role
from chat.tiers import all_tiers, limits_for
from chat.wire.frames import StoredEvent

logger = logging.getLogger(__name__)

MODES = ("delete", "archive")
# Rows per transaction: short enough not to hold locks for long, big enough that a backlog goes quickly.
BATCH = 1000
# Conversations looked at per scan query (three queries per scan, whatever the conversations hold).
SCAN = 500
# The agent worker's hook: a pass at most this often per process, and at most this long of work per call
# (a long pass continues at the next monitoring sweep, where it stopped).
PASS_EVERY_S = 3600.0
SLICE_S = 20.0


@dataclass
class Purged:
    conversations: int = 0  # conversations that lost anything
    events: int = 0
    messages: int = 0
    feedback: int = 0
    runs: int = 0
    archive_files: int = 0

    def add(self, other: Purged) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name.replace('_', ' ')}" for f in fields(self))


def retention_days(tiers: set[str]) -> int | None:
    """The longest retention among these tiers (None: forever); no tier at all: the free tier's."""
    if not tiers:
        return limits_for("free").history_retention_days
    days = [limits_for(tier).history_retention_days for tier in tiers]
    return None if any(d is None for d in days) else max(d for d in days if d is not None)


def conversation_retentions(conversation_ids: list[uuid.UUID]) -> dict[uuid.UUID, int | None]:
    """Each conversation's retention (module docstring: its readers' longest). Two queries."""
    readers: dict[uuid.UUID, set[str]] = {cid: set() for cid in conversation_ids}
    members = ConversationMember.objects.filter(conversation_id__in=conversation_ids, user__is_active=True)
    for cid, tier in members.values_list("conversation_id", "user__tier").distinct():
        readers[cid].add(tier)
    owners = Conversation.objects.filter(
        id__in=conversation_ids,
        workspace__memberships__role=Role.OWNER,
        workspace__memberships__user__is_active=True,
    )
    for cid, tier in owners.values_list("id", "workspace__memberships__user__tier").distinct():
        readers[cid].add(tier)
    return {cid: retention_days(tiers) for cid, tiers in readers.items()}


def _forever() -> bool:
    """Every tier keeps history forever: nothing can ever be due, so a pass need not look."""
    return all(limits.history_retention_days is None for limits in all_tiers().values())


def _check_mode() -> str:
    mode = settings.HISTORY_RETENTION_MODE
    if mode not in MODES:
        raise ImproperlyConfigured(f"HISTORY_RETENTION_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "archive" and not settings.HISTORY_ARCHIVE_DIR:
        raise ImproperlyConfigured("HISTORY_RETENTION_MODE=archive needs HISTORY_ARCHIVE_DIR (a directory)")
    return str(mode)


def purge_expired_history(
    now: datetime | None = None, *, after: uuid.UUID | None = None, budget_s: float | None = None
) -> tuple[Purged, uuid.UUID | None]:
    """Purge every conversation's expired history, conversations in id order from `after` (exclusive).
    Returns what went and, when `budget_s` (seconds of work) ran out first, the id to continue after
    (None: the pass reached the last conversation)."""
    mode = _check_mode()
    total = Purged()
    if _forever():
        return total, None
    now = now or timezone.now()
    deadline = None if budget_s is None else time.monotonic() + budget_s
    oldest = Event.objects.filter(conversation_id=OuterRef("id")).order_by("seq")
    while True:
        scan = Conversation.objects.order_by("id")
        if after is not None:
            scan = scan.filter(id__gt=after)
        # Per conversation: its head and its oldest event's seq and time, each an index lookup.
        rows = list(
            scan.annotate(
                oldest_seq=Subquery(oldest.values("seq")[:1]), oldest_at=Subquery(oldest.values("created_at")[:1])
            ).values_list("id", "last_seq", "oldest_seq", "oldest_at")[:SCAN]
        )
        if not rows:
            return total, None
        retentions = conversation_retentions([row[0] for row in rows])
        for cid, head, oldest_seq, oldest_at in rows:
            days = retentions[cid]
            if days is None or oldest_at is None or oldest_seq >= head:
                continue
            cutoff = now - timedelta(days=days)
            if oldest_at < cutoff:
                total.add(purge_conversation(cid, head_seq=head, cutoff=cutoff, mode=mode))
        after = rows[-1][0]
        if deadline is not None and time.monotonic() >= deadline:
            return total, after


def purge_conversation(conversation_id: uuid.UUID, *, head_seq: int, cutoff: datetime, mode: str) -> Purged:
    """Delete the conversation's history older than `cutoff`, below its head `head_seq` (module docstring)."""
    out = Purged()
    old_messages = Message.objects.filter(conversation_id=conversation_id, created_at__lt=cutoff).exclude(
        seq__gte=head_seq
    )
    while ids := list(old_messages.order_by("seq").values_list("id", flat=True)[:BATCH]):
        with transaction.atomic():
            out.feedback += MessageFeedback.objects.filter(message_id__in=ids).delete()[0]
            out.messages += Message.objects.filter(id__in=ids).delete()[1].get(Message._meta.label, 0)
    ended = AgentRun.objects.filter(conversation_id=conversation_id, finished_at__lt=cutoff)
    while ids := list(ended.values_list("id", flat=True)[:BATCH]):
        with transaction.atomic():
            out.runs += AgentRun.objects.filter(id__in=ids).delete()[1].get(AgentRun._meta.label, 0)
    old_events = Event.objects.filter(conversation_id=conversation_id, seq__lt=head_seq, created_at__lt=cutoff)
    if mode != "archive":  # only the ids are needed
        old_events = old_events.only("id", "seq")
    while rows := list(old_events.order_by("seq")[:BATCH]):
        if mode == "archive":
            archive(conversation_id, rows)
            out.archive_files += 1
        with transaction.atomic():
            out.events += Event.objects.filter(id__in=[row.id for row in rows]).delete()[0]
    if out.events or out.messages or out.runs:
        out.conversations = 1
        logger.info("retention: conversation %s before %s: %s", conversation_id, cutoff.isoformat(), out)
    return out


def archive(conversation_id: uuid.UUID, rows: list[Event]) -> Path:
    """Write these events (oldest first) as one JSONL.gz file, whole or not at all."""
    folder = Path(settings.HISTORY_ARCHIVE_DIR) / str(conversation_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{rows[0].seq:012d}-{rows[-1].seq:012d}.jsonl.gz"
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for row in rows:
                gz.write(StoredEvent.from_row(row).encoded().encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, path)
    return path


# --- the agent worker's hook ------------------------------------------------------------------------------------

_next_pass_at = 0.0
_resume_after: uuid.UUID | None = None


def purge_expired_when_due() -> Purged:
    """The agent worker's monitoring loop calls this every sweep: a pass at most once per PASS_EVERY_S in this
    process, each call working at most SLICE_S and the next call continuing where it stopped."""
    global _next_pass_at, _resume_after
    if _resume_after is None and time.monotonic() < _next_pass_at:
        return Purged()
    if _resume_after is None:
        _next_pass_at = time.monotonic() + PASS_EVERY_S
    purged, _resume_after = purge_expired_history(after=_resume_after, budget_s=SLICE_S)
    return purged
