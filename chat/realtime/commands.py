"""The chat.v1 commands (docs/protocol.md §3). Each handler authorises the command on its own: the
connection being authenticated says who is asking, never what they may touch. Handlers see the
socket only through `Session`; what a command changes, a service changes (and publishes)."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from agents import approvals as run_approvals
from agents import selectors as run_selectors
from agents import services as run_services
from agents.tools import shared_registry as tool_registry
from chat import selectors
from chat.errors import NotFound, ProtocolError
from chat.history import history_page
from chat.infra.message_buffer import buffered_or_none, user_stream
from chat.realtime import ephemeral
from chat.realtime.reconnection_handler import resume_from
from chat.realtime.registry import NOT_FOUND, access_for, call, command
from chat.realtime.session import Session
from chat.services import conversations as conversation_services
from chat.services import messages as message_services
from chat.wire import commands as wire
from chat.wire.frames import notification_frame, rfc3339
from monitoring.metrics import metrics


@command("ping", wire.Ping)
async def ping(session: Session, fields: wire.Ping) -> dict[str, Any]:
    return {"server_time": rfc3339(timezone.now())}


@command("subscribe", wire.Subscribe)
async def subscribe(session: Session, fields: wire.Subscribe) -> dict[str, Any]:
    since_seq = fields.since_seq
    access = await access_for(session, fields.conversation)
    conversation_id = access.conversation_id
    max_subscriptions = session.limits.max_subscriptions
    if conversation_id not in session.subscriptions and len(session.subscriptions) >= max_subscriptions:
        raise ProtocolError("bad_request", f"at most {max_subscriptions} subscriptions per socket on this tier")
    already = conversation_id in session.subscriptions
    # Join the process hub first, then read the head: an event committed in between is both
    # at or below the head we read and delivered live, and the outbox drops the repeat.
    await session.hub.join(conversation_id, session.outbox)
    session.subscriptions.add(conversation_id)
    try:
        await access_for(session, conversation_id)  # a removal published before the join missed this socket
        state, active = await database_sync_to_async(_state_and_runs)(conversation_id, session.identity.user_id)
    except NotFound as exc:  # removed between the two reads
        await session.drop_subscription(conversation_id)
        raise NOT_FOUND from exc
    except BaseException:
        if not already:  # no half-registered subscription that silently receives nothing
            await session.drop_subscription(conversation_id)
        raise
    head_seq = state.head_seq
    session.hub.observe_head(conversation_id, head_seq)
    session.subscription_access[conversation_id] = access
    result: dict[str, Any] = {
        "conversation": conversation_id,
        "head_seq": head_seq,
        "active_runs": active,
        "last_read_seq": state.last_read_seq,
    }
    resume = resume_from(head_seq=head_seq, since_seq=since_seq, replay_limit=session.limits.replay_limit)
    if resume.recovered is not None:
        result["recovered"] = resume.recovered
    if state.draft and state.draft_updated_at is not None:
        result["draft"] = {"text": state.draft, "updated_at": rfc3339(state.draft_updated_at)}
    if not (already and since_seq is None):
        # (A repeated subscribe without since_seq keeps the stream where it is: restarting it at
        # the head read above could resend an event the socket already got.)
        session.after_reply(
            lambda: session.outbox.start_stream(conversation_id, from_seq=resume.start_seq, up_to_seq=head_seq)
        )
    await ephemeral.presence_join(session, conversation_id)  # best effort: never raises
    if active:
        # Co-viewing: who is watching the live run(s) now, this socket's user included.
        watchers = await ephemeral.watchers(conversation_id, session.user_public())
        for run in active:
            run["watchers"] = watchers
    return result


def _state_and_runs(conversation_id: str, user_id: int) -> tuple[selectors.SubscriptionState, list[dict[str, Any]]]:
    state = selectors.subscription_state(conversation_id=conversation_id, user_id=user_id)
    return state, run_selectors.active_runs(conversation_id=conversation_id)


@command("unsubscribe", wire.Unsubscribe)
async def unsubscribe(session: Session, fields: wire.Unsubscribe) -> dict[str, Any]:
    conversation = fields.conversation
    if conversation in session.subscriptions:
        # The socket's own state: leaving works even after the membership was revoked.
        await session.drop_subscription(conversation)
        return {"conversation": conversation}
    access = await access_for(session, conversation)
    await session.drop_subscription(access.conversation_id)
    return {"conversation": access.conversation_id}


@command("send", wire.Send)
async def send(session: Session, fields: wire.Send) -> dict[str, Any]:
    client_msg_id, text = fields.client_msg_id, fields.text
    if len(text) > session.limits.max_text_chars:  # the tier's bound; the schema cannot know it
        raise ProtocolError("too_large", f"text must be at most {session.limits.max_text_chars} characters")
    access = await access_for(session, fields.conversation)
    # Check, then do: a refused message or a resend of a stored one (answered from the store:
    # idempotency must keep working for a client that was rate limited) never takes quota.
    checked = await call(
        message_services.message_check,
        conversation_id=access.conversation_id,
        author_id=session.identity.user_id,
        username=session.identity.username,
        can_write=access.can_write,
        agent=access.agent,
        agent_mode=access.agent_mode,
        client_msg_id=client_msg_id,
        text=text,
        traceparent=fields.traceparent,
    )
    if isinstance(checked, message_services.MessageDraft):
        await session.throttle.admit_send(starts_run=checked.starts_run)
        result = await call(message_services.message_write, draft=checked)
    else:
        result = checked
    reply: dict[str, Any] = {
        "conversation": access.conversation_id,
        "message": {"id": result.message_id, "seq": result.seq},
        "duplicate": result.duplicate,
    }
    if result.run_id:
        reply["run_id"] = result.run_id
    return reply


@command("history", wire.History)
async def history(session: Session, fields: wire.History) -> dict[str, Any]:
    access = await access_for(session, fields.conversation)
    page = await database_sync_to_async(history_page)(
        conversation_id=access.conversation_id,
        before_seq=fields.before_seq,
        limit=min(fields.page_size, settings.CHAT_HISTORY_MAX),
        unit=fields.unit,
        retention_days=session.limits.history_retention_days,
    )
    reply: dict[str, Any] = {
        "conversation": access.conversation_id,
        "events": [e.frame() for e in page.events],
        "has_more": page.has_more,
    }
    if page.next_before_seq is not None:
        reply["next_before_seq"] = page.next_before_seq
    return reply


@command("cancel", wire.Cancel)
async def cancel(session: Session, fields: wire.Cancel) -> dict[str, Any]:
    try:
        run, access = await database_sync_to_async(run_selectors.run_for_member)(
            user_id=session.identity.user_id, run_id=fields.run_id
        )
    except NotFound as exc:
        raise ProtocolError("not_found", "run not found") from exc
    if not access.can_write:
        raise ProtocolError("forbidden", "your role in this conversation does not allow cancelling runs")
    result = await call(
        run_services.run_request_cancel,
        run_id=str(run.id),
        by_user_id=session.identity.user_id,
        by_username=session.identity.username,
        role=access.role,  # the starter or an owner: anyone else is forbidden
    )
    return {"run_id": result.run_id, "status": result.status}


@command("approve", wire.Approve)
async def approve(session: Session, fields: wire.Approve) -> dict[str, Any]:
    """§11: a member decides on a tool call that waits for approval. The service decides under the
    conversation's lock (role, a decision already made); edited arguments are checked here against
    the tool's schema, after the role, so a viewer hears `forbidden` whatever they sent."""
    try:
        approval, access = await database_sync_to_async(run_selectors.approval_for_member)(
            user_id=session.identity.user_id, run_id=fields.run_id, call_id=fields.call_id
        )
    except NotFound as exc:
        raise ProtocolError("not_found", "approval not found") from exc
    if not approval.allows(access.role):
        raise ProtocolError("forbidden", f"only a conversation {approval.approver_role} may decide on this call")
    if fields.arguments is not None:
        if fields.decision != "approve":
            raise ProtocolError("bad_request", "arguments: only go with decision 'approve'")
        problem = tool_registry().problem(approval.tool, fields.arguments)
        if problem is not None:
            raise ProtocolError("bad_request", f"arguments: {problem.removeprefix('invalid arguments: ')}")
    try:
        await call(
            run_approvals.approval_decide,
            run_id=approval.run_id,
            call_id=approval.call_id,
            user_id=session.identity.user_id,
            username=session.identity.username,
            decision=fields.decision,
            arguments=fields.arguments,
        )
    except NotFound as exc:  # removed from the conversation meanwhile
        raise ProtocolError("not_found", "approval not found") from exc
    return {"run_id": approval.run_id, "call_id": approval.call_id, "decision": fields.decision}


