"""Frames about the connection and the user rather than a conversation: `welcome` (docs/protocol.md §1)
and the per-user `notification` (docs/protocol.md §2)."""

from __future__ import annotations

from typing import Literal

import msgspec

from chat.wire.common import EventSeq, NonNegative, Positive, ServerData, Timestamp, Uuid


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


class WelcomeData(ServerData):
    session_id: str
    protocol: Literal["chat.v1"]
    user: WelcomeUser
    server_time: Timestamp
    heartbeat_ms: Positive
    typing_ttl_ms: Positive
    limits: Limits


class NotificationData(ServerData):
    """What the server notifies today: being added to a conversation, or a changed role there."""

    kind: Literal["conversation_added", "role_changed"]
    conversation: Uuid
    title: str
    # An owner grants member or viewer; staff (in the admin) may also make someone an owner.
    role: Literal["owner", "member", "viewer"]
    # The id of who made the change: the conversation's owner, or a staff user.
    by: int


class _Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class WelcomeFrame(_Frame, tag="welcome"):
    data: WelcomeData


class NotificationFrame(_Frame, tag="notification"):
    # Per user: 1, 2, 3, ... (sync_notifications resumes from it).
    seq: EventSeq
    ts: Timestamp
    data: NotificationData


SESSION_DATA: dict[str, type[ServerData]] = {"welcome": WelcomeData, "notification": NotificationData}
SESSION_FRAMES: dict[str, type[msgspec.Struct]] = {"welcome": WelcomeFrame, "notification": NotificationFrame}
