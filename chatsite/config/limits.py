"""Realtime limits, tiers, abuse, breakers, handshakes and the server-process share of a limit
(docs/protocol.md §2/§3/§12, docs/operations.md "Tiers and limits" and "Security")."""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

from chatsite.config.env import env_bool, env_int, env_list

# --- Realtime limits (docs/protocol.md §2/§3): server-wide caps; per-tier values are in CHAT_TIERS below ------
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 64 * 1024)
CHAT_REPLAY_LIMIT = env_int("CHAT_REPLAY_LIMIT", 500)
CHAT_HISTORY_MAX = 100
CHAT_AUTH_TIMEOUT_S = float(os.environ.get("CHAT_AUTH_TIMEOUT_S", "5"))
CHAT_HEARTBEAT_MS = env_int("CHAT_HEARTBEAT_MS", 25_000)
CHAT_TYPING_TTL_MS = env_int("CHAT_TYPING_TTL_MS", 6_000)
# Outbound frames queued per socket before it is closed as a slow consumer (4408). 2,000 frames
# is several seconds of a busy room; a client further behind is better served by resuming.
CHAT_OUTBOUND_QUEUE = env_int("CHAT_OUTBOUND_QUEUE", 2_000)
CHAT_MAX_TEXT_CHARS = env_int("CHAT_MAX_TEXT_CHARS", 16_000)
CHAT_MAX_SUBSCRIPTIONS = env_int("CHAT_MAX_SUBSCRIPTIONS", 100)
# Hot buffer of recent events per conversation and per user (chat/infra/message_buffer.py). 1,000
# events covers twice the replay limit, so any recoverable replay can be served from it; 15
# minutes covers a laptop lid closed over a meeting. Older replays read the log.
CHAT_BUFFER_MAX_EVENTS = env_int("CHAT_BUFFER_MAX_EVENTS", 1000)
CHAT_BUFFER_MAX_AGE_S = float(os.environ.get("CHAT_BUFFER_MAX_AGE_S", "900"))
# The chat.v1.deflate extension (chat/realtime/compression_handler.py, docs/operations.md "Compression"): a
# socket that asks for it gets server frames of at least CHAT_COMPRESSION_MIN_BYTES as zlib-compressed binary
# frames (smaller ones gain little and cost a DecompressionStream each in the browser). Off: nobody is offered it.
CHAT_COMPRESSION = env_bool("CHAT_COMPRESSION", True)
CHAT_COMPRESSION_MIN_BYTES = env_int("CHAT_COMPRESSION_MIN_BYTES", 512)

# Soft-deleted conversations (DELETE /api/conversations/{id}/) are hidden at once and purged, with their
# events, messages and runs, this many days later (docs/operations.md "Deleted conversations"): the window
# in which staff can still restore one (the admin's "Restore" action on conversations).
CONVERSATION_DELETE_RETENTION_DAYS = env_int("CONVERSATION_DELETE_RETENTION_DAYS", 30)
# History past its tier's `history_retention_days` is purged (chat/services/retention.py, docs/operations.md
# "Retention"): "delete", or "archive" = first written as JSONL.gz under HISTORY_ARCHIVE_DIR, then deleted.
HISTORY_RETENTION_MODE = os.environ.get("HISTORY_RETENTION_MODE", "delete")
HISTORY_ARCHIVE_DIR = os.environ.get("HISTORY_ARCHIVE_DIR", "")
# Workspace exports (GET /api/workspaces/{id}/export/, enterprise/export.py, docs/protocol.md §12): per
# workspace, one at a time (a lease renewed while it streams, freed at its end or WORKSPACE_EXPORT_LEASE_S after
# its process died) and WORKSPACE_EXPORT_PER_HOUR started in any hour.
WORKSPACE_EXPORT_PER_HOUR = env_int("WORKSPACE_EXPORT_PER_HOUR", 3)
WORKSPACE_EXPORT_LEASE_S = float(os.environ.get("WORKSPACE_EXPORT_LEASE_S", "60"))

