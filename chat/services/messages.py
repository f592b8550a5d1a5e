"""Sending a message: idempotent by (conversation, author, client_msg_id)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, transaction

from chat.errors import ServiceError
from chat.models import AuthorKind, Conversation, Message
from chat.services.events import StoredEvent, append_event, rfc3339


@dataclass(frozen=True)
class SendResult:
    message_id: str
    seq: int
    duplicate: bool
    run_id: str | None
    events: list[StoredEvent] = field(default_factory=list)


def message_event_data(message: Message, *, username: str) -> dict[str, object]:
    return {
        "id": str(message.id),
        "client_msg_id": message.client_msg_id,
        "author": {"id": message.author_id, "username": username, "kind": message.author_kind},
        "text": message.text,
        "created_at": rfc3339(message.created_at),
        "run_id": str(message.run_id) if message.run_id else None,
    }


def message_check(*, can_write: bool, client_msg_id: str, text: str) -> str:
    """Whether this author may send this message at all (role, key, text), as the stored text.
    The socket asks before spending rate-limit quota; message_send asks again for every caller."""
    if not can_write:
        raise ServiceError("forbidden", "your role in this conversation does not allow sending")
    if not client_msg_id or len(client_msg_id) > 64:
        raise ServiceError("bad_request", "client_msg_id must be 1-64 characters")
    text = text.strip()
    if not text:
        raise ServiceError("bad_request", "text must not be empty")
    if len(text) > settings.CHAT_MAX_TEXT_CHARS:
        raise ServiceError("too_large", f"text is longer than {settings.CHAT_MAX_TEXT_CHARS} characters")
    return text


def message_send(
    *, conversation_id: str, author_id: int, username: str, client_msg_id: str, text: str, can_write: bool
) -> SendResult:
    """Store a user's message and its `message` event, and queue an agent run if the conversation
    has an agent. A repeat of the same client_msg_id returns the first message and starts nothing.

    The caller has resolved access with `conversation_for_member`; `can_write` is that role check.
    """
    text = message_check(can_write=can_write, client_msg_id=client_msg_id, text=text)
    existing = message_existing(conversation_id, author_id, client_msg_id)
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            return _store(conversation_id, author_id, username, client_msg_id, text)
    except IntegrityError:
        # Two sockets of one user raced with the same key: the unique constraint decided, and the
        # loser answers like any other repeat.
        existing = message_existing(conversation_id, author_id, client_msg_id)
        if existing is not None:
            return existing
        raise


def message_existing(conversation_id: str, author_id: int, client_msg_id: str) -> SendResult | None:
    """The message this author already stored under `client_msg_id`, as a duplicate send's result."""
    row = (
        Message.objects.filter(conversation_id=conversation_id, author_id=author_id, client_msg_id=client_msg_id)
        .values("id", "seq")
        .first()
    )
    if row is None:
        return None
    from agents.models import AgentRun

    run_id = AgentRun.objects.filter(trigger_message_id=row["id"]).values_list("id", flat=True).first()
    return SendResult(str(row["id"]), int(row["seq"] or 0), True, str(run_id) if run_id else None)


def _store(conversation_id: str, author_id: int, username: str, client_msg_id: str, text: str) -> SendResult:
    from agents.services import run_enqueue

    agent = Conversation.objects.filter(id=conversation_id).values_list("agent", flat=True).get()
    message = Message.objects.create(
        conversation_id=conversation_id,
        author_id=author_id,
        author_kind=AuthorKind.USER,
        client_msg_id=client_msg_id,
        text=text,
    )
    event = append_event(
        conversation_id=conversation_id, type="message", data=message_event_data(message, username=username)
    )
    Message.objects.filter(id=message.id).update(seq=event.seq)
    run_id = None
    if agent:
        run_id = str(
            run_enqueue(
                conversation_id=conversation_id, trigger_message_id=message.id, requested_by_id=author_id, agent=agent
            )
        )
    return SendResult(str(message.id), event.seq, False, run_id, [event])
