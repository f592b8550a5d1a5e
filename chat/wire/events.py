"""Conversation events (docs/protocol.md §4-§5): the `data` of each, and each whole frame.

Durable events: `{"type","conversation","seq","ts","data"}`, stored, replayed and paged by
`history`. Ephemeral events: `{"type","conversation","data"}`, never stored, no `seq`.

Fields are declared in the order the server writes them, so a frame encoded from these Structs is
the same text the server's dict-based encoding produces (floats aside: msgspec writes 1e20 where
json writes 1e+20; both are JSON). A field that is always sent, even when null, has no default;
only a field the server leaves out has one (and its Struct omits defaults).

Encoding does not check constraints (a Uuid field encodes any string): the schemas check what is
decoded, so tests decode what the server builds.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from chat.wire.common import EventSeq, NonNegative, ServerData, Timestamp, UserRef, Uuid
from chat.wire.conversation_events import (
    ConversationUpdatedData,
    ConversationUpdatedEvent,
    MemberJoinedData,
    MemberJoinedEvent,
    MemberLeftData,
    MemberLeftEvent,
    MemberRoleChangedData,
    MemberRoleChangedEvent,
)
from chat.wire.message_events import MessageDeletedData, MessageDeletedEvent, MessageEditedData, MessageEditedEvent

# --- durable event data ---------------------------------------------------------------------------


class Author(ServerData):
    # An agent's answer has no user row; v1 never sends it as a `message` (it is agent_completed).
    id: int | None
    username: str | None
    kind: Literal["user", "agent"]


class MessageData(ServerData):
    id: Uuid
    client_msg_id: str
    author: Author
    text: str
    created_at: Timestamp
    # Always present: null for a person's message.
    run_id: Uuid | None
    # The ids of the members the text mentions (§8). Events stored before mentions existed lack it.
    mentions: list[int] = msgspec.field(default_factory=list)
    # (extension) true once the message was deleted: its text is then "" (§4, message_deleted).
    deleted: bool | msgspec.UnsetType = msgspec.UNSET


class AgentStartedData(ServerData):
    run_id: Uuid
    agent: str
    # null once the prompt's message was deleted.
    trigger_message_id: Uuid | None
    # Enqueue and claim may run on different hosts, so clock skew can make this slightly negative.
    queued_ms: int
    # (extension) The earlier run on the same question this one answers again (`regenerate`).
    regenerates: Uuid | msgspec.UnsetType = msgspec.UNSET


class AgentThinkingData(ServerData):
    run_id: Uuid
    text: str


class ToolExecutingData(ServerData):
    run_id: Uuid
    call_id: str
    tool: str
    arguments: dict[str, Any]


class TruncatedResult(ServerData):
    """What `tool_completed.result` becomes when the tool's result is too long to carry whole."""

    truncated: Literal[True]
    preview: str  # the start of the result's JSON encoding; the whole form fits the bound
    size: NonNegative
    # Where a member reads the whole result over REST (absent only in results stored before it existed).
    href: str | msgspec.UnsetType = msgspec.UNSET


class ToolCompletedData(ServerData):
    run_id: Uuid
    call_id: str
    tool: str
    ok: bool
    # Whatever JSON the tool returned, or a TruncatedResult.
    result: Any
    duration_ms: NonNegative


class ApprovalRequestedData(ServerData):
    """§11: a tool call waits for a member with `approver_role` (owners may always decide)."""

    run_id: Uuid
    call_id: str
    tool: str
    arguments: dict[str, Any]
    # What approving does, in words for people.
    reason: str
    approver_role: Literal["owner", "member"]
    expires_at: Timestamp


class ApprovalResolvedData(ServerData):
    run_id: Uuid
    call_id: str
    decision: Literal["approved", "rejected", "expired"]
    # Who decided; null when it expired.
    by: UserRef | None
    # What runs (approved: as asked or as edited), or what was declined (rejected, expired).
    arguments: dict[str, Any]


class AgentDeltaData(ServerData):
    run_id: Uuid
    text: str


class Usage(ServerData, omit_defaults=True):
    # Empty when the model backend reported no usage.
    prompt_tokens: NonNegative | None = None
    completion_tokens: NonNegative | None = None


class AgentCompletedData(ServerData):
    run_id: Uuid
    message_id: Uuid
    text: str
    duration_ms: NonNegative | None
    usage: Usage


RunErrorCode = Literal["worker_lost", "worker_shutdown", "llm_unavailable", "llm_timeout", "llm_error", "internal"]


class RunError(ServerData, omit_defaults=True):
    code: RunErrorCode
    message: str
    # Set while the model server's circuit says when trying again may work.
    retry_after_ms: NonNegative | None = None


class AgentFailedData(ServerData):
    run_id: Uuid
    error: RunError


class CancelledBy(ServerData):
    # Both null if the user who cancelled was deleted before the run stopped.
    id: int | None
    username: str | None


