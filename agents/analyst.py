"""The analyst's workspace tools: figures, trends and spend recommendations over the conversation's workspace.

Every figure comes from enterprise/analytics.py's report (`workspace_analytics`) or its companions in
enterprise/analytics_insight.py, never from SQL of its own, and every result carries the query that produced it
(`query`: the workspace, the period's UTC days, the granularity, the functions asked) and the numbers an answer
quotes, so each figure can be traced in the tool_completed event.

Who may ask: an active member of the conversation (else the conversation is "not found", as everywhere) who is
also a member of its workspace. What they get: the figures of their own tier's analytics sections, and the
analyst capabilities of their tier (chat/tiers.py ANALYST_CAPABILITIES: trends from pro, recommendations from
enterprise). A capability beyond the tier is not an error: the result says which tier has it and what it shows.

Each tool reads the database on its own thread (not the one thread every run's event writes share); its timeout
is the registry's (agents/tools.py registers them from ANALYST_TOOLS).
"""

from __future__ import annotations

import functools
import statistics
import uuid
from datetime import date, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from agents.sandbox import ToolError
from agents.tool_context import ToolContext
from agents.tools_conversation import Clock, utc_now
from chat.errors import NotFound, ServiceError
from chat.selectors import conversation_for_member
from chat.tiers import all_tiers
from enterprise.analytics import Access, Range, parse_range, token_cost, workspace_analytics
from enterprise.analytics_insight import member_access, usage_by_requester, usage_without_tools

PERIODS = (
    "today",
    "yesterday",
    "this_week",
    "last_week",
    "this_month",
    "last_month",
    "last_7_days",
    "last_30_days",
    "last_90_days",
)
MIN_TREND_WEEKS, MAX_TREND_WEEKS, DEFAULT_TREND_WEEKS = 2, 12, 6
# A week is a spike when its value is at least this many times the median of the other weeks...
SPIKE_RATIO = 1.5
# ...and above these floors (a week going from 1 failed call to 2 is not an anomaly worth a word).
SPIKE_FLOORS = {"cost": 0.01, "ttft_p95_ms": 200.0, "tool_errors": 3, "runs": 10, "messages": 20}
# What each capability shows, for an answer to a user whose tier lacks it.
WOULD_SHOW = {
    "trends": "week-over-week changes in messages, runs, cost, latency and tool errors, and the weeks that spiked",
    "recommendations": "where the workspace's AI spend could be cut, with the saving computed from the price table",
    "usage": "tokens and cost by model",
    "latency": "time to first token (p50, p95)",
    "tool_errors": "failed tool calls by tool",
}


# --- access and periods ----------------------------------------------------------------------------------------
def _access(ctx: ToolContext) -> Access:
    """The conversation's workspace, with the asker's tier, if the asker is a member of both."""
    if ctx.user_id is None:
        raise ToolError("the analyst answers a person; this run has no asking user")
    try:
        conversation = conversation_for_member(user_id=ctx.user_id, conversation_id=ctx.conversation_id)
    except NotFound as exc:
        raise ToolError("this conversation was not found") from exc
    if not conversation.workspace_id:
        raise ToolError("this conversation belongs to no workspace, so there are no workspace figures to read")
    try:
        return member_access(user_id=ctx.user_id, workspace_id=uuid.UUID(conversation.workspace_id))
    except NotFound as exc:
        raise ToolError(
            "you are not a member of this conversation's workspace, so its figures are not yours to read"
        ) from exc


def lowest_tier_with(*, capability: str = "", section: str = "") -> str | None:
    """The first tier of the table (free, pro, enterprise order) that has the capability or analytics section."""
    for name, limits in all_tiers().items():
        if (capability and capability in limits.analyst) or (section and section in limits.analytics):
            return name
    return None


def _refusal(access: Access, capability: str) -> dict[str, Any]:
    return {
        "allowed": False,
        "capability": capability,
        "tier": access.tier,
        "available_in": lowest_tier_with(capability=capability),
        "would_show": WOULD_SHOW[capability],
        "workspace": _workspace(access),
    }


def _workspace(access: Access) -> dict[str, Any]:
    ws = access.workspace
    return {"id": str(ws.id), "name": ws.name, "personal": ws.personal_for_id is not None}


def period_days(period: str, today: date) -> tuple[date, date]:
    """The first and last UTC day (inclusive) of a named period; "this" periods end today."""
    if period == "today":
        return today, today
    if period == "yesterday":
        return today - timedelta(days=1), today - timedelta(days=1)
    monday = today - timedelta(days=today.weekday())
    if period == "this_week":
        return monday, today
    if period == "last_week":
        return monday - timedelta(days=7), monday - timedelta(days=1)
    first_of_month = today.replace(day=1)
    if period == "this_month":
        return first_of_month, today
    if period == "last_month":
        last = first_of_month - timedelta(days=1)
        return last.replace(day=1), last
    days = {"last_7_days": 7, "last_30_days": 30, "last_90_days": 90}[period]
    return today - timedelta(days=days - 1), today


