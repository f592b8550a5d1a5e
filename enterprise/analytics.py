"""Workspace analytics (REST `GET /api/workspaces/{id}/analytics/`, the page /w/{id}/analytics/): selectors.

Who may read: the workspace's owners (other members: forbidden; anyone else: NotFound, as everywhere). What
they see depends on the workspace's tier, its best owner's (`workspace_tier`): the tier table's `analytics`
sections (chat/tiers.py ANALYTICS_SECTIONS; docs/protocol.md §12).

Every figure is aggregated by the database, per day or ISO week (UTC) with TruncDay/TruncWeek, one query per
figure over the workspace's conversations (deleted ones included: their usage happened):

- messages: messages written by people (agent answers are runs); active_users: distinct authors of them;
- runs: runs created in the bucket, by their status now;
- usage: prompt/completion tokens of completed runs by model (AgentRun.model), and their cost from
  settings.AGENT_PRICES (a model without a price costs 0 and is listed in `unpriced_models`);
- latency: time to first token (agent_started → first agent_delta, AgentRun.first_token_ms, stored with the
  delta), p50 and p95 by linear interpolation (PostgreSQL's percentile_cont), and the number of samples;
- tool_errors: tool calls that ended not ok (tool_completed ok=false), by tool, by when they started.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, BigIntegerField, Count, F, FloatField, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncDay, TruncWeek

from agents.models import AgentRun, RunStatus, ToolCall, ToolCallStatus
from chat.errors import NotFound, ServiceError
from chat.models import AuthorKind, Message, Role, Tier, Workspace, WorkspaceMember
from chat.selectors import parse_uuid
from chat.tiers import TierLimits, limits_for

GRANULARITIES = ("day", "week")
# Best last: a workspace's tier is the best of its owners' (an unknown tier ranks below free).
TIER_RANK = {tier: rank for rank, tier in enumerate(Tier.values)}


def bad(message: str) -> ServiceError:
    return ServiceError("bad_request", message)


# --- access ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    workspace: Workspace
    tier: str
    limits: TierLimits


def workspace_tier(workspace_id: uuid.UUID) -> str:
    """The workspace's tier: the best tier among its active owners ("free" without one)."""
    tiers = WorkspaceMember.objects.filter(workspace_id=workspace_id, role=Role.OWNER, user__is_active=True)
    found = set(tiers.values_list("user__tier", flat=True))
    return max(found, key=lambda t: TIER_RANK.get(t, -1), default=Tier.FREE)


def owner_access(*, user_id: int, workspace_id: object, what: str) -> Access:
    """The workspace, its tier and that tier's limits, if the caller owns it. NotFound for a non-member
    (whether or not it exists); ServiceError("forbidden") for a member who is not an owner."""
    member = (
        WorkspaceMember.objects.select_related("workspace")
        .filter(workspace_id=parse_uuid(workspace_id), user_id=user_id, user__is_active=True)
        .first()
    )
    if member is None:
        raise NotFound()
    if member.role != Role.OWNER:
        raise ServiceError("forbidden", f"only a workspace owner may read its {what}")
    tier = workspace_tier(member.workspace_id)
    return Access(workspace=member.workspace, tier=tier, limits=limits_for(tier))


def analytics_access(*, user_id: int, workspace_id: object) -> Access:
    access = owner_access(user_id=user_id, workspace_id=workspace_id, what="analytics")
    if not access.limits.analytics:
        raise ServiceError("forbidden", f"analytics are not part of this workspace's tier ({access.tier})")
    return access


# --- the range ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    first: date  # inclusive, UTC days
    last: date  # inclusive
    granularity: str

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:  # exclusive
        return datetime.combine(self.last + timedelta(days=1), time.min, tzinfo=UTC)

    def buckets(self) -> list[date]:
        """Every bucket's first day, in order: each day, or each ISO week (from its Monday) the range touches."""
        step = timedelta(days=1 if self.granularity == "day" else 7)
        day = self.first if self.granularity == "day" else self.first - timedelta(days=self.first.weekday())
        out = []
        while day <= self.last:
            out.append(day)
            day += step
        return out


