"""Durable events about a stored message changing after it was sent (docs/protocol.md §4, extension):
`message_edited` and `message_deleted`. Kept beside chat/wire/events.py, which lists them in its
unions and tables, so that module stays one screenful per kind of event."""

from __future__ import annotations

import msgspec

from chat.wire.common import EventSeq, ServerData, Timestamp, UserRef, Uuid


class MessageEditedData(ServerData):
    """The author changed the text of their message; the new text replaces the old one for readers.
    An answer the agent gave to the old text stays as it was."""

    message_id: Uuid
    text: str
    edited_at: Timestamp
    by: UserRef


class MessageDeletedData(ServerData):
    """The author, or an owner of the conversation, deleted a message: its text is gone for good
    (the original `message` event is scrubbed to `text: ""`, `deleted: true`)."""

    message_id: Uuid
    deleted_at: Timestamp
    by: UserRef


class _Frame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class MessageEditedEvent(_Frame, tag="message_edited"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: MessageEditedData


class MessageDeletedEvent(_Frame, tag="message_deleted"):
    conversation: Uuid
    seq: EventSeq
    ts: Timestamp
    data: MessageDeletedData
