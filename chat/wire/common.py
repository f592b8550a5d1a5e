"""What every chat.v1 schema shares: limits that are part of the protocol, constrained string and
integer types, the base classes, and the small objects several frames carry.

Two base classes, because the two directions follow different rules:

- `CommandFields` (client to server) ignores fields it does not know. Nothing in chat.v1 says an
  unknown command field is refused, the server has always ignored them, and a newer client may
  send fields of a compatible addition to a server that does not have it yet.
- `ServerData` (everything the server sends) forbids unknown fields. These schemas are the server's
  own declaration of its output: a field the server sends must be declared here first, and checking
  a frame against its schema must catch one that was not. (A *client* must still ignore unknown
  fields, so a client library should not decode with these classes as they are.)
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PROTOCOL = "chat.v1"

# --- limits the protocol itself fixes (the same for every tier) --------------------------------
# A command `id` is echoed in its reply, so it is bounded like any other client string.
MAX_ID_CHARS = 64
# `client_msg_id` is the idempotency key of `send`.
MAX_CLIENT_MSG_ID_CHARS = 64
# A tool call's id, unique in its run (the database column's width).
MAX_CALL_ID_CHARS = 64
# An access token is a few hundred characters; this bound only stops a frame full of "token".
MAX_TOKEN_CHARS = 4096
# `history` pages: `limit` is 1..HISTORY_PAGE_MAX, and HISTORY_PAGE_DEFAULT when absent or null.
HISTORY_PAGE_MAX = 100
HISTORY_PAGE_DEFAULT = 50
# (extension) `history` with `unit: "messages"`: items (a message, a whole run) per page by default.
HISTORY_MESSAGES_DEFAULT = 30
# (extension) `feedback`'s optional comment on an answer.
MAX_FEEDBACK_COMMENT_CHARS = 2000

# --- string patterns ------------------------------------------------------------------------------
# Strings that are stored or verified: PostgreSQL text cannot hold NUL, and a lone surrogate (a JSON
# escape like "\ud800") has no UTF-8 form, so neither psycopg nor a WebSocket frame can carry it.
STORABLE_PATTERN = "\\A[^\\x00\\ud800-\\udfff]*\\Z"
# An id is only echoed back, where JSON escapes a NUL; a lone surrogate still cannot be written.
UTF8_PATTERN = "\\A[^\\ud800-\\udfff]*\\Z"
# Ids the server mints are canonical UUIDs (str(uuid.UUID)).
UUID_PATTERN = "\\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\Z"
# Every server timestamp is RFC 3339 in UTC with milliseconds, e.g. 2026-11-24T00:00:00.000Z.
TIMESTAMP_PATTERN = "\\A\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z\\Z"

# What each pattern means, for error messages a client author can act on.
PATTERN_MEANINGS: dict[str, str] = {
    STORABLE_PATTERN: "Unicode text without NUL characters or lone surrogates",
    UTF8_PATTERN: "Unicode text without lone surrogates",
    UUID_PATTERN: "a canonical lower-case UUID",
    TIMESTAMP_PATTERN: "an RFC 3339 UTC timestamp with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)",
}

StorableText = Annotated[str, Meta(min_length=1, pattern=STORABLE_PATTERN)]
CommandId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=UTF8_PATTERN)]
Uuid = Annotated[str, Meta(pattern=UUID_PATTERN)]
Timestamp = Annotated[str, Meta(pattern=TIMESTAMP_PATTERN)]
NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
# A durable event's seq: 1, 2, 3, ... per conversation (a notification's: per user).
EventSeq = Positive

ErrorCode = Literal[
    "bad_request",
    "unknown_command",
    "not_found",
    "forbidden",
    "too_large",
    "conflict",
    "rate_limited",
    "unavailable",
    "internal",
]


class CommandFields(msgspec.Struct, kw_only=True):
    """The fields of one client command (the frame without `type` and `id`)."""


class ServerData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An object the server sends, or a part of one."""


class UserRef(ServerData):
    """A person as other members see them."""

    id: int
    username: str


class ErrorBody(ServerData, omit_defaults=True):
    """`error` of an `error` frame and of a failed `reply`."""

    code: ErrorCode
    message: str
    # Only where waiting helps (rate_limited, unavailable): when the same command is admitted.
    retry_after_ms: NonNegative | None = None
    # (extension) With rate_limited: the limit that refused, `messages`, `agent_runs`, `typing` or
    # `commands` (the rate classes of welcome.limits.rates, §12).
    limit: str | None = None
