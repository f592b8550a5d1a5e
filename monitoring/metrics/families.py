"""The Prometheus families the app exports (docs/operations.md "What to watch" lists them).

Every label value is bounded: command names come from the wire's command table, frame types from
its frame table, tiers from CHAT_TIERS, tools from the registry; anything else is counted as
"other". No user, conversation or run id is ever a label value.

With PROMETHEUS_MULTIPROC_DIR set (`manage.py serve` sets it for all its children), prometheus_client
keeps every value in a per-process mmapped file of that directory, and /metrics sums the files of
all processes. Gauges say how: `livesum` (the processes' values added, dead processes left out),
`livemax` for breaker states (the worst process wins, as on /readyz) and `liveall` for the process_*
gauges (one series per live process, labelled with its pid).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from chat.tiers import RATE_CLASSES
from chat.wire import COMMANDS, FRAMES
from chat.wire.common import ErrorCode
from chat.wire.events import DURABLE_DATA

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

OTHER = "other"
COMMAND_NAMES = frozenset(COMMANDS)
FRAME_TYPES = frozenset(FRAMES) | {"reply"}
DURABLE_TYPES = frozenset(DURABLE_DATA)
ERROR_CODES = frozenset(get_args(ErrorCode))
CRITICAL_EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
RUN_STATUSES = ("completed", "failed", "cancelled", "worker_lost", "worker_shutdown")

# Bucket bounds in seconds, chosen per what is measured: socket-side work is sub-millisecond to a
# few seconds, agent work seconds to minutes.
FAST_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FANOUT_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LAG_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AGENT_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RUN_S = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

CONNECTIONS = Gauge("chat_connections", "Open authenticated WebSocket connections.", multiprocess_mode="livesum")
USERS_ONLINE = Gauge(
    "chat_users_online",
    "Users with at least one open socket, per process, added over processes (a user on two processes counts twice).",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge("chat_subscriptions", "Socket subscriptions to conversations.", multiprocess_mode="livesum")
COMMANDS_TOTAL = Counter(
    "chat_commands", "Commands answered, by command and outcome (ok or the error code).", ["command", "outcome"]
)
COMMAND_DURATION = Histogram(
    "chat_command_duration_seconds", "Frame received to reply queued, per command.", ["command"], buckets=FAST_S
)
FRAMES_SENT = Counter("chat_frames_sent", "Frames written to sockets, by frame type.", ["type"])
BYTES_SENT = Counter("chat_bytes_sent", "UTF-8 bytes of the frames written to sockets (WebSocket framing excluded).")
DISCONNECTS = Counter("chat_disconnects", "Sockets closed by the server, by close code.", ["code"])
REPLAYS = Counter(
    "chat_replays", "Reads of missed events (resume, gap fill, resync), by source and outcome.", ["source", "outcome"]
)
DELIVERY_LAG = Histogram(
    "chat_delivery_lag_seconds",
    "A durable event's commit to its frame written to a socket (live deliveries).",
    buckets=LAG_S,
)
BROADCAST_DURATION = Histogram(
    "chat_broadcast_duration_seconds", "One event handed to every local subscriber of a process.", buckets=FANOUT_S
)
RATE_LIMITED = Counter(
    "chat_rate_limited", "Commands refused by a rate limit, by rate class and tier.", ["class", "tier"]
)
BREAKER_STATE = Gauge(
    "chat_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open (worst process wins).",
    ["dependency"],
    multiprocess_mode="livemax",
)
EVENT_LOOP_LAG = Histogram(
    "chat_event_loop_lag_seconds", "How late a periodic probe callback ran on the process's event loop.", buckets=FAST_S
)
AGENT_RUNS = Counter("agent_runs", "Agent runs ended, by status and the requester's tier.", ["status", "tier"])
AGENT_QUEUE_WAIT = Histogram(
    "agent_queue_wait_seconds", "A run's prompt queued to the run claimed (agent_started).", ["tier"], buckets=AGENT_S
)
AGENT_TTFE = Histogram(
    "agent_time_to_first_event_seconds",
    "A run's prompt queued to its first event after agent_started (thinking, tool call or answer).",
    buckets=AGENT_S,
)
AGENT_TTFT = Histogram(
    "agent_time_to_first_token_seconds", "A run's prompt queued to its first answer text committed.", buckets=AGENT_S
)
AGENT_RUN_DURATION = Histogram("agent_run_duration_seconds", "A run claimed to its terminal event.", buckets=RUN_S)
AGENT_TOOL_DURATION = Histogram(
    "agent_tool_duration_seconds", "One tool call, by tool and whether it succeeded.", ["tool", "ok"], buckets=FAST_S
)
AGENT_RUNS_INCOMPLETE = Counter(
    "agent_runs_incomplete", "Ended runs found without a critical event they owed, by the missing event.", ["missing"]
)


def bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def missing_label(missing: str) -> str:
    """A missing-event description ("tool_completed of call 3") as its bounded event name."""
    head = missing.split(" ", 1)[0]
    return head if head in CRITICAL_EVENTS else OTHER


def _preinitialise() -> None:
    """Series whose label values are known up front start at 0, so every family is present (and
    rate() sees the first increment) from the process's start."""
    for command in COMMAND_NAMES:
        COMMANDS_TOTAL.labels(command, "ok")
        COMMAND_DURATION.labels(command)
    for source in ("buffer", "log"):
        REPLAYS.labels(source, "ok")
    for missing in CRITICAL_EVENTS:
        AGENT_RUNS_INCOMPLETE.labels(missing)


_preinitialise()


def preinitialise_known(*, tiers: Iterable[str] = (), tools: Iterable[str] = ()) -> None:
    """The same for label values known once settings are loaded (tiers) or the tool registry built."""
    for tier in tiers:
        AGENT_QUEUE_WAIT.labels(tier)
        for status in RUN_STATUSES:
            AGENT_RUNS.labels(status, tier)
        for rate_class in RATE_CLASSES:
            RATE_LIMITED.labels(rate_class, tier)
    for tool in tools:
        for ok in ("true", "false"):
            AGENT_TOOL_DURATION.labels(tool, ok)
