"""Sending a message: check, then do (Zulip's check_* / do_*).

`message_check` decides everything that can be decided before writing — the author's role, the
key, the text, and whether this author already stored this key (an idempotent resend) — in one
lookup, and returns either that earlier result or a `MessageDraft`. `message_write` stores a draft
in one transaction and does not check again. The socket puts its rate limit between the two, so a
refused or repeated message never spends quota.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery

from agents.models import AgentRun
from agents.services import run_enqueue
from chat.errors import ServiceError
from chat.models import AuthorKind, Conversation, Message
from chat.services.events import append_event
from chat.wire.frames import rfc3339


@dataclass(frozen=True)
class SendResult:
    message_id: str
    seq: int
    duplicate: bool
    run_id: str | None


@dataclass(frozen=True)
class MessageDraft:
    """A message that passed every check and is not stored yet."""

    conversation_id: str
    author_id: int
    username: str
    client_msg_id: str
    text: str
    agent: str  # the conversation's agent ("" for none): a run is queued with the message

    @property
    def starts_run(self) -> bool:
        return bool(self.agent)


def message_event_data(message: Message, *, username: str) -> dict[str, object]:
    return {
        "id": str(message.id),
        "client_msg_id": message.client_msg_id,
        "author": {"id": message.author_id, "username": username, "kind": message.author_kind},
        "text": message.text,
        "created_at": rfc3339(message.created_at),
        "run_id": str(message.run_id) if message.run_id else None,
    }


def message_check(
    *,
    conversation_id: str,
    author_id: int,
    username: str,
    can_write: bool,
    agent: str,
    client_msg_id: str,
    text: str,
) -> SendResult | MessageDraft:
    """The earlier result of this author's `client_msg_id` (a resend), or the draft to write.

    The caller has resolved access with `conversation_for_member`: `can_write` and `agent` come
    from it. Refusals raise ServiceError before anything is read."""
    if not can_write:
        raise ServiceError("forbidden", "your role in this conversation does not allow sending")
    if not client_msg_id or len(client_msg_id) > 64:
        raise ServiceError("bad_request", "client_msg_id must be 1-64 characters")
    text = text.strip()
    if not text:
        raise ServiceError("bad_request", "text must not be empty")
    if len(text) > settings.CHAT_MAX_TEXT_CHARS:
        raise ServiceError("too_large", f"text is longer than {settings.CHAT_MAX_TEXT_CHARS} characters")
    existing = message_existing(conversation_id, author_id, client_msg_id)
    if existing is not None:
        return existing
    return MessageDraft(conversation_id, author_id, username, client_msg_id, text, agent)


def message_existing(conversation_id: str, author_id: int, client_msg_id: str) -> SendResult | None:
    """The message this author already stored under `client_msg_id` (keys are per author: another
    member's message with the same key is not this one), with the run it queued: one query."""
    run = AgentRun.objects.filter(trigger_message_id=OuterRef("id")).values("id")[:1]
    row = (
        Message.objects.filter(conversation_id=conversation_id, author_id=author_id, client_msg_id=client_msg_id)
        .annotate(trigger_run=Subquery(run))
        .values("id", "seq", "trigger_run")
        .first()
    )
    if row is None:
        return None
    run_id = row["trigger_run"]
    return SendResult(str(row["id"]), int(row["seq"] or 0), True, str(run_id) if run_id else None)


def message_write(*, draft: MessageDraft) -> SendResult:
    """Store a checked message and its `message` event in one transaction, with a queued run if
    the conversation has an agent. Its event is published and the runners woken once it commits."""
    try:
        with transaction.atomic():
            return _store(draft)
    except IntegrityError:
        # Two sockets of one user raced with the same key: the unique constraint decided, and the
        # loser answers like any other repeat.
        existing = message_existing(draft.conversation_id, draft.author_id, draft.client_msg_id)
        if existing is not None:
            return existing
        raise


def message_send(
    *,
    conversation_id: str,
    author_id: int,
    username: str,
    client_msg_id: str,
    text: str,
    can_write: bool,
    agent: str | None = None,
) -> SendResult:
    """Check, then write: for callers with no quota to spend in between (REST, the admin, tests).
    `agent` is the conversation's, read here when the caller has not resolved it."""
    if agent is None:
        agent = Conversation.objects.filter(id=conversation_id).values_list("agent", flat=True).get()
    checked = message_check(
        conversation_id=conversation_id,
        author_id=author_id,
        username=username,
        can_write=can_write,
        agent=agent,
        client_msg_id=client_msg_id,
        text=text,
    )
    return checked if isinstance(checked, SendResult) else message_write(draft=checked)


def _store(draft: MessageDraft) -> SendResult:
    message = Message.objects.create(
        conversation_id=draft.conversation_id,
        author_id=draft.author_id,
        author_kind=AuthorKind.USER,
        client_msg_id=draft.client_msg_id,
        text=draft.text,
    )
    event = append_event(
        conversation_id=draft.conversation_id,
        type="message",
        data=message_event_data(message, username=draft.username),
    )
    Message.objects.filter(id=message.id).update(seq=event.seq)
    run_id = None
    if draft.agent:
        run_id = str(
            run_enqueue(
                conversation_id=draft.conversation_id,
                trigger_message_id=message.id,
                requested_by_id=draft.author_id,
                agent=draft.agent,
            )
        )
    return SendResult(str(message.id), event.seq, False, run_id)
