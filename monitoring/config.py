"""The monitoring app's thresholds and objectives: defaults here, overridden per deployment by
`settings.MONITORING` (the JSON env var MONITORING_JSON, merged key by key), so chatsite/settings.py
holds one line for all of them. docs/operations.md "Monitoring and alerts" lists each with its meaning.

Read through `option()` at use time (not at import), so a test's settings override applies."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # The periodic sweep (monitoring.event_monitor.sweep): how often the agent worker runs it.
    "sweep_interval_s": 15.0,
    # Runs examined per step of one sweep (the rest wait for the next sweep).
    "sweep_batch": 500,
    # A started run with no event for this long is stuck. Above the model's per-read timeout
    # (AGENT_LLM_TIMEOUT_S, 60 s) so a slow but live model is not called stuck.
    "stuck_after_s": 120.0,
    # A completed run must have thought at least once (agent_thinking), as the offline agent always does.
    "require_thinking": True,
    # Time to first agent event, per tier: a run whose first event comes later breaks its tier's
    # objective (one alert per run). Measured from when the run could start: its prompt, or the end
    # of the conversation's previous run if that ended later (one run at a time per conversation).
    "first_event_s": {"free": 10.0, "pro": 5.0, "enterprise": 3.0},
    # SLO targets per tier (monitoring.slo): socket availability (handshakes not failed by the
    # server), runs whose first event met first_event_s, runs not ended by agent_failed.
    "slo": {
        "free": {"availability": 0.99, "first_event": 0.95, "run_success": 0.95},
        "pro": {"availability": 0.995, "first_event": 0.99, "run_success": 0.98},
        "enterprise": {"availability": 0.999, "first_event": 0.99, "run_success": 0.99},
    },
    # SLO buckets older than this are deleted by the sweep (the longest burn window is 6 h).
    "slo_keep_days": 8,
    # Degradation detection (monitoring.performance): the current window against the baseline
    # before it (or a fixed objective per series), with hysteresis.
    "degradation": {
        "window_s": 300.0,  # the current window
        "baseline_s": 3600.0,  # the baseline: the hour before the current window
        # Fewer samples in a window: no verdict (the state is kept). A p95 of 200 samples rests on 10 of
        # them; of 50, on 2 or 3, and heavy-tailed noise alone then moves it by half.
        "min_samples": 200,
        "p95_ratio": 1.5,  # degraded: current p95 above baseline p95 x this ...
        "p95_min_delta_s": 0.005,  # ... and above it by at least this much (sub-ms jitter is not an outage)
        "p95_clear_ratio": 1.2,  # recovered: current p95 below baseline x this
        "error_rate_delta": 0.05,  # degraded: error ratio above the baseline's by this much (absolute)
        "fire_after": 3,  # consecutive degraded checks before the alert
        "clear_after": 3,  # consecutive recovered checks before it resolves
        # Fixed p95 objectives in seconds ({"send_ack": 0.25}): used instead of the baseline.
        "objectives_p95_s": {},
    },
    # Lowest severity mailed to ALERT_EMAIL (the log gets every alert).
    "email_min_severity": "warning",
}


def option(name: str) -> Any:
    """The value of `name`: settings.MONITORING's over the default (dicts merged key by key)."""
    overrides = getattr(settings, "MONITORING", None) or {}
    return _merge(DEFAULTS[name], overrides[name]) if name in overrides else DEFAULTS[name]


def _merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        return {key: _merge(base.get(key), value) if key in base else value for key, value in extra.items()} | {
            key: value for key, value in base.items() if key not in extra
        }
    return extra
