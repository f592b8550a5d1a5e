"""Prices for workspace analytics' cost figures and the per-tier SLA objectives (docs/operations.md
"Analytics" and "SLA objectives"). Deploy-reviewed data, overridable by JSON env vars."""

from __future__ import annotations

import json
import os

# --- Analytics (enterprise/analytics.py) ------------------------------------------------------------------------
# US dollars per 1,000 tokens, by the model a run used (AgentRun.model). A model not listed costs nothing in the
# figures and is named in `unpriced_models`, so a missing price is visible rather than silently zero. The built-in
# offline agent ("offline") is free; the others are examples of list prices at the time of writing.
# Override with AGENT_PRICES_JSON='{"my-model": {"prompt_per_1k": 0.001, "completion_per_1k": 0.002}}' (merged).
AGENT_PRICES: dict[str, dict[str, float]] = {
    "offline": {"prompt_per_1k": 0.0, "completion_per_1k": 0.0},
    "gpt-4o-mini": {"prompt_per_1k": 0.00015, "completion_per_1k": 0.0006},
    "gpt-4o": {"prompt_per_1k": 0.0025, "completion_per_1k": 0.01},
    "llama3.1": {"prompt_per_1k": 0.0, "completion_per_1k": 0.0},  # self-hosted: the model server's cost is not ours
}
AGENT_PRICES.update(json.loads(os.environ.get("AGENT_PRICES_JSON") or "{}"))
# The widest analytics range a request may ask for, in days (inclusive of both ends).
ANALYTICS_MAX_DAYS = 366
ANALYTICS_DEFAULT_DAYS = 30

# --- SLA objectives (enterprise/sla.py) ---------------------------------------------------------------------------
# Per tier, per objective: the target share of good samples in a calendar month (UTC); first_event_s is the
# first_event objective's threshold (95 % within it is "p95 <= first_event_s"). What each measures:
#   availability: minutes in which the database answered (sampled by the agent worker; unsampled minutes count down);
#   first_event:  runs whose first agent event came within `first_event_s` of when they could start;
#   run_success:  runs that ended completed, out of those that ended completed or failed.
# Override with SLA_OBJECTIVES_JSON (whole tiers replaced).
SLA_OBJECTIVES: dict[str, dict[str, float]] = {
    "free": {"availability": 0.99, "first_event": 0.95, "first_event_s": 10.0, "run_success": 0.95},
    "pro": {"availability": 0.995, "first_event": 0.95, "first_event_s": 5.0, "run_success": 0.98},
    "enterprise": {"availability": 0.999, "first_event": 0.95, "first_event_s": 2.0, "run_success": 0.99},
}
SLA_OBJECTIVES.update(json.loads(os.environ.get("SLA_OBJECTIVES_JSON") or "{}"))