def _range(period: str, today: date, granularity: str = "day") -> Range:
    first, last = period_days(period, today)
    try:
        return parse_range({"from": first.isoformat(), "to": last.isoformat(), "granularity": granularity}, today=today)
    except ServiceError as exc:
        raise ToolError(exc.message) from exc


def _query(access: Access, span: Range, period: str, functions: list[str]) -> dict[str, Any]:
    return {
        "workspace_id": str(access.workspace.id),
        "period": period,
        "from": span.first.isoformat(),
        "to": span.last.isoformat(),
        "granularity": span.granularity,
        "time_zone": "UTC",
        "functions": functions,
    }


# --- workspace_report ------------------------------------------------------------------------------------------
def _report(ctx: ToolContext, period: str, today: date) -> dict[str, Any]:
    access = _access(ctx)
    span = _range(period, today)
    report = workspace_analytics(access=access, span=span)
    top = usage_by_requester(workspace_id=access.workspace.id, span=span)
    if "usage" not in access.limits.analytics:  # who asked how often is a count; what it cost is usage
        top = [{"username": c["username"], "runs": c["runs"]} for c in top]
    hidden = {
        section: lowest_tier_with(section=section)
        for section in ("usage", "latency", "tool_errors")
        if section not in access.limits.analytics
    }
    return {
        "workspace": _workspace(access),
        "tier": access.tier,
        "sections": report["sections"],
        "hidden_sections": hidden,
        "query": _query(access, span, period, ["workspace_analytics", "usage_by_requester"]),
        "totals": report["totals"],
        "top_users": top,
    }


async def workspace_report(ctx: ToolContext, args: dict[str, Any], *, clock: Clock = utc_now) -> dict[str, Any]:
    period = args.get("period", "last_30_days")
    return await database_sync_to_async(_report, thread_sensitive=False)(ctx, period, clock().date())


# --- workspace_trends ------------------------------------------------------------------------------------------
def _week_values(cell: dict[str, Any], sections: frozenset[str]) -> dict[str, float | None]:
    values: dict[str, float | None] = {"messages": cell["messages"], "runs": sum(cell["runs"].values())}
    if "usage" in sections:
        values["cost"] = cell["cost"]
    if "latency" in sections:
        values["ttft_p95_ms"] = cell["time_to_first_token_ms"]["p95"]
    if "tool_errors" in sections:
        values["tool_errors"] = sum(cell["tool_errors"].values())
    return values


def _change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return round((after - before) / before * 100, 1)


def _trends(ctx: ToolContext, weeks: int, today: date) -> dict[str, Any]:
    access = _access(ctx)
    if "trends" not in access.limits.analyst:
        return _refusal(access, "trends")
    # Whole ISO weeks only (Monday to Sunday): a week still under way would always look like a drop.
    last = today - timedelta(days=today.weekday() + 1)
    first = last - timedelta(days=7 * weeks - 1)
    try:
        span = parse_range({"from": first.isoformat(), "to": last.isoformat(), "granularity": "week"}, today=today)
    except ServiceError as exc:
        raise ToolError(exc.message) from exc
    report = workspace_analytics(access=access, span=span)
    series = [{"week": c["bucket"], **_week_values(c, access.limits.analytics)} for c in report["series"]]
    metrics = [k for k in series[0] if k != "week"] if series else []
    changes = []
    if len(series) >= 2:
        prev, cur = series[-2], series[-1]
        for metric in metrics:
            changes.append(
                {
                    "metric": metric,
                    "from_week": prev["week"],
                    "to_week": cur["week"],
                    "before": prev[metric],
                    "after": cur[metric],
                    "change_pct": _change(prev[metric], cur[metric]),
                }
            )
    return {
        "allowed": True,
        "workspace": _workspace(access),
        "tier": access.tier,
        "query": _query(access, span, f"last_{weeks}_weeks", ["workspace_analytics"]),
        "weeks": series,
        "week_over_week": changes,
        "anomalies": _anomalies(series, metrics),
    }


