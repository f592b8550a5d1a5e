"""Acting on one stored message after it was sent: edit, delete, feedback on an answer.

The caller has resolved the conversation with `conversation_for_member` (the membership check comes
first, so a conversation the caller cannot see answers `not_found` before any message is looked
at) and passes the caller's role from it. A message id that is not a message of that conversation
is `not_found` too, whoever wrote it: the id never says whether it exists elsewhere.

Edits and deletions are durable events (`message_edited`, `message_deleted`) appended with the
message row's change in one transaction. A deletion is also the one exception to the event log
being immutable: the original `message` event's text is scrubbed (`text: ""`, `deleted: true`), so
no later history or replay serves the deleted text (docs/protocol.md §4). Feedback is private to
the rater (and staff): a row, no event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat.errors import NotFound, ServiceError
from chat.models import AuthorKind, Event, Message, MessageFeedback, Role
from chat.publishing import EventsScrubbed, after_commit
from chat.selectors import parse_uuid
from chat.services.events import append_event
from chat.wire.common import MAX_FEEDBACK_COMMENT_CHARS
from chat.wire.frames import rfc3339

RATINGS = {"up": MessageFeedback.Rating.UP, "down": MessageFeedback.Rating.DOWN}
RATING_NAMES: dict[int, str] = {int(value): name for name, value in RATINGS.items()}


@dataclass(frozen=True)
class EditResult:
    message_id: str
    seq: int
    edited_at: datetime


@dataclass(frozen=True)
class FeedbackResult:
    message_id: str
    rating: str | None


@dataclass(frozen=True)
class DeleteResult:
    message_id: str
    seq: int


def _locked_message(conversation_id: str, message_id: object) -> Message:
    """The message of this conversation, row-locked for the rest of the transaction; NotFound for an
    id that is not one (malformed, unknown, or a message of another conversation alike)."""
    message = (
        Message.objects.select_for_update().filter(conversation_id=conversation_id, id=parse_uuid(message_id)).first()
    )
    if message is None:
        raise NotFound()
    return message


def _checked_text(text: str, max_chars: int | None) -> str:
    """`send`'s rules: the text as sent within the tier's bound, not blank once trimmed, the trimmed
    text within the server-wide bound."""
    if max_chars is not None and len(text) > max_chars:
        raise ServiceError("too_large", f"text must be at most {max_chars} characters")
    text = text.strip()
    if not text:
        raise ServiceError("bad_request", "text must not be empty")
    if len(text) > settings.CHAT_MAX_TEXT_CHARS:
        raise ServiceError("too_large", f"text is longer than {settings.CHAT_MAX_TEXT_CHARS} characters")
    return text


@transaction.atomic
def message_edit(
    *,
    conversation_id: str,
    message_id: object,
    user_id: int,
    username: str,
    role: str,
    text: str,
    max_chars: int | None = None,
) -> EditResult:
    """Replace the text of the caller's own message and append `message_edited`. Only its author
    edits a message (owners moderate by deleting); an agent's answer is never edited, and a deleted
    message cannot be (conflict). The answer the agent gave to the old text stays as it was."""
    if role == Role.VIEWER:
        raise ServiceError("forbidden", "viewers cannot edit messages")
    message = _locked_message(conversation_id, message_id)
    if message.author_kind != AuthorKind.USER:
        raise ServiceError("forbidden", "an agent's answer cannot be edited")
    if message.author_id != user_id:
        raise ServiceError("forbidden", "only its author may edit a message")
    if message.deleted_at is not None:
        raise ServiceError("conflict", "the message was deleted")
    text = _checked_text(text, max_chars)
    now = timezone.now()
    Message.objects.filter(id=message.id).update(text=text, edited_at=now)
    event = append_event(
        conversation_id=conversation_id,
        type="message_edited",
        data={
            "message_id": str(message.id),
            "text": text,
            "edited_at": rfc3339(now),
            "by": {"id": user_id, "username": username},
        },
    )
    return EditResult(str(message.id), event.seq, now)


@transaction.atomic
def message_delete(*, conversation_id: str, message_id: object, user_id: int, username: str, role: str) -> DeleteResult:
    """Delete a person's message: its author, or an owner of the conversation (moderation). The row
    keeps `deleted_at` with its text emptied, the `message` event is scrubbed, `message_deleted`
    says who did it. An agent's answer is not deleted here (regenerate gives another one)."""
    if role == Role.VIEWER:
        raise ServiceError("forbidden", "viewers cannot delete messages")
    message = _locked_message(conversation_id, message_id)
    if message.author_kind != AuthorKind.USER:
        raise ServiceError("forbidden", "an agent's answer cannot be deleted")
    if message.author_id != user_id and role != Role.OWNER:
        raise ServiceError("forbidden", "only its author or a conversation owner may delete a message")
    if message.deleted_at is not None:
        raise ServiceError("conflict", "the message was already deleted")
    now = timezone.now()
    Message.objects.filter(id=message.id).update(text="", deleted_at=now)
    if message.seq is not None:
        _scrub_message_event(conversation_id, message.seq)
    event = append_event(
        conversation_id=conversation_id,
        type="message_deleted",
        data={"message_id": str(message.id), "deleted_at": rfc3339(now), "by": {"id": user_id, "username": username}},
    )
    return DeleteResult(str(message.id), event.seq)


def _scrub_message_event(conversation_id: str, seq: int) -> None:
    """The deleted message's `message` event keeps its place in the log without its text, in the
    database and (after commit) in the hot replay buffers."""
    event = Event.objects.select_for_update().filter(conversation_id=conversation_id, seq=seq, type="message").first()
    if event is None:
        return
    event.data = {**event.data, "text": "", "deleted": True}
    event.save(update_fields=["data"])
    after_commit(EventsScrubbed(str(conversation_id), (seq,)))


def feedback_set(
    *,
    conversation_id: str,
    message_id: object,
    user_id: int,
    rating: str | None,
    comment: str | None = None,
) -> FeedbackResult:
    """The caller's rating of an agent's answer ("up", "down"; None clears it, comment included).
    Any member may rate, viewers too: they read the answers. Private: nothing is published."""
    if rating is not None and rating not in RATINGS:
        raise ServiceError("bad_request", "rating must be 'up', 'down' or null")
    if comment is not None and len(comment) > MAX_FEEDBACK_COMMENT_CHARS:
        raise ServiceError("too_large", f"comment must be at most {MAX_FEEDBACK_COMMENT_CHARS} characters")
    message = (
        Message.objects.filter(conversation_id=conversation_id, id=parse_uuid(message_id))
        .values("id", "author_kind")
        .first()
    )
    if message is None:
        raise NotFound()
    if message["author_kind"] != AuthorKind.AGENT:
        raise ServiceError("bad_request", "only an agent's answer can be rated")
    if rating is None:
        MessageFeedback.objects.filter(message_id=message["id"], user_id=user_id).delete()
        return FeedbackResult(str(message["id"]), None)
    MessageFeedback.objects.update_or_create(
        message_id=message["id"],
        user_id=user_id,
        defaults={"rating": RATINGS[rating], "comment": (comment or "").strip()},
    )
    return FeedbackResult(str(message["id"]), rating)


def feedback_of(*, conversation_id: str, user_id: int) -> dict[str, Any]:
    """The caller's ratings in one conversation: {message id: "up" | "down"}."""
    rows = MessageFeedback.objects.filter(message__conversation_id=conversation_id, user_id=user_id).values_list(
        "message_id", "rating"
    )
    return {str(message_id): RATING_NAMES[rating] for message_id, rating in rows}
