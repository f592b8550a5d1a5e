"""Sending a message: check, then do (Zulip's check_* / do_*).

`message_check` decides everything that can be decided before writing — the author's role, the
key, the text, whether this author already stored this key (an idempotent resend), who the text
mentions and whether it starts an agent run (docs/protocol.md §8) — in one lookup, and returns
either that earlier result or a `MessageDraft`. `message_write` stores a draft in one transaction
and does not check again. The socket puts its rate limit between the two, so a refused or repeated
message never spends quota, and only a message that starts a run spends agent-run quota.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db import IntegrityError, transaction
from django.db.models import Exists, JSONField, OuterRef, Subquery
from django.db.models.functions import JSONObject, Lower

from agents.models import AgentRun
from agents.services import run_enqueue
from chat.errors import ServiceError
from chat.models import AgentMode, AuthorKind, Conversation, ConversationMember, Message
from chat.services.events import append_event
from chat.services.notifications import notify_mentions
from chat.wire.commands import TRACEPARENT_PATTERN
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
    agent: str  # the conversation's agent ("" for none)
    # Whether the message starts a run of `agent` (docs/protocol.md §8): decided by the check, so the
    # socket spends agent-run quota only for a message that really starts one.
    starts_run: bool = False
    mentions: tuple[int, ...] = ()
    # The sender's W3C trace context (`send`'s optional traceparent): the run's trace continues it.
    traceparent: str = ""


# `@name`: the `@` starts the text or follows a character that is not a word character (so an e-mail
# address is no mention); the name is a run of Django's username characters, trailing `. @ + -` dropped.
MENTION = re.compile(r"(?<!\w)@([\w.@+-]+)")
MENTION_TRAILING = ".@+-"
# Distinct names looked up per message: a text of a thousand @names costs no more than this.
MAX_MENTION_NAMES = 50
TRACEPARENT = re.compile(TRACEPARENT_PATTERN)
# What always mentions the conversation's agent, besides the agent's own name.
AGENT_MENTION = "assistant"


def mentioned_names(text: str) -> list[str]:
    """The distinct `@names` of a text, in order of first appearance, at most MAX_MENTION_NAMES."""
    names: list[str] = []
    for match in MENTION.finditer(text):
        name = match.group(1).rstrip(MENTION_TRAILING)
        if name and len(name) <= 150 and name not in names:
            names.append(name)
            if len(names) == MAX_MENTION_NAMES:
                break
    return names


def message_event_data(message: Message, *, username: str, mentions: tuple[int, ...] = ()) -> dict[str, object]:
    return {
        "id": str(message.id),
        "client_msg_id": message.client_msg_id,
        "author": {"id": message.author_id, "username": username, "kind": message.author_kind},
        "text": message.text,
        "created_at": rfc3339(message.created_at),
        "run_id": str(message.run_id) if message.run_id else None,
        "mentions": list(mentions),
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
    agent_mode: str = AgentMode.AUTO,
    traceparent: str | None = None,
) -> SendResult | MessageDraft:
    """The earlier result of this author's `client_msg_id` (a resend), or the draft to write.

    The caller has resolved access with `conversation_for_member`: `can_write`, `agent` and
    `agent_mode` come from it. Refusals raise ServiceError before anything is read; then one query
    answers the resend question, resolves the mentions and, in `auto` mode, whether anyone else is
    a member."""
    if not can_write:
        raise ServiceError("forbidden", "your role in this conversation does not allow sending")
    if not client_msg_id or len(client_msg_id) > 64:
        raise ServiceError("bad_request", "client_msg_id must be 1-64 characters")
    text = text.strip()
    if not text:
        raise ServiceError("bad_request", "text must not be empty")
    if len(text) > settings.CHAT_MAX_TEXT_CHARS:
        raise ServiceError("too_large", f"text is longer than {settings.CHAT_MAX_TEXT_CHARS} characters")
    if traceparent and not TRACEPARENT.match(traceparent):
        raise ServiceError("bad_request", "traceparent must be a W3C traceparent (00-<trace id>-<span id>-<flags>)")
    names = mentioned_names(text)
    agent_names = {AGENT_MENTION, agent.casefold()} if agent else set()
    member_names = [n for n in names if n.casefold() not in agent_names]
    group_rule = bool(agent) and agent_mode == AgentMode.AUTO
    row = _send_lookup(conversation_id, author_id, client_msg_id, member_names, others=group_rule)
    existing = row["existing"]
    if existing is not None:
        run_id = existing["run"]
        return SendResult(str(existing["id"]), int(existing["seq"] or 0), True, str(run_id) if run_id else None)
    agent_mentioned = len(member_names) < len(names)
    if not agent or agent_mode == AgentMode.OFF:
        starts_run = False
    elif agent_mode == AgentMode.ALWAYS or (group_rule and not row["others"]):
        starts_run = True
    else:  # `mention`, and `auto` once the conversation has more than one member
        starts_run = agent_mentioned
    mentions = _resolve(member_names, row["named"] or [])
    return MessageDraft(
        conversation_id, author_id, username, client_msg_id, text, agent, starts_run, mentions, traceparent or ""
    )


def _send_lookup(
    conversation_id: str, author_id: int, client_msg_id: str, names: list[str], *, others: bool
) -> dict[str, Any]:
    """One query on the conversation's row: this author's message stored under `client_msg_id`
    (with the run it queued), the members whose username matches one of `names` ignoring case, and
    whether anyone but the author is a member. Only what the caller needs is asked for."""
    run = AgentRun.objects.filter(trigger_message_id=OuterRef("id")).values("id")[:1]
    prior = (
        Message.objects.filter(conversation_id=OuterRef("id"), author_id=author_id, client_msg_id=client_msg_id)
        .annotate(trigger_run=Subquery(run))
        .values(found=JSONObject(id="id", seq="seq", run="trigger_run"))[:1]
    )
    fields: dict[str, Any] = {"existing": Subquery(prior, output_field=JSONField())}
    if names:
        matched = (
            ConversationMember.objects.filter(conversation_id=OuterRef("id"))
            .annotate(name=Lower("user__username"))
            .filter(name__in=[n.casefold() for n in names])
            .values(member=JSONObject(id="user_id", username="user__username"))
        )
        fields["named"] = ArraySubquery(matched)
    if others:
        fields["others"] = Exists(
            ConversationMember.objects.filter(conversation_id=OuterRef("id")).exclude(user_id=author_id)
        )
    row = Conversation.objects.filter(id=conversation_id).annotate(**fields).values(*fields).get()
    return {"existing": row["existing"], "named": row.get("named"), "others": row.get("others", False)}


def _resolve(names: list[str], members: list[Any]) -> tuple[int, ...]:
    """Member ids for `names`, in order, each once: an exact username first, else the one member
    whose username matches ignoring case (two such members and no exact match: nobody)."""
    rows = [json.loads(m) if isinstance(m, str) else m for m in members]
    exact = {r["username"]: int(r["id"]) for r in rows}
    folded: dict[str, list[int]] = {}
    for r in rows:
        folded.setdefault(r["username"].casefold(), []).append(int(r["id"]))
    ids: list[int] = []
    for name in names:
        found = exact.get(name)
        if found is None:
            candidates = folded.get(name.casefold(), [])
            found = candidates[0] if len(candidates) == 1 else None
        if found is not None and found not in ids:
            ids.append(found)
    return tuple(ids)


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
    agent_mode: str | None = None,
    traceparent: str | None = None,
) -> SendResult:
    """Check, then write: for callers with no quota to spend in between (REST, the admin, tests).
    `agent` and `agent_mode` are the conversation's, read here when the caller has not resolved them."""
    if agent is None or agent_mode is None:
        stored_agent, stored_mode = (
            Conversation.objects.filter(id=conversation_id).values_list("agent", "agent_mode").get()
        )
        agent = stored_agent if agent is None else agent
        agent_mode = stored_mode if agent_mode is None else agent_mode
    checked = message_check(
        conversation_id=conversation_id,
        author_id=author_id,
        username=username,
        can_write=can_write,
        agent=agent,
        agent_mode=agent_mode,
        client_msg_id=client_msg_id,
        text=text,
        traceparent=traceparent,
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
        data=message_event_data(message, username=draft.username, mentions=draft.mentions),
    )
    Message.objects.filter(id=message.id).update(seq=event.seq)
    if draft.mentions:  # every member named is notified (chat/services/notifications.py: never the author)
        notify_mentions(
            conversation_id=str(draft.conversation_id),
            seq=event.seq,
            author_id=draft.author_id,
            author_username=draft.username,
            mentioned_ids=draft.mentions,
            text=draft.text,
        )
    run_id = None
    if draft.starts_run:
        run_id = str(
            run_enqueue(
                conversation_id=draft.conversation_id,
                trigger_message_id=message.id,
                requested_by_id=draft.author_id,
                agent=draft.agent,
                traceparent=draft.traceparent,
            )
        )
    return SendResult(str(message.id), event.seq, False, run_id)