def _anomalies(series: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    found = []
    for metric in metrics:
        for i, week in enumerate(series):
            value = week[metric]
            others = [w[metric] for j, w in enumerate(series) if j != i and w[metric] is not None]
            if value is None or len(others) < 2:
                continue
            baseline = statistics.median(others)
            if value >= SPIKE_FLOORS.get(metric, 0) and value >= SPIKE_RATIO * baseline and value > baseline:
                found.append(
                    {
                        "metric": metric,
                        "week": week["week"],
                        "value": value,
                        "baseline_median": round(baseline, 6),
                        "ratio": round(value / baseline, 2) if baseline else None,
                    }
                )
    return sorted(found, key=lambda a: (-(a["ratio"] or 1e9), a["metric"]))


async def workspace_trends(ctx: ToolContext, args: dict[str, Any], *, clock: Clock = utc_now) -> dict[str, Any]:
    weeks = args.get("weeks", DEFAULT_TREND_WEEKS)
    return await database_sync_to_async(_trends, thread_sensitive=False)(ctx, weeks, clock().date())


# --- spend_recommendations -------------------------------------------------------------------------------------
def _priced_models() -> list[str]:
    """Models with a positive price: a free or self-hosted model's cost is not in the figures, so switching to it
    would show a saving the invoice of the model server does not."""
    return sorted(
        m for m, p in settings.AGENT_PRICES.items() if float(p["prompt_per_1k"]) + float(p["completion_per_1k"]) > 0
    )


def _recommendations(ctx: ToolContext, period: str, today: date) -> dict[str, Any]:
    access = _access(ctx)
    if "recommendations" not in access.limits.analyst:
        return _refusal(access, "recommendations")
    span = _range(period, today)
    report = workspace_analytics(access=access, span=span)
    total_cost = float(report["totals"].get("cost", 0.0))
    plain = usage_without_tools(workspace_id=access.workspace.id, span=span)
    completed = plain["completed_runs"]
    candidates = _priced_models()
    found = []
    for model, used in plain["by_model"].items():
        now = token_cost(model, used["prompt_tokens"], used["completion_tokens"])
        if not now:
            continue
        options = [
            (token_cost(alt, used["prompt_tokens"], used["completion_tokens"]) or 0.0, alt)
            for alt in candidates
            if alt != model
        ]
        if not options:
            continue
        alternative_cost, alternative = min(options)
        saving = now - alternative_cost
        if saving <= 0:
            continue
        tokens = used["prompt_tokens"] + used["completion_tokens"]
        found.append(
            {
                "kind": "cheaper_model_for_runs_without_tools",
                "model_from": model,
                "model_to": alternative,
                "runs": used["runs"],
                "completed_runs": completed,
                "share_of_runs_pct": round(used["runs"] / completed * 100, 1) if completed else None,
                "prompt_tokens": used["prompt_tokens"],
                "completion_tokens": used["completion_tokens"],
                "avg_tokens": round(tokens / used["runs"]),
                "cost_now": round(now, 2),
                "cost_alternative": round(alternative_cost, 2),
                "saving": round(saving, 2),
                "saving_pct_of_these_runs": round(saving / now * 100, 1),
                "saving_pct_of_total_cost": round(saving / total_cost * 100, 1) if total_cost else None,
                "prices_per_1k": {m: settings.AGENT_PRICES[m] for m in (model, alternative)},
            }
        )
    found.sort(key=lambda r: -r["saving"])
    return {
        "allowed": True,
        "workspace": _workspace(access),
        "tier": access.tier,
        "query": _query(access, span, period, ["workspace_analytics", "usage_without_tools", "token_cost"]),
        "total_cost": round(total_cost, 2),
        "by_model": report["totals"].get("by_model", {}),
        "completed_runs": completed,
        "runs_without_tools": plain["by_model"],
        "recommendations": found,
    }


async def spend_recommendations(ctx: ToolContext, args: dict[str, Any], *, clock: Clock = utc_now) -> dict[str, Any]:
    period = args.get("period", "last_30_days")
    return await database_sync_to_async(_recommendations, thread_sensitive=False)(ctx, period, clock().date())


# --- registration ------------------------------------------------------------------------------------------------
_PERIOD = {"enum": list(PERIODS)}


def analyst_tools(clock: Clock) -> list[tuple[str, str, dict[str, Any], Any, float]]:
    """(name, description, JSON schema, function, timeout s) of each workspace tool, for agents/tools.py."""
    return [
        (
            "workspace_report",
            "Figures of this conversation's workspace for a period (UTC days): messages, active users, runs by"
            " status, tokens and cost by model, time to first token, tool errors (as the asker's tier shows),"
            " and who asked for the most runs.",
            {"type": "object", "properties": {"period": _PERIOD}, "additionalProperties": False},
            functools.partial(workspace_report, clock=clock),
            10.0,
        ),
        (
            "workspace_trends",
            "Week-over-week changes of this conversation's workspace over the last whole ISO weeks, and the"
            " weeks whose messages, runs, cost, latency or tool errors spiked (pro tier and above).",
            {
                "type": "object",
                "properties": {"weeks": {"type": "integer", "minimum": MIN_TREND_WEEKS, "maximum": MAX_TREND_WEEKS}},
                "additionalProperties": False,
            },
            functools.partial(workspace_trends, clock=clock),
            10.0,
        ),
        (
            "spend_recommendations",
            "Where this conversation's workspace could spend less on AI in a period: runs that called no tool,"
            " priced again with the cheapest priced model (enterprise tier).",
            {"type": "object", "properties": {"period": _PERIOD}, "additionalProperties": False},
            functools.partial(spend_recommendations, clock=clock),
            10.0,
        ),
    ]
