"""Durable events about the conversation itself and its members (docs/protocol.md §4, extension):
`conversation_updated`, `member_joined`, `member_left`, `member_role_changed`. Kept beside
chat/wire/events.py, which lists them in its unions and tables, so that module stays one screenful
per kind of event."""

from __future__ import annotations

from typing import Literal

import msgspec

from chat.wire.common import EventSeq, ServerData, Timestamp, UserRef, Uuid

MemberRole = Literal["owner", "member", "viewer"]


class ConversationUpdatedData(ServerData):
    """An owner renamed the conversation or changed its visibility: both current values, and who."""

    title: str
    visibility: Literal["private", "open"]
    # null only if the user who made the change no longer existed when it was stored.
    by: UserRef | None


class MemberJoinedData(ServerData):
    """A workspace member joined the open conversation (`by` is themself, today's only case: an
    invitation is told to the invited user as a notification, not to the room)."""

    user: UserRef
    role: MemberRole
    by: UserRef | None


class MemberLeftData(ServerData):
    """A member left (`by` is themself) or was removed (`by` who removed them; null for staff in the admin)."""

    user: UserRef
    by: UserRef | None


class MemberRoleChangedData(ServerData):
    user: UserRef
    role: MemberRole
    by: UserRef | None


class _Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class ConversationUpdatedEvent(_Frame, tag="conversation_updated"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: ConversationUpdatedData


class MemberJoinedEvent(_Frame, tag="member_joined"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: MemberJoinedData


class MemberLeftEvent(_Frame, tag="member_left"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: MemberLeftData


class MemberRoleChangedEvent(_Frame, tag="member_role_changed"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: MemberRoleChangedData
