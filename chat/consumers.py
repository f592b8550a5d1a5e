"""The /ws/chat/ consumer: a thin shell around the protocol (docs/protocol.md).

It parses and answers frames; what a command may do is decided in `chat.realtime.commands`
and the services. Deliveries from other processes never pass through `dispatch()` (which costs
a thread hop per call): the process hub puts pre-encoded frames straight into this socket's
`Outbox`, whose single writer task is the only thing that sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from agents.runner import get_supervisor
from chat.errors import AuthFailed, CircuitOpen, CommandError, ProtocolError
from chat.infra import handshake_guard, rate_limiter
from chat.infra.breakers import CircuitBreaker, breaker
from chat.realtime import compression_handler, ephemeral, telemetry, user_messages
from chat.realtime.auth import Identity, identity_from_token, revoked_close_code
from chat.realtime.broadcast_manager import Hub, get_hub
from chat.realtime.degraded import (
    DEPENDENCY_ERRORS,
    database_breaker,
    database_failure,
    degraded_access,
)
from chat.realtime.handlers import HANDLERS
from chat.realtime.outbox import Outbox
from chat.realtime.protocol import PROTOCOL, encode, parse_frame, reply_error, reply_ok
from chat.realtime.throttle import BadFrames, CommandThrottle, abuse_verdict
from chat.selectors import Access
from chat.services.notification_config import vapid_public_key
from chat.tiers import TierLimits, limits_for
from chat.wire.frames import rfc3339
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)


class ChatConsumer(AsyncWebsocketConsumer):
    # Fan-out does not use the consumer's own channel: one hub channel serves the whole process.
    channel_layer_alias = "__no_per_socket_channel__"

    identity: Identity
    outbox: Outbox
    hub: Hub
    limits: TierLimits
    throttle: CommandThrottle

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.session_id = uuid.uuid4().hex
        self.subscriptions: set[str] = set()
        # The access each subscription was granted with, used only while PostgreSQL is unreachable
        # (see degraded_access). Revocation drops the subscription, and with it this entry.
        self.subscription_access: dict[str, Access] = {}
        self.authenticated = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._after_reply: list[Callable[[], Any]] = []
        self._bad_frames = BadFrames()
        self._expiry_task: asyncio.Task[None] | None = None
        self._closing = False
        self._slot_held = False
        self._unauthenticated_from: str | None = None  # counted in handshake_guard.unauthenticated
        self.wire_protocol = compression_handler.negotiate(self.scope.get("subprotocols", []))
        if self.wire_protocol is None:
            await self.close()  # refuse the handshake: we only speak chat.v1 (plain, or chat.v1.deflate)
            return
        await self.accept(self.wire_protocol)
        metrics.inc("connections_opened")
        if not self.scope.get("origin_ok", True):
            await self._close(4403)
            return
        if self.scope.get("auth_unavailable"):
            await self._close(1013)  # the database could not say who this is: try again later, not 4401
            return
        if self.scope.get("auth_error"):
            await self._close(4401)
            return
        identity = self.scope.get("identity")
        if identity is not None:
            await self._authenticated(identity)
        else:
            # Waiting for an `auth` frame: counted per client address (too many: 4429 at once).
            self._unauthenticated_from = handshake_guard.admit_unauthenticated(self.scope)
            if self._unauthenticated_from is None:
                await self._close(4429)
                return
            self._tasks.append(asyncio.create_task(self._auth_deadline()))

    def _stop_waiting_for_auth(self) -> None:
        handshake_guard.unauthenticated.remove(self._unauthenticated_from)
        self._unauthenticated_from = None

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(settings.CHAT_AUTH_TIMEOUT_S)
        if not self.authenticated:
            await self._close(4401)

    async def _authenticated(self, identity: Identity) -> None:
        self.identity = identity
        self.limits = limits_for(identity.tier)
        # The per-tier connection limit holds across processes (chat/infra/rate_limiter.py ConnectionSlots).
        if not await rate_limiter.get_slots().acquire(identity.user_id, self.session_id, self.limits.connections):
            metrics.inc("connections_refused", reason="tier_limit")
            await self._close(4429)
            return
        self._slot_held = True
        try:
            await self._start_session(identity)
        except BaseException:
            # Nothing may keep the slot alive (the heartbeat refreshes it) once this socket failed.
            for task in self._tasks:
                task.cancel()
            await rate_limiter.get_slots().release(identity.user_id, self.session_id)
            self._slot_held = False
            raise

    async def _start_session(self, identity: Identity) -> None:
        self.throttle = CommandThrottle(identity.user_id, self.limits)
        self.authenticated = True
        self.hub = get_hub()
        self.outbox = Outbox(
            hub=self.hub,
            send_text=lambda text: self.send(text_data=text),
            send_bytes=lambda data: self.send(bytes_data=data),
            compress_min_bytes=compression_handler.min_bytes(self.wire_protocol),  # None: all text (chat.v1)
            maxsize=settings.CHAT_OUTBOUND_QUEUE,
            user_id=identity.user_id,
            session_id=self.session_id,
            on_overflow=lambda: self._spawn(self._close(4408)),
            on_user_message=self._on_user_message,
        )
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        self._schedule_expiry(identity.expires_at)
        if settings.AGENT_RUNNER == "inprocess":
            get_supervisor()  # embedded mode: runs queued before a restart start without a new prompt
        self.outbox.send_frame(encode({"type": "welcome", "data": self._welcome()}))  # before any user event
        await self.hub.join_user(identity.user_id, self.outbox)
        # The writer starts once the user's group is joined: a client that has read welcome can count
        # on a logout or notification published after it reaching this socket.
        writer = self.outbox.serve(closed=lambda: self._closing, on_failure=lambda: self._close(1011))
        self._tasks.append(asyncio.create_task(writer))
        # A logout, revocation or deactivation published between the handshake's check and the join
        # above missed this socket: look once more now that it would be heard.
        code = await database_sync_to_async(revoked_close_code)(identity)
        if code is not None:
            await self._close(code)

    def _welcome(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "protocol": PROTOCOL,
            "user": self.user_public() | {"tier": self.identity.tier},
            "server_time": rfc3339(timezone.now()),
            "heartbeat_ms": settings.CHAT_HEARTBEAT_MS,
            "typing_ttl_ms": settings.CHAT_TYPING_TTL_MS,
            "limits": self.limits.as_welcome(),
        } | ({"vapid_public_key": key} if (key := vapid_public_key()) else {})  # Web Push, when configured

    def user_public(self) -> dict[str, Any]:
        return {"id": self.identity.user_id, "username": self.identity.username}

    async def _heartbeat_loop(self) -> None:
        interval = ephemeral.PRESENCE_TTL_S / 3
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await ephemeral.presence_refresh(self)
            with contextlib.suppress(Exception):
                # With the limit: a socket let in while Redis was unreachable that does not fit now is closed.
                slots = rate_limiter.get_slots()
                if not await slots.refresh(self.identity.user_id, self.session_id, self.limits.connections):
                    self._slot_held = False
                    metrics.inc("connections_refused", reason="tier_limit_rechecked")
                    return await self._close(4429)

    def _schedule_expiry(self, expires_at: int | None) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if expires_at is None:
            return

        async def expire() -> None:
            await asyncio.sleep(max(0.0, expires_at - time.time()))
            await self._close(4401)

        self._expiry_task = asyncio.create_task(expire())

    def _on_user_message(self, message: Mapping[str, Any]) -> None:
        user_messages.handle(self, message, spawn=self._spawn, close=self._close)

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _close(self, code: int) -> None:
        if self._closing:
            return
        self._closing = True
        metrics.inc("disconnects", code=str(code))
        with contextlib.suppress(Exception):
            await self.close(code)

    # --- inbound frames ---------------------------------------------------------------------------
    @telemetry.instrumented  # chat_commands_total / chat_command_duration_seconds
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closing:
            return
        command_id: str | None = None
        try:
            if self.authenticated and text_data is not None and len(text_data) > self.limits.max_frame_bytes:
                # The tier's frame limit (parse_frame enforces the server-wide cap).
                raise ProtocolError("too_large", f"frame exceeds {self.limits.max_frame_bytes} bytes for this tier")
            command = parse_frame(text_data, bytes_data)
            command_id = command.id
            telemetry.note_command(command.type)
            if not self.authenticated:
                if command.type != "auth":
                    raise ProtocolError("bad_request", "authenticate first: send an auth frame")
                result = await HANDLERS["auth"](self, command.fields) or {}  # the schema checks the token
                if command_id is not None:  # after `welcome`, which the outbox already holds
                    self.outbox.send_frame(reply_ok(command_id, result))
                return
            handler = HANDLERS.get(command.type)
            if handler is None:
                raise ProtocolError("unknown_command", f"unknown command {command.type!r}")
            # send is admitted in its handler, once it knows whether it starts a run. A typing over
            # its limit is dropped, not refused: answered like a sent one, and nobody is told.
            if command.type != "send" and not await self.throttle.admit(command.type):
                if command_id is not None:
                    self.outbox.send_frame(reply_ok(command_id, {}))
                return
            database = self._database_breaker(command.type, command.fields)
            if database is not None:
                database.before_call()  # open circuit: answer `unavailable` now instead of waiting on the pool
            try:
                outcome = await handler(self, command.fields)
            except BaseException as exc:
                if database is not None:
                    if database_failure(exc):
                        database.record_failure(exc)
                    else:
                        database.release()  # no verdict on the database (refused before reaching it, or else)
                raise
            if database is not None:
                database.record_success()
            if command_id is not None:
                self.outbox.send_frame(reply_ok(command_id, outcome or {}))
            self._run_after_reply()
        except CircuitOpen as exc:
            self._after_reply.clear()
            metrics.inc("command_errors", code="unavailable")
            await self._send_error(
                command_id,
                ProtocolError("unavailable", f"{exc.name} is unavailable; retry", retry_after_ms=exc.retry_after_ms),
            )
        except ProtocolError as exc:
            self._after_reply.clear()
            if self._closing:
                return
            if isinstance(exc, CommandError):
                command_id = exc.command_id
            metrics.inc("command_errors", code=exc.code)
            await self._send_error(command_id, exc)
            await self._count_bad_frame(exc)
        except DEPENDENCY_ERRORS as exc:
            # A dependency (Redis, PostgreSQL) is down or slow: say so, so the client retries, and
            # count it into that dependency's circuit breaker.
            self._after_reply.clear()
            # (Counted already: postgres failures around the handler, Redis ones by redis_call.)
            failed = breaker("postgres" if database_failure(exc) else "redis")
            metrics.inc("command_errors", code="unavailable")
            logger.warning("command failed: %s unavailable (%s)", failed.name, type(exc).__name__)
            retry = max(1000, failed.retry_after_ms())
            await self._send_error(
                command_id, ProtocolError("unavailable", f"{failed.name} is unavailable; retry", retry)
            )
        except Exception:
            self._after_reply.clear()
            logger.exception("command failed")
            await self._send_error(command_id, ProtocolError("internal", "internal error"))

    def _database_breaker(self, command_type: str, fields: dict[str, Any]) -> CircuitBreaker | None:
        return database_breaker(command_type, fields, self.subscriptions, self.subscription_access)

    def degraded_access(self, fields: dict[str, Any]) -> Access | None:
        return degraded_access(fields, self.subscription_access)

    async def _send_error(self, command_id: str | None, error: ProtocolError) -> None:
        telemetry.note_outcome(error.code)
        if self._closing:
            return  # (e.g. closed 1013 while authenticating): nothing more goes out
        frame = reply_error(command_id, error)
        if self.authenticated:
            self.outbox.send_frame(frame)
        else:  # no outbox before authentication: the only writer is this frame's handling
            await self.send(text_data=frame)

    def after_reply(self, fn: Callable[[], Any]) -> None:
        """Run `fn` right after this command's reply is queued (e.g. a subscribe's replay)."""
        self._after_reply.append(fn)

    def _run_after_reply(self) -> None:
        pending, self._after_reply = self._after_reply, []
        for fn in pending:
            fn()

    async def _count_bad_frame(self, exc: ProtocolError) -> None:
        reason = abuse_verdict(exc, self.throttle if self.authenticated else None, self._bad_frames)
        if reason is not None:
            metrics.inc("connections_closed_abuse", reason=reason)
            await self._close(4400)

    async def refresh_auth(self, token: str) -> dict[str, Any]:
        # `token` passed the `auth` schema (chat/wire/commands.py), which also refuses NUL and lone
        # surrogates: PyJWT cannot UTF-8-encode "\ud800".
        try:
            identity = await database_sync_to_async(identity_from_token)(token)
        except DEPENDENCY_ERRORS:
            if not self.authenticated:
                await self._close(1013)  # cannot tell who this is right now: try again later
            raise
        except AuthFailed:
            if not self.authenticated:
                await self._close(4401)
            raise ProtocolError("bad_request", "invalid or expired token") from None
        if self.authenticated:
            if identity.user_id != self.identity.user_id:
                raise ProtocolError("forbidden", "the token belongs to another user")
            self.identity = identity
            if identity.tier != self.limits.name:  # the user changed tier: the new limits apply now
                self.limits = limits_for(identity.tier)
                self.throttle = CommandThrottle(identity.user_id, self.limits)
            self._schedule_expiry(identity.expires_at)
        else:
            for task in self._tasks:
                task.cancel()
            self._tasks.clear()
            self._stop_waiting_for_auth()
            await self._authenticated(identity)
            if not self.authenticated:  # refused (4429): no reply on a closed socket
                raise ProtocolError("rate_limited", "too many connections for this user's tier")
        expires = datetime.fromtimestamp(identity.expires_at or 0, UTC)
        return {"expires_at": rfc3339(expires)}

    async def drop_subscription(self, conversation_id: str) -> None:
        if conversation_id not in self.subscriptions:
            return
        self.subscriptions.discard(conversation_id)
        self.subscription_access.pop(conversation_id, None)
        self.outbox.stop_stream(conversation_id)
        await self.hub.leave(conversation_id, self.outbox)
        with contextlib.suppress(Exception):
            await ephemeral.presence_leave(self, conversation_id)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self._stop_waiting_for_auth()
        for task in self._tasks:
            task.cancel()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if self.authenticated:
            for conversation_id in list(self.subscriptions):
                await self.drop_subscription(conversation_id)
            await self.hub.leave_user(self.identity.user_id, self.outbox)
        if self._slot_held:
            await rate_limiter.get_slots().release(self.identity.user_id, self.session_id)
        metrics.inc("connections_closed")
        await super().websocket_disconnect(message)