# --- Tiers, rate limits and abuse (chat/tiers.py, chat/infra/rate_limiter.py, docs/protocol.md §12) ---------
# Rates are [limit, window seconds], sliding windows per user, shared by every server process
# through Redis (in-memory in embedded mode). Command classes: "messages" (send), "agent_runs" (a send
# that starts an agent run), "typing", "commands" (everything else, pings included).
CHAT_TIERS: dict[str, dict[str, object]] = {
    "free": {
        "connections": 5,
        "rates": {"messages": [30, 60], "agent_runs": [20, 3600], "typing": [30, 60], "commands": [300, 60]},
        "max_frame_bytes": 64 * 1024,
        "max_text_chars": 8_000,
        "max_subscriptions": 50,
        "replay_limit": CHAT_REPLAY_LIMIT,
        "buffer_max_events": 500,
        "buffer_max_age_s": 15 * 60,
        "history_retention_days": 30,
        "analytics": ["counts"],  # capability: workspace analytics, these sections (chat/tiers.py ANALYTICS_SECTIONS)
        "analyst": ["summaries"],  # the built-in analyst's capabilities (chat/tiers.py ANALYST_CAPABILITIES)
    },
    "pro": {
        "connections": 20,
        "rates": {"messages": [120, 60], "agent_runs": [200, 3600], "typing": [60, 60], "commands": [1200, 60]},
        "max_frame_bytes": 64 * 1024,
        "max_text_chars": CHAT_MAX_TEXT_CHARS,
        "max_subscriptions": CHAT_MAX_SUBSCRIPTIONS,
        "replay_limit": CHAT_REPLAY_LIMIT,
        "buffer_max_events": 1000,
        "buffer_max_age_s": 60 * 60,
        "history_retention_days": 365,
        "export": True,
        "analytics": ["counts", "usage", "latency"],
        "analyst": ["summaries", "trends"],
    },
    "enterprise": {
        "connections": 100,
        "rates": {"messages": [600, 60], "agent_runs": [2000, 3600], "typing": [120, 60], "commands": [6000, 60]},
        "max_frame_bytes": 64 * 1024,
        "max_text_chars": CHAT_MAX_TEXT_CHARS,
        "max_subscriptions": CHAT_MAX_SUBSCRIPTIONS,
        "replay_limit": CHAT_REPLAY_LIMIT,
        "buffer_max_events": 1000,
        "buffer_max_age_s": 24 * 60 * 60,
        "history_retention_days": None,
        "webhooks": True,  # capability: signed outgoing webhooks for the workspaces this user owns
        "export": True,  # capability: a streamed JSON archive of the workspaces this user owns
        "analytics": ["counts", "usage", "latency", "tool_errors", "csv"],
        "sla_reports": True,  # capability: monthly SLA reports (enterprise/sla.py) for the workspaces it owns
        "analyst": ["summaries", "trends", "recommendations", "search"],
    },
}
# A deployment (or a load test) overrides parts of the table without a code change, e.g.
# CHAT_TIERS_JSON='{"free": {"rates": {"messages": [100, 60]}}}' (merged key by key).
if os.environ.get("CHAT_TIERS_JSON"):

    def _merge(base: dict[str, object], extra: dict[str, object]) -> dict[str, object]:
        out = dict(base)
        for key, value in extra.items():
            current = out.get(key)
            out[key] = _merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
        return out

    CHAT_TIERS = _merge(CHAT_TIERS, json.loads(os.environ["CHAT_TIERS_JSON"]))  # type: ignore[arg-type,assignment]
# More than this many malformed frames (bad_request, unknown_command, too_large) within the window,
# or more than CHAT_RATE_HAMMER_LIMIT commands sent while already told to wait: close 4400.
CHAT_ABUSE_LIMIT = env_int("CHAT_ABUSE_LIMIT", 30)
CHAT_ABUSE_WINDOW_S = float(os.environ.get("CHAT_ABUSE_WINDOW_S", "10"))
CHAT_RATE_HAMMER_LIMIT = env_int("CHAT_RATE_HAMMER_LIMIT", 20)
# A socket's slot in its user's connection count is refreshed by the socket and expires this long
# after its process died without releasing it.
CHAT_CONNECTION_TTL_S = float(os.environ.get("CHAT_CONNECTION_TTL_S", "60"))
# Per client IP on POST /login/, /admin/login/, /api/auth/token/ and its refresh: [limit, window s].
CHAT_LOGIN_RATE = [env_int("CHAT_LOGIN_RATE_LIMIT", 20), float(os.environ.get("CHAT_LOGIN_RATE_WINDOW_S", "60"))]

