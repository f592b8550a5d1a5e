"""Per-tier limits: the one place that says what a free, pro or enterprise user may do.

The table lives in settings (`CHAT_TIERS`, overridable per deployment with the JSON env var
`CHAT_TIERS_JSON`) rather than in a model: limits are enforced on every frame of every process, so
they must be cheap to read and identical everywhere, and a change is a deploy-reviewed decision.
Staff change a *user's* tier in the admin; the tier's limits apply from that user's next
connection (or `auth` refresh).

Rates are sliding windows (chat/infra/rate_limiter.py): at most `limit` actions in any `window_s` seconds.
Command classes are separate so that typing spam cannot starve chat messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class Rate:
    limit: int
    window_s: float

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)

    def as_dict(self) -> dict[str, int]:
        return {"limit": self.limit, "window_ms": self.window_ms}


# Command classes (docs/protocol.md §3 command → class). `send` is "messages", plus "agent_runs" when
# the conversation has an agent; everything not listed is "commands".
COMMAND_CLASSES: dict[str, str] = {"send": "messages", "typing": "typing"}
RATE_CLASSES = ("messages", "agent_runs", "typing", "commands")
# What a workspace's analytics (GET /api/workspaces/{id}/analytics/, enterprise/analytics.py) show, by section:
# counts (messages, active users, runs by status), usage (tokens and cost by model), latency (time to first
# token p50/p95), tool_errors (failed tool calls by tool), csv (the same as CSV, ?format=csv).
ANALYTICS_SECTIONS = ("counts", "usage", "latency", "tool_errors", "csv")
# What the built-in analyst (agents/analyst.py) may do for a user of the tier, beyond the analytics sections above
# (which bound the figures it quotes): summaries (of a conversation, what a member said), trends (week over week,
# spikes), recommendations (with their monetary impact), search (search_history across every conversation all the
# asking conversation's members can read; this conversation's search is every tier's). A request beyond the tier is
# answered with what a higher tier would show.
ANALYST_CAPABILITIES = ("summaries", "trends", "recommendations", "search")


@dataclass(frozen=True)
class TierLimits:
    name: str
    connections: int  # concurrent sockets per user, across all server processes
    rates: dict[str, Rate]  # per RATE_CLASSES
    max_frame_bytes: int
    max_text_chars: int
    max_subscriptions: int  # per socket
    replay_limit: int  # how many missed events a resume may replay before `recovered: false`
    buffer_max_events: int  # the user's notification buffer
    buffer_max_age_s: float
    history_retention_days: int | None  # None: forever
    # Capabilities (on or off per tier). webhooks: owners of the user's workspaces may send signed events
    # to their own URLs (enterprise/, docs/operations.md "Webhooks"). Absent from a row: off.
    webhooks: bool = False
    # export: owners of the user's workspaces may download a workspace's archive (enterprise/export.py).
    export: bool = False
    # analytics: the sections of ANALYTICS_SECTIONS a workspace of this tier's owner sees (none: no analytics).
    # sla_reports: monthly SLA reports for the workspace (enterprise/sla.py, docs/operations.md "SLA objectives").
    # A workspace's tier is its best owner's (enterprise/analytics.py `workspace_tier`).
    analytics: frozenset[str] = frozenset()
    sla_reports: bool = False
    # analyst: the ANALYST_CAPABILITIES the built-in analyst uses for this tier's users (the asker's own tier).
    analyst: frozenset[str] = frozenset({"summaries"})

    def rate(self, rate_class: str) -> Rate:
        return self.rates[rate_class]

    def as_welcome(self) -> dict[str, Any]:
        """The `welcome.limits` object (docs/protocol.md §1)."""
        return {
            "tier": self.name,
            "connections": self.connections,
            "rates": {name: rate.as_dict() for name, rate in self.rates.items()},
            "max_frame_bytes": self.max_frame_bytes,
            "max_text_chars": self.max_text_chars,
            "max_subscriptions": self.max_subscriptions,
            "replay_limit": self.replay_limit,
            "history_page_max": settings.CHAT_HISTORY_MAX,
            "outbound_queue": settings.CHAT_OUTBOUND_QUEUE,
            "buffer_max_events": self.buffer_max_events,
            "buffer_max_age_ms": int(self.buffer_max_age_s * 1000),
            "history_retention_days": self.history_retention_days,
        }


def _parse(name: str, raw: dict[str, Any]) -> TierLimits:
    rates = {cls: Rate(int(raw["rates"][cls][0]), float(raw["rates"][cls][1])) for cls in RATE_CLASSES}
    return TierLimits(
        name=name,
        connections=int(raw["connections"]),
        rates=rates,
        max_frame_bytes=int(raw["max_frame_bytes"]),
        max_text_chars=int(raw["max_text_chars"]),
        max_subscriptions=int(raw["max_subscriptions"]),
        replay_limit=int(raw["replay_limit"]),
        buffer_max_events=int(raw["buffer_max_events"]),
        buffer_max_age_s=float(raw["buffer_max_age_s"]),
        history_retention_days=None if raw["history_retention_days"] is None else int(raw["history_retention_days"]),
        webhooks=bool(raw.get("webhooks", False)),
        export=bool(raw.get("export", False)),
        analytics=frozenset(str(section) for section in raw.get("analytics", ())),
        sla_reports=bool(raw.get("sla_reports", False)),
        analyst=frozenset(str(c) for c in raw.get("analyst", ("summaries",))),
    )


_cache: tuple[int, dict[str, TierLimits]] | None = None


def all_tiers() -> dict[str, TierLimits]:
    global _cache
    table = settings.CHAT_TIERS
    # Re-parse only when the settings object changed (tests override CHAT_TIERS).
    if _cache is None or _cache[0] != id(table):
        _cache = (id(table), {name: _parse(name, raw) for name, raw in table.items()})
    return _cache[1]


def limits_for(tier: str) -> TierLimits:
    """The limits of `tier`; an unknown tier (a stale row, a typo in the admin) gets the free tier's."""
    tiers = all_tiers()
    return tiers.get(tier) or tiers["free"]


def validate_table(table: dict[str, Any]) -> None:
    """Fail at startup, with a clear message, on a malformed CHAT_TIERS / CHAT_TIERS_JSON."""
    if "free" not in table:
        raise ValueError("CHAT_TIERS must define the 'free' tier (the fallback)")
    for name, raw in table.items():
        try:
            limits = _parse(name, raw)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"CHAT_TIERS[{name!r}] is malformed: {exc!r}") from exc
        if limits.connections < 1 or any(r.limit < 1 or r.window_s <= 0 for r in limits.rates.values()):
            raise ValueError(f"CHAT_TIERS[{name!r}]: connections and every rate must be positive")
        unknown = sorted(limits.analytics - set(ANALYTICS_SECTIONS))
        if unknown:
            raise ValueError(
                f"CHAT_TIERS[{name!r}].analytics: unknown section(s) {unknown}; known: {ANALYTICS_SECTIONS}"
            )
        unknown = sorted(limits.analyst - set(ANALYST_CAPABILITIES))
        if unknown:
            raise ValueError(
                f"CHAT_TIERS[{name!r}].analyst: unknown capabilities {unknown}; known: {ANALYST_CAPABILITIES}"
            )
        if limits.max_frame_bytes > settings.CHAT_MAX_FRAME_BYTES:
            raise ValueError(
                f"CHAT_TIERS[{name!r}].max_frame_bytes exceeds CHAT_MAX_FRAME_BYTES "
                f"({settings.CHAT_MAX_FRAME_BYTES}), the server-wide frame cap"
            )