def _day(params: Mapping[str, Any], name: str) -> date | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        return date.fromisoformat(str(raw)) if len(str(raw)) == 10 else _not_a_day(name, raw)
    except ValueError:
        return _not_a_day(name, raw)


def _not_a_day(name: str, raw: object) -> date:
    raise bad(f"{name}: expected a date YYYY-MM-DD, got {str(raw)[:40]!r}")


def parse_range(params: Mapping[str, Any], *, today: date) -> Range:
    """`from`/`to` (inclusive UTC days, default the last ANALYTICS_DEFAULT_DAYS days to today) and
    `granularity` (day, week; default day). from ≤ to and at most ANALYTICS_MAX_DAYS days, else bad_request."""
    granularity = str(params.get("granularity") or "day")
    if granularity not in GRANULARITIES:
        raise bad(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {granularity[:20]!r}")
    last = _day(params, "to") or today
    first = _day(params, "from") or last - timedelta(days=settings.ANALYTICS_DEFAULT_DAYS - 1)
    if first > last:
        raise bad(f"from ({first}) is after to ({last})")
    if (last - first).days + 1 > settings.ANALYTICS_MAX_DAYS:
        raise bad(
            f"the range is {(last - first).days + 1} days; at most {settings.ANALYTICS_MAX_DAYS} may be asked for"
        )
    return Range(first, last, granularity)


# --- the figures -------------------------------------------------------------------------------------------------


class PercentileCont(Aggregate):
    """PostgreSQL's percentile_cont (linear interpolation between the two nearest values)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))  # a float literal of ours, never user input


def percentile(values: list[float], fraction: float) -> float | None:
    """percentile_cont's answer, for databases without it (SQLite in the embedded mode)."""
    if not values:
        return None
    ordered = sorted(values)
    at = fraction * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _bucketed(qs: QuerySet[Any], field: str, granularity: str) -> QuerySet[Any]:
    trunc = TruncDay if granularity == "day" else TruncWeek
    return qs.annotate(bucket=trunc(field, tzinfo=UTC))


def _key(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


def _empty_runs() -> dict[str, int]:
    return dict.fromkeys(RunStatus.values, 0)


def token_cost(model: str, prompt: int, completion: int) -> float | None:
    """US dollars for these tokens at `model`'s price (settings.AGENT_PRICES); None for a model without one."""
    price = settings.AGENT_PRICES.get(model)
    if price is None:
        return None
    return prompt / 1000 * float(price["prompt_per_1k"]) + completion / 1000 * float(price["completion_per_1k"])


def workspace_analytics(*, access: Access, span: Range) -> dict[str, Any]:
    """The figures the workspace's tier shows, as totals and one entry per bucket (docs/protocol.md §7)."""
    sections = access.limits.analytics
    wid = access.workspace.id
    buckets = span.buckets()
    series: dict[date, dict[str, Any]] = {b: {"bucket": b.isoformat()} for b in buckets}
    totals: dict[str, Any] = {}
    window = {"created_at__gte": span.start, "created_at__lt": span.end}
    runs = AgentRun.objects.filter(conversation__workspace_id=wid, **window)
    if "counts" in sections:
        _counts(wid, window, runs, span, series, totals)
    if "usage" in sections:
        _usage(runs, span, series, totals)
    if "latency" in sections:
        _latency(runs, span, series, totals)
    if "tool_errors" in sections:
        _tool_errors(wid, span, series, totals)
    return {
        "workspace_id": str(wid),
        "tier": access.tier,
        "sections": [s for s in ("counts", "usage", "latency", "tool_errors", "csv") if s in sections],
        "from": span.first.isoformat(),
        "to": span.last.isoformat(),
        "granularity": span.granularity,
        "time_zone": "UTC",
        "totals": totals,
        "series": [series[b] for b in buckets],
    }


def _counts(
    wid: uuid.UUID, window: dict[str, datetime], runs: QuerySet[AgentRun], span: Range, series: Any, totals: Any
) -> None:
    messages = Message.objects.filter(conversation__workspace_id=wid, author_kind=AuthorKind.USER, **window)
    for cell in series.values():
        cell.update(messages=0, active_users=0, runs=_empty_runs())
    per = _bucketed(messages, "created_at", span.granularity).values("bucket")
    for row in per.annotate(n=Count("id"), users=Count("author_id", distinct=True)):
        series[_key(row["bucket"])].update(messages=row["n"], active_users=row["users"])
    overall = messages.aggregate(n=Count("id"), users=Count("author_id", distinct=True))
    totals.update(messages=overall["n"], active_users=overall["users"], runs=_empty_runs())
    for row in _bucketed(runs, "created_at", span.granularity).values("bucket", "status").annotate(n=Count("id")):
        series[_key(row["bucket"])]["runs"][row["status"]] = row["n"]
        totals["runs"][row["status"]] += row["n"]


def _usage(runs: QuerySet[AgentRun], span: Range, series: Any, totals: Any) -> None:
    completed = runs.filter(status=RunStatus.COMPLETED)
    tokens = {
        "prompt": Coalesce(Sum(Cast(KT("usage__prompt_tokens"), BigIntegerField())), 0),
        "completion": Coalesce(Sum(Cast(KT("usage__completion_tokens"), BigIntegerField())), 0),
        "n": Count("id"),
    }
    unpriced: set[str] = set()
    by_model_total: dict[str, dict[str, Any]] = defaultdict(lambda: _model_cell())
    for cell in series.values():
        cell.update(tokens={"prompt": 0, "completion": 0}, cost=0.0, by_model={})
    rows = _bucketed(completed, "created_at", span.granularity).values("bucket", "model").annotate(**tokens)
    for row in rows.order_by("bucket", "model"):
        cell = series[_key(row["bucket"])]
        model = row["model"] or "unknown"
        cost = token_cost(model, row["prompt"], row["completion"])
        if cost is None:
            unpriced.add(model)
        for target in (cell["by_model"].setdefault(model, _model_cell()), by_model_total[model]):
            target["runs"] += row["n"]
            target["prompt_tokens"] += row["prompt"]
            target["completion_tokens"] += row["completion"]
            target["cost"] += cost or 0.0
        cell["tokens"]["prompt"] += row["prompt"]
        cell["tokens"]["completion"] += row["completion"]
        cell["cost"] += cost or 0.0
    for cell in series.values():
        _round_costs(cell)
    totals.update(
        tokens={
            "prompt": sum(m["prompt_tokens"] for m in by_model_total.values()),
            "completion": sum(m["completion_tokens"] for m in by_model_total.values()),
        },
        cost=sum(m["cost"] for m in by_model_total.values()),
        by_model=dict(sorted(by_model_total.items())),
        unpriced_models=sorted(unpriced),
        currency="USD",
    )
    _round_costs(totals)


def _model_cell() -> dict[str, Any]:
    return {"runs": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}


def _round_costs(cell: dict[str, Any]) -> None:
    # Cents are too coarse for cheap models; a millionth of a dollar is below any invoice's precision.
    cell["cost"] = round(cell["cost"], 6)
    for model in cell["by_model"].values():
        model["cost"] = round(model["cost"], 6)


def _latency(runs: QuerySet[AgentRun], span: Range, series: Any, totals: Any) -> None:
    measured = runs.filter(first_token_ms__isnull=False)
    empty = {"p50": None, "p95": None, "samples": 0}
    for cell in series.values():
        cell["time_to_first_token_ms"] = dict(empty)
    if connection.vendor == "postgresql":
        figures = {
            "p50": PercentileCont(F("first_token_ms"), 0.5),
            "p95": PercentileCont(F("first_token_ms"), 0.95),
            "samples": Count("id"),
        }
        for row in _bucketed(measured, "created_at", span.granularity).values("bucket").annotate(**figures):
            series[_key(row["bucket"])]["time_to_first_token_ms"] = _ms(row)
        totals["time_to_first_token_ms"] = _ms(measured.aggregate(**figures)) if measured.exists() else dict(empty)
        return
    # SQLite (the embedded mode, a laptop's data): no percentile_cont, so the values, one column, in Python.
    values: dict[date, list[float]] = defaultdict(list)
    for bucket, ms in _bucketed(measured, "created_at", span.granularity).values_list("bucket", "first_token_ms"):
        values[_key(bucket)].append(float(ms))
    for bucket, ms_list in values.items():
        series[bucket]["time_to_first_token_ms"] = _ms(_python_percentiles(ms_list))
    everything = [v for ms_list in values.values() for v in ms_list]
    totals["time_to_first_token_ms"] = _ms(_python_percentiles(everything)) if everything else dict(empty)


def _python_percentiles(values: list[float]) -> dict[str, Any]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "samples": len(values)}


def _ms(row: Mapping[str, Any]) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), 1)

    return {"p50": rounded(row["p50"]), "p95": rounded(row["p95"]), "samples": row["samples"]}


