"""SLA reports for enterprise workspaces (REST `GET /api/workspaces/{id}/sla/?month=YYYY-MM`, the admin):
per-tier objectives (settings.SLA_OBJECTIVES, docs/operations.md "SLA objectives") against measurements
stored as they happen (`SlaMeasurement`, one row per objective and UTC day), never recomputed from logs.

- run_success: runs that ended completed or failed (a cancelled run is a person's choice: not counted);
  good = completed. Added in the transaction of the run's terminal event (`record_run_end`, from
  append_event, the one write path of every event).
- first_event: the same runs; good = its first agent event (agent_started, which members see at once)
  came within the tier's `first_event_s` of when the run could start (its prompt, or the end of the
  conversation's previous run: one run at a time per conversation, as monitoring measures it). The
  objective "p95 ≤ 2 s" is the same statement as "≥ 95 % of runs within 2 s", which is what is stored.
- availability: platform-wide minutes in which the database answered (what /readyz calls ready; sockets keep
  working without Redis), sampled once a minute by the agent worker (`sample_availability`). A minute without
  a sample (no worker, or no database to write it to) counts as down, from the first minute ever sampled.

A workspace's tier is its best owner's (enterprise/analytics.py `workspace_tier`), taken when each run is
recorded; the report reads the tier's objectives now. Reports: owners of a workspace whose tier has
`sla_reports` (enterprise).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Min, Q, Sum
from django.utils import timezone

from agents.models import AgentRun
from chat.errors import ServiceError
from chat.models import Role, Workspace
from chat.tiers import all_tiers
from enterprise.analytics import Access, owner_access, workspace_tier
from enterprise.models import SlaMeasurement
from monitoring.selectors import run_facts

OBJECTIVES = ("availability", "first_event", "run_success")
MEASURED_ENDS = {"agent_completed": True, "agent_failed": False}  # terminal event -> the run succeeded

_TABLE = SlaMeasurement._meta.db_table
_ADD = f"""
INSERT INTO {_TABLE} (workspace_id, tier, day, objective, good, total, created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, 1, %s, %s)
ON CONFLICT (workspace_id, day, objective) WHERE workspace_id IS NOT NULL DO UPDATE SET
    good = {_TABLE}.good + EXCLUDED.good, total = {_TABLE}.total + 1, tier = EXCLUDED.tier,
    updated_at = EXCLUDED.updated_at
"""
# One sample per minute whoever samples: a second sample of the same minute changes nothing.
_SAMPLE = f"""
INSERT INTO {_TABLE} (workspace_id, tier, day, objective, good, total, created_at, updated_at)
VALUES (NULL, '', %s, 'availability', 1, 1, %s, %s)
ON CONFLICT (day, objective) WHERE workspace_id IS NULL DO UPDATE SET
    good = {_TABLE}.good + 1, total = {_TABLE}.total + 1, updated_at = EXCLUDED.updated_at
    WHERE {_TABLE}.updated_at < EXCLUDED.updated_at
"""


def objectives_for(tier: str) -> dict[str, float]:
    table = settings.SLA_OBJECTIVES
    return {key: float(value) for key, value in (table.get(tier) or table["free"]).items()}


# --- recording -----------------------------------------------------------------------------------------------


def record_run_end(*, workspace_id: uuid.UUID | str | None, run_id: str, type: str, at: datetime) -> None:
    """Count one ended run for its workspace's run_success and first_event (inside the terminal event's
    transaction, so the count commits with the run's end or not at all). Cancelled runs are not counted."""
    succeeded = MEASURED_ENDS.get(type)
    if succeeded is None or workspace_id is None:
        return
    facts = run_facts([uuid.UUID(str(run_id))]).get(uuid.UUID(str(run_id)))
    started_at = AgentRun.objects.filter(id=run_id).values_list("started_at", flat=True).first()
    tier = workspace_tier(uuid.UUID(str(workspace_id)))
    within = objectives_for(tier)["first_event_s"]
    first_event_ok = (
        facts is not None and started_at is not None and (started_at - facts["eligible_at"]).total_seconds() <= within
    )
    _add(workspace_id, tier, at, "run_success", good=succeeded)
    _add(workspace_id, tier, at, "first_event", good=first_event_ok)


