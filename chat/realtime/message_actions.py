"""(extension) Socket commands on one message or run after it was sent (docs/protocol.md §3): `edit`,
`delete`, `feedback`, `regenerate`. Registered with `@command` like the commands of
chat.realtime.commands; chat.realtime.handlers gathers both.

Each starts with the membership check (`access_for`): a conversation the caller cannot see is
`not_found` before the message or run id is looked at, and an id that is not one of that
conversation's answers `not_found` too (never whether it exists elsewhere)."""

from __future__ import annotations

from typing import Any

from agents import regenerate as run_regenerate
from chat.errors import NotFound, ProtocolError
from chat.realtime.registry import access_for, call, command
from chat.realtime.session import Session
from chat.services import message_actions
from chat.wire import commands as wire
from chat.wire.frames import rfc3339

MESSAGE_NOT_FOUND = ProtocolError("not_found", "message not found")
RUN_NOT_FOUND = ProtocolError("not_found", "run not found")


async def _on_message(fn: Any, **kwargs: Any) -> Any:
    try:
        return await call(fn, **kwargs)
    except NotFound as exc:
        raise MESSAGE_NOT_FOUND from exc


@command("edit", wire.Edit)
async def edit(session: Session, fields: wire.Edit) -> dict[str, Any]:
    access = await access_for(session, fields.conversation)
    result = await _on_message(
        message_actions.message_edit,
        conversation_id=access.conversation_id,
        message_id=fields.message_id,
        user_id=session.identity.user_id,
        username=session.identity.username,
        role=access.role,
        text=fields.text,
        max_chars=session.limits.max_text_chars,
    )
    return {"message_id": result.message_id, "seq": result.seq, "edited_at": rfc3339(result.edited_at)}


@command("delete", wire.Delete)
async def delete(session: Session, fields: wire.Delete) -> dict[str, Any]:
    access = await access_for(session, fields.conversation)
    result = await _on_message(
        message_actions.message_delete,
        conversation_id=access.conversation_id,
        message_id=fields.message_id,
        user_id=session.identity.user_id,
        username=session.identity.username,
        role=access.role,
    )
    return {"message_id": result.message_id, "seq": result.seq}


@command("feedback", wire.Feedback)
async def feedback(session: Session, fields: wire.Feedback) -> dict[str, Any]:
    """Viewers may rate too: they read the answers. The rating reaches nobody else's socket."""
    access = await access_for(session, fields.conversation)
    result = await _on_message(
        message_actions.feedback_set,
        conversation_id=access.conversation_id,
        message_id=fields.message_id,
        user_id=session.identity.user_id,
        rating=fields.rating,
        comment=fields.comment,
    )
    return {"message_id": result.message_id, "rating": result.rating}


@command("regenerate", wire.Regenerate)
async def regenerate(session: Session, fields: wire.Regenerate) -> dict[str, Any]:
    """A new run on an ended run's question, spending agent-run quota like a `send` that starts one."""
    access = await access_for(session, fields.conversation)
    if not access.can_write:
        raise ProtocolError("forbidden", "your role in this conversation does not allow starting runs")
    try:
        await call(run_regenerate.regenerate_check, conversation_id=access.conversation_id, run_id=fields.run_id)
    except NotFound as exc:
        raise RUN_NOT_FOUND from exc
    await session.throttle.admit_run()
    try:
        run_id = await call(
            run_regenerate.run_regenerate,
            conversation_id=access.conversation_id,
            run_id=fields.run_id,
            user_id=session.identity.user_id,
        )
    except NotFound as exc:
        raise RUN_NOT_FOUND from exc
    return {"run_id": str(run_id)}