# Circuit breakers (chat/infra/error_recovery.py): this many transient failures within the window open the
# circuit; after the reset timeout one probe call is let through.
CHAT_BREAKER_FAILURES = env_int("CHAT_BREAKER_FAILURES", 5)
CHAT_BREAKER_WINDOW_S = float(os.environ.get("CHAT_BREAKER_WINDOW_S", "10"))
CHAT_BREAKER_RESET_S = float(os.environ.get("CHAT_BREAKER_RESET_S", "5"))
# A database or model-server failure can take as long as its timeout (pool 5 s, LLM 60 s): their
# windows are wide enough that consecutive slow failures still add up to an open circuit.
CHAT_BREAKER_POSTGRES_FAILURES = env_int("CHAT_BREAKER_POSTGRES_FAILURES", 3)
CHAT_BREAKER_POSTGRES_WINDOW_S = float(os.environ.get("CHAT_BREAKER_POSTGRES_WINDOW_S", "60"))
CHAT_BREAKER_LLM_WINDOW_S = float(os.environ.get("CHAT_BREAKER_LLM_WINDOW_S", "300"))

# --- Handshakes, client addresses, limits while Redis is slow (docs/operations.md "Security") ---------------
# Proxies whose X-Forwarded-For is believed, as IPs or CIDRs ("10.0.0.5,10.1.0.0/16"). Empty (the
# default): nobody's, the client is the TCP peer. `serve` hands uvicorn the same list.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
# A connection whose HTTP request head (request line and headers) is not complete this long after it
# opened, or after its previous request, is closed (slowloris). At most this many connections per client
# address may be waiting for their head at once; the next one is closed at once.
CHAT_HANDSHAKE_TIMEOUT_S = float(os.environ.get("CHAT_HANDSHAKE_TIMEOUT_S", "10"))
CHAT_INCOMPLETE_HANDSHAKES_PER_IP = env_int("CHAT_INCOMPLETE_HANDSHAKES_PER_IP", 20)
# On SIGTERM a server process gives its sockets this long to write what they have queued and close with
# 1012 (chatsite/uvicorn_server.py); what is still open then is closed by uvicorn. Below serve's 10 s
# before it kills a child that has not exited.
CHAT_SHUTDOWN_DRAIN_S = float(os.environ.get("CHAT_SHUTDOWN_DRAIN_S", "3"))
if not 0 < CHAT_SHUTDOWN_DRAIN_S <= 8:
    raise ImproperlyConfigured(
        f"CHAT_SHUTDOWN_DRAIN_S must be more than 0 and at most 8 seconds, not {CHAT_SHUTDOWN_DRAIN_S}"
    )
# Sockets on /ws/chat/ still waiting for their `auth` frame, per client address and server process; the
# next one is closed 4429.
CHAT_UNAUTH_SOCKETS_PER_IP = env_int("CHAT_UNAUTH_SOCKETS_PER_IP", 20)
# How many server processes share the limits and which one this is (0-based); `serve` sets both for
# its children. While Redis cannot be asked, a process allows only its share of a limit, so that the
# processes together never allow more than the limit. Without an index a process takes the share
# rounded down.
CHAT_SERVER_PROCESSES = env_int("CHAT_SERVER_PROCESSES", 1)
CHAT_SERVER_INDEX: int | None = int(os.environ["CHAT_SERVER_INDEX"]) if os.environ.get("CHAT_SERVER_INDEX") else None

