"""Client commands (docs/protocol.md §3): the fields of each, as the server validates them.

A frame is `{"type": "<command>", "id": "<optional>", ...fields}`; these schemas describe the
fields only (`type` and `id` are read first, when the frame is parsed). What a schema cannot know
is left to the command's handler, which has the caller's tier and the database:

- `text` of `send` is bounded by the tier's `max_text_chars`, and a text that is only whitespace
  is refused after trimming; a longer text is `too_large`, not `bad_request`.
- `conversation` and `run_id` are any string here: one that is not a UUID answers `not_found`, the
  same as a conversation that does not exist, so that existence never leaks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from chat.wire.common import (
    HISTORY_MESSAGES_DEFAULT,
    HISTORY_PAGE_DEFAULT,
    HISTORY_PAGE_MAX,
    MAX_CALL_ID_CHARS,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_FEEDBACK_COMMENT_CHARS,
    MAX_TOKEN_CHARS,
    PATTERN_MEANINGS,
    STORABLE_PATTERN,
    CommandFields,
    NonNegative,
    Positive,
    StorableText,
)

ClientMsgId = Annotated[str, Meta(min_length=1, max_length=MAX_CLIENT_MSG_ID_CHARS, pattern=STORABLE_PATTERN)]
Token = Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN_CHARS, pattern=STORABLE_PATTERN)]
PageSize = Annotated[int, Meta(ge=1, le=HISTORY_PAGE_MAX)]
# W3C Trace Context's traceparent (https://www.w3.org/TR/trace-context/#traceparent-header), as a
# version-00 client writes it: version, trace id, parent span id, flags in lower-case hex; version ff
# and all-zero ids are invalid there, so they are refused here.
TRACEPARENT_PATTERN = "\\A(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\\Z"
PATTERN_MEANINGS[TRACEPARENT_PATTERN] = "a W3C traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"
Traceparent = Annotated[str, Meta(pattern=TRACEPARENT_PATTERN)]
# A draft may be empty (it clears the draft); its length is bounded by the tier, like `send`'s text.
DraftText = Annotated[str, Meta(pattern=STORABLE_PATTERN)]


# Optional integer fields are `X | None = None`: a client may send null for "not given" (the
# browser client sends `since_seq: null` before it has seen any event).


class Subscribe(CommandFields, omit_defaults=True):
    conversation: str
    # Resume after this seq; absent or null: start live after the head.
    since_seq: NonNegative | None = None


class Unsubscribe(CommandFields):
    conversation: str


class Send(CommandFields, omit_defaults=True):
    conversation: str
    client_msg_id: ClientMsgId
    text: StorableText
    # (extension) The caller's trace: the agent run this message starts continues it.
    traceparent: Traceparent | None = None


class History(CommandFields, omit_defaults=True):
    conversation: str
    # Events with seq below this one; absent or null: the newest page.
    before_seq: Positive | None = None
    limit: PageSize | None = None
    # (extension) What `limit` counts: events (absent or null), or messages: a person's message or
    # a whole agent run is one item (docs/protocol.md §3, history by messages).
    unit: Literal["events", "messages"] | None = None

    @property
    def page_size(self) -> int:
        if self.limit is not None:
            return self.limit
        return HISTORY_MESSAGES_DEFAULT if self.unit == "messages" else HISTORY_PAGE_DEFAULT


class Typing(CommandFields):
    conversation: str
    state: Literal["start", "stop"]


class Read(CommandFields):
    conversation: str
    seq: NonNegative


class Draft(CommandFields):
    """(extension, §10) Save the caller's unsent text of a conversation; "" clears it."""

    conversation: str
    text: DraftText


class Cancel(CommandFields):
    run_id: str


CallId = Annotated[str, Meta(min_length=1, max_length=MAX_CALL_ID_CHARS, pattern=STORABLE_PATTERN)]


class Approve(CommandFields, omit_defaults=True):
    """§11: decide on a tool call waiting for approval."""

    run_id: str
    call_id: CallId
    decision: Literal["approve", "reject"]
    # Edited arguments (with `approve` only), checked against the tool's own schema.
    arguments: dict[str, Any] | None = None


# --- (extension) acting on one message or run after it was sent ---------------------------------------

FeedbackComment = Annotated[str, Meta(max_length=MAX_FEEDBACK_COMMENT_CHARS, pattern=STORABLE_PATTERN)]


class Edit(CommandFields):
    """Replace the text of the caller's own message (bounded like `send`'s text)."""

    conversation: str
    message_id: str
    text: StorableText


class Delete(CommandFields):
    """Delete a message: the author their own, an owner anyone's."""

    conversation: str
    message_id: str


class Feedback(CommandFields, omit_defaults=True):
    """Rate an agent's answer for the caller only; null clears the caller's rating."""

    conversation: str
    message_id: str
    rating: Literal["up", "down"] | None
    comment: FeedbackComment | None = None


class Regenerate(CommandFields):
    """Answer an ended run's question again, in a new run."""

    conversation: str
    run_id: str


class Presence(CommandFields):
    conversation: str


class SyncNotifications(CommandFields):
    since_seq: NonNegative


class Auth(CommandFields):
    token: Token


class Ping(CommandFields):
    pass


COMMANDS: dict[str, type[CommandFields]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "send": Send,
    "history": History,
    "typing": Typing,
    "read": Read,
    "draft": Draft,
    "cancel": Cancel,
    "approve": Approve,
    "edit": Edit,
    "delete": Delete,
    "feedback": Feedback,
    "regenerate": Regenerate,
    "presence": Presence,
    "sync_notifications": SyncNotifications,
    "auth": Auth,
    "ping": Ping,
}