def _add(workspace_id: uuid.UUID | str, tier: str, at: datetime, objective: str, *, good: bool) -> None:
    ops = connection.ops
    wid = SlaMeasurement._meta.get_field("workspace_id").get_db_prep_value(workspace_id, connection)
    day = ops.adapt_datefield_value(at.astimezone(UTC).date())
    stamp = ops.adapt_datetimefield_value(at)
    with connection.cursor() as cursor:
        cursor.execute(_ADD, [wid, tier, day, objective, int(good), stamp, stamp])


def sample_availability(now: datetime | None = None) -> None:
    """This minute was available (the database took this write). Called every sweep by the agent worker."""
    now = (now or timezone.now()).astimezone(UTC)
    minute = now.replace(second=0, microsecond=0)
    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(
            _SAMPLE,
            [
                ops.adapt_datefield_value(minute.date()),
                ops.adapt_datetimefield_value(minute),
                ops.adapt_datetimefield_value(minute),
            ],
        )


# --- reading -------------------------------------------------------------------------------------------------


def sla_access(*, user_id: int, workspace_id: object) -> Access:
    access = owner_access(user_id=user_id, workspace_id=workspace_id, what="SLA report")
    if not access.limits.sla_reports:
        raise ServiceError("forbidden", f"SLA reports are for enterprise workspaces; this one's tier is {access.tier}")
    return access


def parse_month(raw: object, *, today: date) -> date:
    """`YYYY-MM` as the month's first day; none: this month (UTC)."""
    if raw in (None, ""):
        return today.replace(day=1)
    text = str(raw)
    try:
        if len(text) != 7:
            raise ValueError(text)
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise ServiceError("bad_request", f"month: expected YYYY-MM, got {text[:20]!r}") from None


def _next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True)
class Measured:
    good: int
    total: int


def _sums(month: date, *, workspace_id: uuid.UUID | None) -> dict[str, Measured]:
    rows = SlaMeasurement.objects.filter(day__gte=month, day__lt=_next_month(month))
    rows = rows.filter(workspace_id=workspace_id) if workspace_id else rows.filter(workspace_id__isnull=True)
    per = rows.values("objective").annotate(good=Sum("good"), total=Sum("total"))
    return {row["objective"]: Measured(int(row["good"]), int(row["total"])) for row in per}


def availability_minutes(month: date, now: datetime) -> Measured:
    """Good minutes of the month, out of its minutes from the first sample ever (or the month's start) to
    now (or the month's end): a minute nobody sampled was not available."""
    first = SlaMeasurement.objects.filter(workspace_id__isnull=True, objective="availability").aggregate(
        first=Min("created_at")
    )["first"]
    start = datetime.combine(month, time.min, tzinfo=UTC)
    end = min(datetime.combine(_next_month(month), time.min, tzinfo=UTC), now.replace(second=0, microsecond=0))
    if first is not None:
        start = max(start, first)
    minutes = max(0, int((end - start).total_seconds() // 60)) if first is not None else 0
    good = _sums(month, workspace_id=None).get("availability", Measured(0, 0)).good
    return Measured(min(good, minutes), minutes)


def report(*, workspace_id: uuid.UUID, tier: str, month: date, now: datetime | None = None) -> dict[str, Any]:
    """Each objective of the workspace's tier for `month`: target, measured share, met, sample size."""
    now = now or timezone.now()
    targets = objectives_for(tier)
    measured = _sums(month, workspace_id=workspace_id)
    measured["availability"] = availability_minutes(month, now)
    units = {"availability": "minutes", "first_event": "runs", "run_success": "runs"}
    out = []
    for objective in OBJECTIVES:
        got = measured.get(objective, Measured(0, 0))
        value = None if got.total == 0 else round(got.good / got.total, 6)
        entry: dict[str, Any] = {
            "objective": objective,
            "target": targets[objective],
            "measured": value,
            # Nothing measured breaks nothing: no run failed, no minute was down.
            "met": value is None or value >= targets[objective],
            "good": got.good,
            "sample_size": got.total,
            "unit": units[objective],
        }
        if objective == "first_event":
            entry["within_s"] = targets["first_event_s"]
        out.append(entry)
    return {"workspace_id": str(workspace_id), "tier": tier, "month": month.strftime("%Y-%m"), "objectives": out}


def enterprise_workspaces() -> list[Workspace]:
    """Workspaces with an active owner whose tier has SLA reports (the admin's summary)."""
    tiers = [name for name, limits in all_tiers().items() if limits.sla_reports]
    owned = Q(memberships__role=Role.OWNER, memberships__user__is_active=True, memberships__user__tier__in=tiers)
    return list(Workspace.objects.filter(owned).distinct().order_by("name"))
