"""The agent_* families, from one run's point of view (agents/runtime.py drives a RunTimer).

Times are wall-clock seconds: a run's prompt was queued by another process (its AgentRun row's
created_at), so only the wall clock is common to both. What each measures:

- agent_queue_wait_seconds{tier}: prompt queued → run claimed (agent_started written);
- agent_time_to_first_event_seconds: prompt queued → the run's first event after agent_started
  (thinking, a tool call, answer text or its end): when the user first sees the agent work;
- agent_time_to_first_token_seconds: prompt queued → its first answer text committed;
- agent_run_duration_seconds: claimed → terminal event written (a run resumed after an approval:
  its last leg);
- agent_runs_total{status,tier}: ended runs (completed, failed, cancelled; worker_lost from the reaper);
- agent_tool_duration_seconds{tool,ok}: each tool call.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

from monitoring.metrics.families import (
    AGENT_QUEUE_WAIT,
    AGENT_RUN_DURATION,
    AGENT_RUNS,
    AGENT_RUNS_INCOMPLETE,
    AGENT_TOOL_DURATION,
    AGENT_TTFE,
    AGENT_TTFT,
    OTHER,
    RUN_STATUSES,
    missing_label,
)


def tier_label(tier: str | None, known: Collection[str]) -> str:
    return tier if tier is not None and tier in known else OTHER


class RunTimer:
    def __init__(
        self, *, tier: str, queued_at: float | None, tools: Collection[str] = (), resumed: bool = False
    ) -> None:
        """`resumed`: the run's second leg, after an approval; its queue wait and first event and
        token were measured in its first leg (the time a person took to decide is no model's)."""
        self.tier = tier
        self.started = time.time()
        self.queued_at = queued_at if queued_at is not None else self.started
        self.tools = tools
        self._seen_event = resumed
        self._seen_token = resumed
        self._ended = False
        if not resumed:
            AGENT_QUEUE_WAIT.labels(tier).observe(max(0.0, self.started - self.queued_at))

    def event(self) -> None:
        """An event of the run was committed (after agent_started)."""
        if not self._seen_event:
            self._seen_event = True
            AGENT_TTFE.observe(max(0.0, time.time() - self.queued_at))

    def token(self) -> None:
        """Answer text of the run was committed."""
        self.event()
        if not self._seen_token:
            self._seen_token = True
            AGENT_TTFT.observe(max(0.0, time.time() - self.queued_at))

    def tool(self, name: str, ok: bool, seconds: float) -> None:
        AGENT_TOOL_DURATION.labels(name if name in self.tools else OTHER, "true" if ok else "false").observe(seconds)

    def ended(self, status: str) -> None:
        """The terminal event was written (once per run; a second call is ignored)."""
        if self._ended:
            return
        self._ended = True
        self.event()
        AGENT_RUN_DURATION.observe(max(0.0, time.time() - self.started))
        run_ended(status, self.tier)


def run_ended(status: str, tier: str) -> None:
    AGENT_RUNS.labels(status if status in RUN_STATUSES else OTHER, tier).inc()


def count_incomplete(missing: Iterable[str]) -> None:
    """agent_runs_incomplete_total: one ended run found without the events in `missing` (the event
    monitor's descriptions, e.g. "tool_completed of call 3"), once per missing event name."""
    for label in sorted({missing_label(m) for m in missing}):
        AGENT_RUNS_INCOMPLETE.labels(label).inc()
