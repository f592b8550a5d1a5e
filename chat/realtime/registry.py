"""How a chat.v1 command handler is declared: `@command` registers it under its name with its wire
schema, `access_for` is the membership check every conversation command starts with, and `call` runs
a service through the publish road. Its own module so that each module of handlers
(chat.realtime.commands, chat.realtime.message_actions) imports it, and none imports another;
chat.realtime.handlers gathers them all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from channels.db import database_sync_to_async

from chat import selectors
from chat.errors import NotFound, ProtocolError, ServiceError
from chat.publishing import run_service
from chat.realtime.protocol import command_fields
from chat.realtime.session import Session
from chat.selectors import Access
from chat.wire import commands as wire
from chat.wire.common import CommandFields

Result = dict[str, Any] | None
Handler = Callable[[Session, dict[str, Any]], Awaitable[Result]]
HANDLERS: dict[str, Handler] = {}
F = TypeVar("F", bound=CommandFields)


def command(name: str, schema: type[F]) -> Callable[[Callable[[Session, F], Awaitable[Result]]], Handler]:
    """Register a handler for command `name`. The consumer hands it the frame's raw fields; they
    are decoded through the command's wire schema here, so a handler only ever sees typed,
    validated fields and the schema in chat/wire/commands.py is what the server enforces."""
    if wire.COMMANDS.get(name) is not schema:
        raise TypeError(f"{name!r} is declared with {wire.COMMANDS.get(name)!r} in chat.wire.commands")

    def register(fn: Callable[[Session, F], Awaitable[Result]]) -> Handler:
        async def handler(session: Session, fields: dict[str, Any]) -> Result:
            return await fn(session, cast(F, command_fields(name, fields)))

        handler.__name__ = handler.__qualname__ = fn.__name__
        handler.__doc__ = fn.__doc__
        HANDLERS[name] = handler
        return handler

    return register


NOT_FOUND = ProtocolError("not_found", "conversation not found")


async def access_for(session: Session, conversation_id: str) -> Access:
    """The membership check every conversation command starts with."""
    try:
        return await database_sync_to_async(selectors.conversation_for_member)(
            user_id=session.identity.user_id, conversation_id=conversation_id
        )
    except NotFound as exc:
        raise NOT_FOUND from exc


async def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """A service through the publish road, its refusals as the protocol's errors."""
    try:
        return await run_service(fn, **kwargs)
    except ServiceError as exc:
        raise ProtocolError(exc.code, exc.message) from exc
