"""Answers to commands (docs/protocol.md §2-§3): each command's reply result, and the error envelopes.

A successful reply is flat: `{"type":"reply","id":"…","ok":true, ...result}`, so a result schema
holds only the result's fields and `reply_frame` (in the package) wraps it. A failed command is
`{"type":"reply","id","ok":false,"error":{…}}` when it had an `id`, else `{"type":"error","error":{…}}`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from chat.wire.common import CommandId, ErrorBody, EventSeq, NonNegative, ServerData, Timestamp, UserRef, Uuid
from chat.wire.events import ApprovalRequestedData, DurableEvent


class ActiveRun(ServerData):
    """A run in progress, in `subscribe`'s `active_runs`."""

    run_id: Uuid
    agent: str
    # waiting_approval (extension, §11): parked on a tool call until a member decides.
    status: Literal["queued", "running", "waiting_approval"]
    # The answer streamed so far, and the seq of the last agent_delta folded into it (0: none yet).
    text: str
    seq: NonNegative
    # (extension) Co-viewing: the members with a socket subscribed to the conversation when the
    # reply was made, the caller included; `presence` events keep it current.
    watchers: list[UserRef] = msgspec.field(default_factory=list)
    # (extension, §11) The open approval_requested of a waiting_approval run (its data); absent
    # for every other run.
    approval: ApprovalRequestedData | None = None


class SavedDraft(ServerData):
    text: str
    updated_at: Timestamp


class SubscribeReply(ServerData, omit_defaults=True):
    conversation: Uuid
    head_seq: NonNegative
    active_runs: list[ActiveRun]
    # The caller's read marker (§10).
    last_read_seq: NonNegative
    # Only when the command gave `since_seq`.
    recovered: bool | None = None
    # (extension) The caller's saved draft, only when there is one.
    draft: SavedDraft | None = None


class UnsubscribeReply(ServerData):
    conversation: Uuid


class MessageRef(ServerData):
    id: Uuid
    seq: EventSeq


class SendReply(ServerData, omit_defaults=True):
    conversation: Uuid
    message: MessageRef
    duplicate: bool
    # Only when the message started (or queued) a run; for a repeat, the first send's run.
    run_id: Uuid | None = None


class HistoryReply(ServerData, omit_defaults=True):
    conversation: Uuid
    # Oldest first.
    events: list[DurableEvent]
    has_more: bool
    # (extension) With has_more: the before_seq that asks for the next older page.
    next_before_seq: EventSeq | None = None


class ApproveReply(ServerData):
    run_id: Uuid
    call_id: str
    # The decision as the command gave it.
    decision: Literal["approve", "reject"]


class CancelReply(ServerData):
    run_id: Uuid
    # cancelled: it was queued (agent_started and agent_cancelled are already stored);
    # cancelling: it is running and agent_cancelled follows.
    status: Literal["cancelled", "cancelling"]


class EditReply(ServerData):
    message_id: Uuid
    # The seq of the message_edited event.
    seq: EventSeq
    edited_at: Timestamp


class DeleteReply(ServerData):
    message_id: Uuid
    # The seq of the message_deleted event.
    seq: EventSeq


class FeedbackReply(ServerData):
    message_id: Uuid
    # The caller's rating as stored now; null: cleared.
    rating: Literal["up", "down"] | None


class RegenerateReply(ServerData):
    # The new run (queued; its agent_started carries `regenerates`).
    run_id: Uuid


class Member(ServerData):
    user: UserRef
    online: bool
    # null while online, or if never seen.
    last_seen: Timestamp | None
    # (extension) The member's read marker (§10).
    last_read_seq: NonNegative


class PresenceReply(ServerData):
    conversation: Uuid
    members: list[Member]


class DraftReply(ServerData):
    conversation: Uuid
    updated_at: Timestamp


class SyncNotificationsReply(ServerData):
    # The missed notification frames follow the reply.
    head_seq: NonNegative
    # (extension) The seq of the last frame that follows (since_seq when none does), and whether
    # more exist after it: one reply sends at most a page, never silently less than head_seq.
    until_seq: NonNegative
    has_more: bool


class AuthReply(ServerData):
    expires_at: Timestamp


class PingReply(ServerData):
    server_time: Timestamp


class EmptyReply(ServerData):
    """`typing` and `read` answer `ok` and nothing else."""


REPLIES: dict[str, type[ServerData]] = {
    "subscribe": SubscribeReply,
    "unsubscribe": UnsubscribeReply,
    "send": SendReply,
    "history": HistoryReply,
    "typing": EmptyReply,
    "read": EmptyReply,
    "draft": DraftReply,
    "cancel": CancelReply,
    "approve": ApproveReply,
    "edit": EditReply,
    "delete": DeleteReply,
    "feedback": FeedbackReply,
    "regenerate": RegenerateReply,
    "presence": PresenceReply,
    "sync_notifications": SyncNotificationsReply,
    "auth": AuthReply,
    "ping": PingReply,
}


class _Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class ErrorFrame(_Frame, tag="error"):
    error: ErrorBody


class ReplyError(_Frame, tag="reply"):
    id: CommandId
    ok: Literal[False]
    error: ErrorBody


class ReplyOkHead(msgspec.Struct, kw_only=True, tag_field="type", tag="reply"):
    """The envelope part of a successful reply; the result's fields sit beside it."""

    id: CommandId
    ok: Literal[True]
