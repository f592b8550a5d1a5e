"""Builders over the real services (no mocks of our own code).

Each builder has a sync form (`*_sync`, for sync tests and code already on a database thread) and
an async form of the same name without the suffix, for coroutine tests."""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async

from chat.selectors import conversation_for_member
from chat.services.conversations import conversation_create, conversation_member_add
from chat.services.messages import SendResult, message_send


def conversation_sync(
    owner: Any,
    *,
    agent: str = "assistant",
    members: tuple[tuple[Any, str], ...] = (),
    title: str = "t",
    workspace_id: Any = None,
    agent_mode: str = "auto",
) -> str:
    """A conversation `owner` creates (with `agent`, "" for people only, answering by `agent_mode`),
    with `members` added by the owner as (user, role); returns its id."""
    created = conversation_create(
        creator=owner, title=title, agent=agent, workspace_id=workspace_id, agent_mode=agent_mode
    )
    conv = str(created.conversation.id)
    for user, role in members:
        conversation_member_add(conversation_id=conv, actor_id=owner.id, username=user.username, role=role)
    return conv


async def conversation(
    owner: Any,
    *,
    agent: str = "assistant",
    members: tuple[tuple[Any, str], ...] = (),
    title: str = "t",
    workspace_id: Any = None,
    agent_mode: str = "auto",
) -> str:
    return await database_sync_to_async(conversation_sync)(
        owner, agent=agent, members=members, title=title, workspace_id=workspace_id, agent_mode=agent_mode
    )


def message_sync(
    conversation_id: str, author: Any, text: str = "hello", *, client_msg_id: str | None = None
) -> SendResult:
    """A message `author` sends to the conversation, the way a socket's `send` does: the author's
    access decides (a non-member gets NotFound, a viewer ServiceError("forbidden")), then the send
    service stores it, its `message` event and, in an agent conversation, a queued run.

    Returns the service's SendResult: `message_id`, `seq` (of its event), `run_id`, `duplicate`."""
    access = conversation_for_member(user_id=author.id, conversation_id=conversation_id)
    return message_send(
        conversation_id=access.conversation_id,
        author_id=author.id,
        username=author.username,
        client_msg_id=client_msg_id if client_msg_id is not None else uuid.uuid4().hex,
        text=text,
        can_write=access.can_write,
    )


async def message(
    conversation_id: str, author: Any, text: str = "hello", *, client_msg_id: str | None = None
) -> SendResult:
    return await database_sync_to_async(message_sync)(conversation_id, author, text, client_msg_id=client_msg_id)