@command("read", wire.Read)
async def read(session: Session, fields: wire.Read) -> None:
    seq = fields.seq
    access = await access_for(session, fields.conversation)
    moved = await call(
        conversation_services.read_marker_move,
        conversation_id=access.conversation_id,
        user_id=session.identity.user_id,
        seq=seq,
    )
    if moved is not None:
        # To every socket on the conversation but this one: the other members' and this user's own
        # other tabs and devices alike, which move their marker with it (docs/protocol.md §10).
        await ephemeral.broadcast(
            session, access.conversation_id, "read", {"user": session.user_public(), "seq": moved}
        )
    return None


@command("draft", wire.Draft)
async def draft(session: Session, fields: wire.Draft) -> dict[str, Any]:
    access = await access_for(session, fields.conversation)
    if not access.can_write:
        raise ProtocolError("forbidden", "viewers cannot write drafts")
    updated_at = await call(
        conversation_services.draft_save,
        conversation_id=access.conversation_id,
        user_id=session.identity.user_id,
        text=fields.text,
        max_chars=session.limits.max_text_chars,
        origin_session=session.session_id,
    )
    return {"conversation": access.conversation_id, "updated_at": rfc3339(updated_at)}


@command("typing", wire.Typing)
async def typing(session: Session, fields: wire.Typing) -> None:
    state = fields.state
    conversation = fields.conversation
    access = session.degraded_access({"conversation": conversation}) or await access_for(session, conversation)
    if not access.can_write:
        raise ProtocolError("forbidden", "viewers cannot type")
    await ephemeral.broadcast(
        session,
        access.conversation_id,
        "typing",
        {"user": session.user_public(), "state": state, "expires_ms": settings.CHAT_TYPING_TTL_MS},
    )
    return None


