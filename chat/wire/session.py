"""Frames about the connection and the user rather than a conversation: `welcome` (docs/protocol.md §1)
and the per-user `notification` (docs/protocol.md §2)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from chat.wire.common import EventSeq, NonNegative, Positive, ServerData, Timestamp, UserRef, Uuid


class WelcomeUser(ServerData):
    id: int
    username: str
    # The user row's tier as stored; `limits.tier` says whose limits apply (unknown tiers get free's).
    tier: str


class Rate(ServerData):
    limit: Positive
    window_ms: Positive


class Rates(ServerData):
    """One sliding window per command class."""

    messages: Rate
    agent_runs: Rate
    typing: Rate
    commands: Rate


class Limits(ServerData):
    """The caller's tier's row of the tier table."""

    # Tiers are configurable (CHAT_TIERS_JSON can add one), so any name.
    tier: str
    connections: Positive
    rates: Rates
    max_frame_bytes: Positive
    max_text_chars: Positive
    max_subscriptions: Positive
    replay_limit: NonNegative
    history_page_max: Positive
    outbound_queue: Positive
    buffer_max_events: Positive
    buffer_max_age_ms: Positive
    # null: kept forever.
    history_retention_days: Positive | None


class WelcomeData(ServerData, omit_defaults=True):
    session_id: str
    protocol: Literal["chat.v1"]
    user: WelcomeUser
    server_time: Timestamp
    heartbeat_ms: Positive
    typing_ttl_ms: Positive
    limits: Limits
    # (extension, docs/protocol.md §9) The VAPID public key for PushManager.subscribe, when Web Push
    # is configured on this server.
    vapid_public_key: str | None = None


NotificationKind = Literal[
    "mention",
    "agent_finished",
    "approval_requested",
    "added_to_conversation",
    "role_changed",
    "test",
    "webhook_disabled",
]
PREVIEW_MAX_CHARS = 200


class NotificationData(ServerData, omit_defaults=True):
    """docs/protocol.md §9. The fields after `created_at` are (extension) fields of some kinds only."""

    # A uuid of its own, stable across devices and replays.
    id: Uuid
    kind: NotificationKind
    # urgent ones are never held by quiet hours or muted_until.
    priority: Literal["urgent", "normal", "low"]
    conversation: Uuid | None
    # The conversation event it points at (a mention's message, a run's end, an approval request).
    seq: EventSeq | None
    # Who caused it; null when nobody did (the agent finished, a test push).
    actor: UserRef | None
    preview: Annotated[str, msgspec.Meta(max_length=PREVIEW_MAX_CHARS)]
    created_at: Timestamp
    # added_to_conversation, role_changed: as under the old kind names (conversation_added).
    title: str | None = None
    role: Literal["owner", "member", "viewer"] | None = None
    by: int | None = None
    # agent_finished, approval_requested
    run_id: Uuid | None = None
    # agent_finished: how the run ended.
    status: Literal["completed", "failed", "cancelled"] | None = None
    # approval_requested
    call_id: str | None = None
    tool: str | None = None
    expires_at: Timestamp | None = None


class NotificationsReadData(ServerData):
    """(extension) The user's notifications up to `up_to_seq` were marked read on some device."""

    up_to_seq: NonNegative
    # How many of the user's notifications are still unread.
    unread: NonNegative


class _Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class NotificationsReadFrame(_Frame, tag="notifications_read"):
    data: NotificationsReadData


class WelcomeFrame(_Frame, tag="welcome"):
    data: WelcomeData


class NotificationFrame(_Frame, tag="notification"):
    # Per user: 1, 2, 3, ... (sync_notifications resumes from it).
    seq: EventSeq
    ts: Timestamp
    data: NotificationData


SESSION_DATA: dict[str, type[ServerData]] = {
    "welcome": WelcomeData,
    "notification": NotificationData,
    "notifications_read": NotificationsReadData,
}
SESSION_FRAMES: dict[str, type[msgspec.Struct]] = {
    "welcome": WelcomeFrame,
    "notification": NotificationFrame,
    "notifications_read": NotificationsReadFrame,
}