class AgentCancelledData(ServerData):
    run_id: Uuid
    by: CancelledBy
    partial_text: str


# --- ephemeral event data -------------------------------------------------------------------------


class TypingData(ServerData):
    user: UserRef
    state: Literal["start", "stop"]
    expires_ms: NonNegative


class ReadData(ServerData):
    user: UserRef
    seq: NonNegative


class PresenceData(ServerData):
    joined: list[UserRef]
    left: list[UserRef]


class DraftData(ServerData):
    """(extension, §10) The user's draft of a conversation, to their own other sockets only."""

    text: str
    updated_at: Timestamp


# --- whole frames -----------------------------------------------------------------------------------
# Tagged by `type`, so a list of them (history's `events`) decodes each to its own class.


class _Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class MessageEvent(_Frame, tag="message"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: MessageData


class AgentStartedEvent(_Frame, tag="agent_started"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: AgentStartedData


class AgentThinkingEvent(_Frame, tag="agent_thinking"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: AgentThinkingData


class ToolExecutingEvent(_Frame, tag="tool_executing"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: ToolExecutingData


class ToolCompletedEvent(_Frame, tag="tool_completed"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: ToolCompletedData


class ApprovalRequestedEvent(_Frame, tag="approval_requested"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: ApprovalRequestedData


class ApprovalResolvedEvent(_Frame, tag="approval_resolved"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: ApprovalResolvedData


class AgentDeltaEvent(_Frame, tag="agent_delta"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: AgentDeltaData


class AgentCompletedEvent(_Frame, tag="agent_completed"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: AgentCompletedData


class AgentFailedEvent(_Frame, tag="agent_failed"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: AgentFailedData


class AgentCancelledEvent(_Frame, tag="agent_cancelled"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: AgentCancelledData


DurableEvent = (
    MessageEvent
    | AgentStartedEvent
    | AgentThinkingEvent
    | ToolExecutingEvent
    | ToolCompletedEvent
    | ApprovalRequestedEvent
    | ApprovalResolvedEvent
    | AgentDeltaEvent
    | AgentCompletedEvent
    | AgentFailedEvent
    | AgentCancelledEvent
    | ConversationUpdatedEvent
    | MemberJoinedEvent
    | MemberLeftEvent
    | MemberRoleChangedEvent
    | MessageEditedEvent
    | MessageDeletedEvent
)


class TypingEvent(_Frame, tag="typing"):
    conversation: Uuid
    data: TypingData


class ReadEvent(_Frame, tag="read"):
    conversation: Uuid
    data: ReadData


class PresenceEvent(_Frame, tag="presence"):
    conversation: Uuid
    data: PresenceData


class DraftEvent(_Frame, tag="draft"):
    conversation: Uuid
    data: DraftData


EphemeralEvent = TypingEvent | ReadEvent | PresenceEvent | DraftEvent

DURABLE_DATA: dict[str, type[ServerData]] = {
    "message": MessageData,
    "agent_started": AgentStartedData,
    "agent_thinking": AgentThinkingData,
    "tool_executing": ToolExecutingData,
    "tool_completed": ToolCompletedData,
    "approval_requested": ApprovalRequestedData,
    "approval_resolved": ApprovalResolvedData,
    "agent_delta": AgentDeltaData,
    "agent_completed": AgentCompletedData,
    "agent_failed": AgentFailedData,
    "agent_cancelled": AgentCancelledData,
    "conversation_updated": ConversationUpdatedData,
    "member_joined": MemberJoinedData,
    "member_left": MemberLeftData,
    "member_role_changed": MemberRoleChangedData,
    "message_edited": MessageEditedData,
    "message_deleted": MessageDeletedData,
}

EPHEMERAL_DATA: dict[str, type[ServerData]] = {
    "typing": TypingData,
    "read": ReadData,
    "presence": PresenceData,
    "draft": DraftData,
}

EVENT_FRAMES: dict[str, type[msgspec.Struct]] = {
    "message": MessageEvent,
    "agent_started": AgentStartedEvent,
    "agent_thinking": AgentThinkingEvent,
    "tool_executing": ToolExecutingEvent,
    "tool_completed": ToolCompletedEvent,
    "approval_requested": ApprovalRequestedEvent,
    "approval_resolved": ApprovalResolvedEvent,
    "agent_delta": AgentDeltaEvent,
    "agent_completed": AgentCompletedEvent,
    "agent_failed": AgentFailedEvent,
    "agent_cancelled": AgentCancelledEvent,
    "conversation_updated": ConversationUpdatedEvent,
    "member_joined": MemberJoinedEvent,
    "member_left": MemberLeftEvent,
    "member_role_changed": MemberRoleChangedEvent,
    "message_edited": MessageEditedEvent,
    "message_deleted": MessageDeletedEvent,
    "typing": TypingEvent,
    "read": ReadEvent,
    "presence": PresenceEvent,
    "draft": DraftEvent,
}