@command("presence", wire.Presence)
async def presence(session: Session, fields: wire.Presence) -> dict[str, Any]:
    access = await access_for(session, fields.conversation)
    return {"conversation": access.conversation_id, "members": await ephemeral.members(access.conversation_id)}


# One sync_notifications reply is followed by at most this many frames; its `has_more` says when
# more exist, and the client asks again from `until_seq` (docs/protocol.md §3).
SYNC_NOTIFICATIONS_PAGE = 500


@command("sync_notifications", wire.SyncNotifications)
async def sync_notifications(session: Session, fields: wire.SyncNotifications) -> dict[str, Any]:
    since_seq = fields.since_seq
    user_id = session.identity.user_id
    head = await database_sync_to_async(selectors.notification_head)(user_id=user_id)
    if head > since_seq:
        max_age_s = session.limits.buffer_max_age_s  # the user's buffer follows their tier
        buffered = await buffered_or_none(user_stream(user_id), since_seq, head, max_age_s=max_age_s)
    else:
        buffered = []
    if buffered is not None:
        metrics.inc("notification_replays", source="buffer")
        rows = buffered[:SYNC_NOTIFICATIONS_PAGE]
    else:
        metrics.inc("notification_replays", source="log")
        rows = await database_sync_to_async(_notification_frames)(user_id, since_seq)
    until = rows[-1][0] if rows else since_seq

    def push() -> None:
        for _, frame in rows:
            session.outbox.send_frame(frame)

    session.after_reply(push)
    return {"head_seq": head, "until_seq": until, "has_more": len(rows) == SYNC_NOTIFICATIONS_PAGE and until < head}


def _notification_frames(user_id: int, since_seq: int) -> list[tuple[int, str]]:
    return [
        (n.seq, notification_frame(n.seq, n.created_at, n.data))
        for n in selectors.notifications_after(user_id=user_id, after_seq=since_seq, limit=SYNC_NOTIFICATIONS_PAGE)
    ]


@command("auth", wire.Auth)
async def auth(session: Session, fields: wire.Auth) -> dict[str, Any]:
    return await session.refresh_auth(fields.token)