def _tool_errors(wid: uuid.UUID, span: Range, series: Any, totals: Any) -> None:
    failed = ToolCall.objects.filter(
        run__conversation__workspace_id=wid,
        status=ToolCallStatus.ERROR,
        started_at__gte=span.start,
        started_at__lt=span.end,
    )
    for cell in series.values():
        cell["tool_errors"] = {}
    overall: dict[str, int] = defaultdict(int)
    for row in _bucketed(failed, "started_at", span.granularity).values("bucket", "tool").annotate(n=Count("id")):
        series[_key(row["bucket"])]["tool_errors"][row["tool"]] = row["n"]
        overall[row["tool"]] += row["n"]
    totals["tool_errors"] = dict(sorted(overall.items()))


# --- CSV ---------------------------------------------------------------------------------------------------------


def csv_rows(report: Mapping[str, Any]) -> Iterable[list[Any]]:
    """The report as CSV rows: a header, then one row per bucket (the tier's columns only)."""
    sections = report["sections"]
    models = sorted(report["totals"].get("by_model", {}))
    tools = sorted(report["totals"].get("tool_errors", {}))
    header = ["bucket"]
    if "counts" in sections:
        header += ["messages", "active_users"] + [f"runs_{status}" for status in RunStatus.values]
    if "usage" in sections:
        header += ["prompt_tokens", "completion_tokens", "cost_usd"] + [f"cost_usd:{m}" for m in models]
    if "latency" in sections:
        header += ["ttft_p50_ms", "ttft_p95_ms", "ttft_samples"]
    if "tool_errors" in sections:
        header += ["tool_errors"] + [f"tool_errors:{t}" for t in tools]
    yield header
    for cell in report["series"]:
        row: list[Any] = [cell["bucket"]]
        if "counts" in sections:
            row += [cell["messages"], cell["active_users"]] + [cell["runs"][s] for s in RunStatus.values]
        if "usage" in sections:
            row += [cell["tokens"]["prompt"], cell["tokens"]["completion"], cell["cost"]]
            row += [cell["by_model"].get(m, {}).get("cost", 0.0) for m in models]
        if "latency" in sections:
            ttft = cell["time_to_first_token_ms"]
            row += ["" if ttft["p50"] is None else ttft["p50"], "" if ttft["p95"] is None else ttft["p95"]]
            row += [ttft["samples"]]
        if "tool_errors" in sections:
            row += [sum(cell["tool_errors"].values())] + [cell["tool_errors"].get(t, 0) for t in tools]
        yield row
