"""The chat.v1 commands (PROTOCOL §3). Each handler authorises the command on its own: the
connection being authenticated says who is asking, never what they may touch."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings

from agents import runner
from agents import selectors as run_selectors
from agents import services as run_services
from chat import selectors
from chat.errors import NotFound, ProtocolError, ServiceError
from chat.infra.bus import publish_events
from chat.infra.message_buffer import buffered_or_none, user_stream
from chat.realtime import ephemeral
from chat.realtime.protocol import opt_int, req_int, req_str
from chat.selectors import Access
from chat.services import conversations as conversation_services
from chat.services import messages as message_services
from chat.services.events import rfc3339
from monitoring.metrics import metrics

if TYPE_CHECKING:
    from chat.consumers import ChatConsumer

logger = logging.getLogger(__name__)

Handler = Callable[["ChatConsumer", dict[str, Any]], Awaitable[dict[str, Any] | None]]
HANDLERS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


NOT_FOUND = ProtocolError("not_found", "conversation not found")


async def access_for(consumer: ChatConsumer, fields: dict[str, Any]) -> Access:
    """The membership check every conversation command starts with."""
    if "conversation" not in fields:
        raise ProtocolError("bad_request", "conversation is required")
    try:
        return await database_sync_to_async(selectors.conversation_for_member)(
            user_id=consumer.identity.user_id, conversation_id=fields["conversation"]
        )
    except NotFound as exc:
        raise NOT_FOUND from exc


def service_error(exc: ServiceError) -> ProtocolError:
    return ProtocolError(exc.code, exc.message)


@command("ping")
async def ping(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    return {"server_time": rfc3339_now()}


def rfc3339_now() -> str:
    from django.utils import timezone

    return rfc3339(timezone.now())


@command("subscribe")
async def subscribe(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    since_seq = opt_int(fields, "since_seq", minimum=0)
    access = await access_for(consumer, fields)
    conversation_id = access.conversation_id
    max_subscriptions = consumer.limits.max_subscriptions
    if conversation_id not in consumer.subscriptions and len(consumer.subscriptions) >= max_subscriptions:
        raise ProtocolError("bad_request", f"at most {max_subscriptions} subscriptions per socket on this tier")
    already = conversation_id in consumer.subscriptions
    # Join the process hub first, then read the head: an event committed in between is both
    # at or below the head we read and delivered live, and the outbox drops the repeat.
    await consumer.hub.join(conversation_id, consumer.outbox)
    consumer.subscriptions.add(conversation_id)
    try:
        await access_for(consumer, fields)  # a removal published before the join missed this socket
        head_seq, active = await database_sync_to_async(_head_and_runs)(conversation_id)
    except BaseException:
        if not already:  # no half-registered subscription that silently receives nothing
            await consumer.drop_subscription(conversation_id)
        raise
    consumer.hub.observe_head(conversation_id, head_seq)
    consumer.subscription_access[conversation_id] = access
    result: dict[str, Any] = {"conversation": conversation_id, "head_seq": head_seq, "active_runs": active}
    start = head_seq
    if since_seq is not None:
        recovered = head_seq - since_seq <= consumer.limits.replay_limit
        result["recovered"] = recovered
        if recovered:
            start = min(since_seq, head_seq)
    if not (already and since_seq is None):
        # (A repeated subscribe without since_seq keeps the stream where it is: restarting it at
        # the head read above could resend an event the socket already got.)
        consumer.after_reply(lambda: consumer.outbox.start_stream(conversation_id, from_seq=start, up_to_seq=head_seq))
    try:
        await ephemeral.presence_join(consumer, conversation_id)
    except Exception:  # presence is best-effort; the subscription itself stands
        logger.warning("presence join failed for %s", conversation_id, exc_info=True)
    return result


def _head_and_runs(conversation_id: str) -> tuple[int, list[dict[str, Any]]]:
    from chat.models import Conversation

    head = Conversation.objects.filter(id=conversation_id).values_list("last_seq", flat=True).get()
    return head, run_selectors.active_runs(conversation_id=conversation_id)


@command("unsubscribe")
async def unsubscribe(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    conversation = fields.get("conversation")
    if isinstance(conversation, str) and conversation in consumer.subscriptions:
        # The socket's own state: leaving works even after the membership was revoked.
        await consumer.drop_subscription(conversation)
        return {"conversation": conversation}
    access = await access_for(consumer, fields)
    await consumer.drop_subscription(access.conversation_id)
    return {"conversation": access.conversation_id}


@command("send")
async def send(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    client_msg_id = req_str(fields, "client_msg_id", max_len=64)
    text = req_str(fields, "text", max_len=consumer.limits.max_text_chars)
    access = await access_for(consumer, fields)
    try:  # refused for its role or content before it can take quota
        message_services.message_check(can_write=access.can_write, client_msg_id=client_msg_id, text=text)
    except ServiceError as exc:
        raise service_error(exc) from exc
    # A resend of a stored message is answered from the store and costs no quota (idempotency
    # must keep working for a client that was rate limited); only a new message is admitted.
    result = await database_sync_to_async(message_services.message_existing)(
        access.conversation_id, consumer.identity.user_id, client_msg_id
    )
    if result is None:
        await consumer.throttle.admit_send(starts_run=bool(access.agent))
        result = await _store_message(consumer, access, client_msg_id, text)
    await publish_events(result.events)
    if result.run_id and not result.duplicate:
        await runner.wake()
    reply: dict[str, Any] = {
        "conversation": access.conversation_id,
        "message": {"id": result.message_id, "seq": result.seq},
        "duplicate": result.duplicate,
    }
    if result.run_id:
        reply["run_id"] = result.run_id
    return reply


async def _store_message(
    consumer: ChatConsumer, access: Access, client_msg_id: str, text: str
) -> message_services.SendResult:
    try:
        return await database_sync_to_async(message_services.message_send)(
            conversation_id=access.conversation_id,
            author_id=consumer.identity.user_id,
            username=consumer.identity.username,
            client_msg_id=client_msg_id,
            text=text,
            can_write=access.can_write,
        )
    except ServiceError as exc:
        raise service_error(exc) from exc


@command("history")
async def history(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    before_seq = opt_int(fields, "before_seq", minimum=1)
    limit = opt_int(fields, "limit", minimum=1, maximum=settings.CHAT_HISTORY_MAX) or 50
    access = await access_for(consumer, fields)
    events, has_more = await database_sync_to_async(selectors.events_before)(
        conversation_id=access.conversation_id,
        before_seq=before_seq,
        limit=limit,
        retention_days=consumer.limits.history_retention_days,
    )
    return {"conversation": access.conversation_id, "events": [e.frame() for e in events], "has_more": has_more}


@command("cancel")
async def cancel(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    if "run_id" not in fields:
        raise ProtocolError("bad_request", "run_id is required")
    try:
        run, access = await database_sync_to_async(run_selectors.run_for_member)(
            user_id=consumer.identity.user_id, run_id=fields["run_id"]
        )
    except NotFound as exc:
        raise ProtocolError("not_found", "run not found") from exc
    if not access.can_write:
        raise ProtocolError("forbidden", "your role in this conversation does not allow cancelling runs")
    try:
        result = await database_sync_to_async(run_services.run_request_cancel)(
            run_id=str(run.id), by_user_id=consumer.identity.user_id, by_username=consumer.identity.username
        )
    except ServiceError as exc:
        raise service_error(exc) from exc
    await publish_events(result.events)
    if result.status == "cancelling":
        await runner.cancel(result.run_id)
    else:
        await runner.wake()  # the next queued run of this conversation may start now
    return {"run_id": result.run_id, "status": result.status}


@command("read")
async def read(consumer: ChatConsumer, fields: dict[str, Any]) -> None:
    seq = req_int(fields, "seq", minimum=0)
    access = await access_for(consumer, fields)
    stored = await database_sync_to_async(conversation_services.read_marker_set)(
        conversation_id=access.conversation_id, user_id=consumer.identity.user_id, seq=seq
    )
    await ephemeral.broadcast(consumer, access.conversation_id, "read", {"user": consumer.user_public(), "seq": stored})
    return None


@command("typing")
async def typing(consumer: ChatConsumer, fields: dict[str, Any]) -> None:
    state = fields.get("state")
    if state not in ("start", "stop"):
        raise ProtocolError("bad_request", "state must be 'start' or 'stop'")
    access = consumer.degraded_access(fields) or await access_for(consumer, fields)
    if not access.can_write:
        raise ProtocolError("forbidden", "viewers cannot type")
    await ephemeral.broadcast(
        consumer,
        access.conversation_id,
        "typing",
        {"user": consumer.user_public(), "state": state, "expires_ms": settings.CHAT_TYPING_TTL_MS},
    )
    return None


@command("presence")
async def presence(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    access = await access_for(consumer, fields)
    return {"conversation": access.conversation_id, "members": await ephemeral.members(access.conversation_id)}


@command("sync_notifications")
async def sync_notifications(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    since_seq = req_int(fields, "since_seq", minimum=0)
    user_id = consumer.identity.user_id
    head = await database_sync_to_async(_notification_head)(user_id)
    if head > since_seq:
        max_age_s = consumer.limits.buffer_max_age_s  # the user's buffer follows their tier
        buffered = await buffered_or_none(user_stream(user_id), since_seq, head, max_age_s=max_age_s)
    else:
        buffered = []
    if buffered is not None:
        metrics.inc("notification_replays", source="buffer")
        rows = [frame for _, frame in buffered]
    else:
        metrics.inc("notification_replays", source="log")
        rows = await database_sync_to_async(_notification_frames)(user_id, since_seq)

    def push() -> None:
        for frame in rows:
            consumer.outbox.send_frame(frame)

    consumer.after_reply(push)
    return {"head_seq": head}


def _notification_head(user_id: int) -> int:
    from chat.models import User

    return int(User.objects.filter(id=user_id).values_list("notification_seq", flat=True).get())


def _notification_frames(user_id: int, since_seq: int) -> list[str]:
    from chat.services.notifications import notification_frame

    return [notification_frame(n) for n in selectors.notifications_after(user_id=user_id, after_seq=since_seq)]


@command("auth")
async def auth(consumer: ChatConsumer, fields: dict[str, Any]) -> dict[str, Any]:
    token = req_str(fields, "token", max_len=4096)
    return await consumer.refresh_auth(token)