# --- Webhooks (enterprise/, docs/operations.md "Webhooks") ------------------------------------------------------
# Endpoints per workspace: each is a row read on every event of the workspace and an HTTP call per event.
WEBHOOKS_MAX_PER_WORKSPACE = env_int("WEBHOOKS_MAX_PER_WORKSPACE", 10)
# One HTTP attempt's whole budget (connect, send, answer); a receiver should answer at once and work later.
WEBHOOKS_TIMEOUT_S = float(os.environ.get("WEBHOOKS_TIMEOUT_S", "15"))
# How often the webhooks worker looks for due deliveries, how many it claims at a time, and how many it
# sends at once (one slow receiver then holds one sender, not the others).
WEBHOOKS_POLL_S = float(os.environ.get("WEBHOOKS_POLL_S", "1"))
WEBHOOKS_BATCH = env_int("WEBHOOKS_BATCH", 50)
WEBHOOKS_SENDERS = env_int("WEBHOOKS_SENDERS", 8)
# A server process remembers a workspace's subscribed endpoints this long (the event hot path asks on every
# message); a change made in another process reaches it within this time, in the same process at once.
WEBHOOKS_ENDPOINT_CACHE_S = float(os.environ.get("WEBHOOKS_ENDPOINT_CACHE_S", "5"))
# An endpoint whose attempts have all failed for this long, at least WEBHOOKS_DISABLE_MIN_FAILURES of them in a
# row (one delivery's whole schedule), is disabled and the workspace's owners are notified.
WEBHOOKS_DISABLE_AFTER_S = float(os.environ.get("WEBHOOKS_DISABLE_AFTER_S", str(5 * 24 * 3600)))
WEBHOOKS_DISABLE_MIN_FAILURES = env_int("WEBHOOKS_DISABLE_MIN_FAILURES", 8)
# After a delivery's n-th failed attempt the next comes the n-th of these seconds later; a failure after the last
# is final. The default is the Standard Webhooks / Svix schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: 8
# attempts over about 28 hours); tests shorten it to see a retry within a second.
WEBHOOKS_RETRY_SCHEDULE_S: list[float] = [
    float(s) for s in env_list("WEBHOOKS_RETRY_SCHEDULE_S", ["5", "300", "1800", "7200", "18000", "36000", "36000"])
]
if not WEBHOOKS_RETRY_SCHEDULE_S or any(s <= 0 for s in WEBHOOKS_RETRY_SCHEDULE_S):
    raise ValueError("WEBHOOKS_RETRY_SCHEDULE_S: expected a non-empty comma-separated list of positive seconds")

# --- Audit log (enterprise/audit.py, docs/operations.md "Audit log") -----------------------------------------------
# Entries older than this are deleted by `manage.py purge_audit_log`, the only deletion the append-only log allows.
# Longer than any tier's history: who changed what must outlive the conversations it was about.
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 400)

# --- Priority lane for agent runs (agents/priority.py, docs/protocol.md §12) -------------------------------------
# Queued runs are claimed in the order of created_at + AGENT_PRIORITY_MAX_WAIT_S[their requester's tier] (an
# unknown tier counts as free): enterprise before pro before free, yet a run that has waited its tier's max wait
# is claimed before every run queued after that moment, whatever their tier (the bound on a lower tier's wait).
AGENT_PRIORITY_MAX_WAIT_S: dict[str, float] = json.loads(
    os.environ.get("AGENT_PRIORITY_MAX_WAIT_S_JSON", '{"enterprise": 0, "pro": 10, "free": 60}')
)
# Per runner: this many of its MAX_CONCURRENT_RUNS slots (agents/runner.py) are kept for a tier (and the tiers
# above it); a lower tier's run is not claimed into them, e.g. {"enterprise": 1}: the last free slot is enterprise's.
AGENT_RESERVED_SLOTS: dict[str, int] = json.loads(os.environ.get("AGENT_RESERVED_SLOTS_JSON", '{"enterprise": 1}'))
# Runs one runner (agent worker process) executes at once; more wait in the queue, claimed in the priority order
# above. Runs are I/O-bound (model, database), so the cap is about the model server's capacity, not the CPU's.
AGENT_MAX_CONCURRENT_RUNS = env_int("AGENT_MAX_CONCURRENT_RUNS", 50)
# Reserving every slot would leave the lowest tier none at all: its runs would wait forever.
if sum(int(n) for n in AGENT_RESERVED_SLOTS.values()) >= AGENT_MAX_CONCURRENT_RUNS:
    raise ValueError(
        f"AGENT_RESERVED_SLOTS_JSON reserves {sum(int(n) for n in AGENT_RESERVED_SLOTS.values())} slot(s) of "
        f"AGENT_MAX_CONCURRENT_RUNS ({AGENT_MAX_CONCURRENT_RUNS}): leave at least one for every tier"
    )
