"""Async-friendly builders over the real services (no mocks of our own code)."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from chat.services.conversations import conversation_create, conversation_member_add


async def conversation(owner: Any, *, agent: str = "assistant", members: tuple[tuple[Any, str], ...] = ()) -> str:
    created = await database_sync_to_async(conversation_create)(creator=owner, title="t", agent=agent)
    conv = str(created.conversation.id)
    for user, role in members:
        await database_sync_to_async(conversation_member_add)(
            conversation_id=conv, actor_id=owner.id, username=user.username, role=role
        )
    return conv
