"""(extension) AG-UI (docs/protocol.md "AG-UI"): any AG-UI frontend drives our agents over HTTP.

    POST /api/ag-ui/               a RunAgentInput; answers Server-Sent Events of the run it starts
    GET  /api/runs/{id}/ag-ui/     a finished run as AG-UI events, JSON

The POST is the socket's `send` over HTTP: the same membership check, the same `message_check`, the
same per-user `messages` + `agent_runs` windows, the same `message_write`; so the message and its run
are stored and broadcast as if sent from a socket, and members watching the conversation see it live.
Its stream is that run's durable events (chat/realtime/run_stream.py) translated by agents/agui.py.
Refusals before the stream starts are `{"error": {"code", "message"}}` with 400/403/404/409/413/429;
a conversation or run the caller may not see is a 404, whether or not it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from ag_ui.core import RunAgentInput
from ag_ui.encoder import EventEncoder
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponseBase, StreamingHttpResponse
from rest_framework.exceptions import ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import agui
from agents import approvals as run_approvals
from agents import selectors as run_selectors
from agents.models import TERMINAL_STATUSES, RunStatus
from agents.tools import shared_registry as tool_registry
from chat import api_agui_schema, selectors
from chat.errors import NotFound, ServiceError
from chat.realtime.broadcast_manager import get_hub
from chat.realtime.run_stream import AccessEnded, run_frames
from chat.realtime.throttle import CommandThrottle, RateLimited
from chat.services import messages as message_services
from chat.tiers import limits_for

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413}
_encoder = EventEncoder()


def _error(code: str, message: str, *, status: int | None = None, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"code": code, "message": message}}
    return Response(body, status=status or ERROR_STATUS.get(code, 400), headers=headers)


def _uid(request: Request) -> int:
    return int(request.user.pk)  # type: ignore[arg-type]  # every view here requires authentication


def _input(request: Request) -> RunAgentInput | Response:
    try:
        raw = request.data
    except ParseError as exc:
        return _error("bad_request", f"the body must be a JSON RunAgentInput: {exc.detail}")
    except RequestDataTooBig:
        return _error("too_large", f"the body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
    try:
        return RunAgentInput.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error("bad_request", f"not a RunAgentInput: {where}: {first['msg']} ({exc.error_count()} problem(s))")


@api_agui_schema.agui_run
class AguiRun(APIView):
    """`POST /api/ag-ui/`: send the input's last (user) message to the conversation `threadId` and
    stream the run it starts. A retried request with the same last message id starts nothing new: it
    streams the run that message started (its events from the start)."""

    def post(self, request: Request) -> HttpResponseBase:
        body = _input(request)
        if isinstance(body, Response):
            return body
        if body.resume:
            return _resume(request, body)
        try:
            client_msg_id, text = agui.user_prompt(body)
        except agui.InputProblem as exc:
            return _error("bad_request", str(exc))
        limits = limits_for(request.user.tier)  # type: ignore[union-attr]
        if len(text) > limits.max_text_chars:
            return _error("too_large", f"text must be at most {limits.max_text_chars} characters")
        try:
            access = selectors.conversation_for_member(user_id=_uid(request), conversation_id=body.thread_id)
        except NotFound:
            return _error("not_found", "conversation not found")
        try:
            checked = message_services.message_check(
                conversation_id=access.conversation_id,
                author_id=_uid(request),
                username=request.user.get_username(),
                can_write=access.can_write,
                agent=access.agent,
                agent_mode=access.agent_mode,
                client_msg_id=client_msg_id,
                text=text,
            )
            if isinstance(checked, message_services.MessageDraft):
                if not checked.starts_run:
                    # Refused before anything is stored: an AG-UI run must be a run.
                    mode = access.agent_mode
                    return _error("conflict", f"this message starts no agent run here (agent_mode {mode!r})")
                # The socket's own windows, per user and shared with the user's sockets; both or neither.
                async_to_sync(CommandThrottle(_uid(request), limits).admit_send)(starts_run=True)
                result = message_services.message_write(draft=checked)
            else:
                result = checked
        except RateLimited as exc:
            return _rate_limited(exc)
        except ServiceError as exc:
            return _error(exc.code, exc.message)
        if result.run_id is None:
            return _error("conflict", "this message was already sent and started no agent run")
        # A retry of a message whose run already got past an approval replays that approval as history:
        # only a run that is waiting now ends its stream with the interrupt.
        interrupts = not result.duplicate or _waiting(request, result.run_id)
        return _streamed(request, access.conversation_id, result.run_id, after_seq=result.seq, interrupts=interrupts)


def _rate_limited(exc: RateLimited) -> Response:
    wait_s = max(1, -(-(exc.retry_after_ms or 0) // 1000))
    return Response({"error": exc.as_dict()}, status=429, headers={"Retry-After": str(wait_s)})


def _resume(request: Request, body: RunAgentInput) -> HttpResponseBase:
    """A `resume` answering the interrupt a stream ended with: the socket's `approve` (docs/protocol.md §11)
    with the same checks and window, then the run's stream from its approval_resolved on."""
    try:
        answer = agui.resume_answer(body)
    except agui.InputProblem as exc:
        return _error("bad_request", str(exc))
    try:
        approval, access = run_selectors.approval_for_member(
            user_id=_uid(request), run_id=answer.run_id, call_id=answer.call_id
        )
    except NotFound:
        return _error("not_found", "interrupt not found")
    if access.conversation_id != body.thread_id:  # an interrupt of another thread is no interrupt of this one
        return _error("not_found", "interrupt not found")
    if not approval.allows(access.role):
        return _error("forbidden", f"only a conversation {approval.approver_role} may decide on this call")
    if answer.arguments is not None:
        problem = tool_registry().problem(approval.tool, answer.arguments)
        if problem is not None:
            return _error("bad_request", f"arguments: {problem.removeprefix('invalid arguments: ')}")
    limits = limits_for(request.user.tier)  # type: ignore[union-attr]
    try:
        async_to_sync(CommandThrottle(_uid(request), limits).admit)("approve")
        decided = run_approvals.approval_decide(
            run_id=approval.run_id,
            call_id=approval.call_id,
            user_id=_uid(request),
            username=request.user.get_username(),
            decision=answer.decision,
            arguments=answer.arguments,
        )
    except RateLimited as exc:
        return _rate_limited(exc)
    except ServiceError as exc:
        return _error(exc.code, exc.message)
    except NotFound:  # removed from the conversation meanwhile
        return _error("not_found", "interrupt not found")
    return _streamed(request, access.conversation_id, approval.run_id, after_seq=decided.event.seq - 1, interrupts=True)


def _streamed(
    request: Request, conversation_id: str, run_id: str, *, after_seq: int, interrupts: bool
) -> StreamingHttpResponse:
    stream = _sse(
        user_id=_uid(request),
        conversation_id=conversation_id,
        run_id=run_id,
        after_seq=after_seq,
        interrupts=interrupts,
    )
    response = StreamingHttpResponse(stream, content_type=_encoder.get_content_type())
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _waiting(request: Request, run_id: str) -> bool:
    run, _ = run_selectors.run_for_member(user_id=_uid(request), run_id=run_id)
    return run.status == RunStatus.WAITING_APPROVAL


async def _sse(
    *, user_id: int, conversation_id: str, run_id: str, after_seq: int, interrupts: bool
) -> AsyncIterator[str]:
    """The run's AG-UI events as SSE `data:` lines until RUN_FINISHED or RUN_ERROR; an SSE comment
    every AGUI_KEEPALIVE_S of silence. An async iterator: under ASGI Django would buffer a sync one."""
    translator = agui.RunTranslator(thread_id=conversation_id, run_id=run_id, live=interrupts)
    deadline = asyncio.get_running_loop().time() + settings.AGUI_STREAM_MAX_S
    frames = run_frames(
        hub=get_hub(),
        user_id=user_id,
        conversation_id=conversation_id,
        run_id=run_id,
        after_seq=after_seq,
        idle_s=settings.AGUI_KEEPALIVE_S,
    )
    async with contextlib.aclosing(frames):
        try:
            async for frame in frames:
                if frame is None:
                    yield ": keep-alive\n\n"
                else:
                    for event in translator.feed(frame):
                        yield _encoder.encode(event)
                if translator.done:
                    return
                if asyncio.get_running_loop().time() > deadline:
                    message = f"the stream was open {settings.AGUI_STREAM_MAX_S:g} s; the run goes on"
                    yield _encoder.encode(agui.stream_error(message=message, code="stream_timeout"))
                    return
        except AccessEnded:  # as the socket answers a removed member: nothing more of this conversation
            yield _encoder.encode(agui.stream_error(message="conversation not found", code="not_found"))
        except Exception:  # the buffer and the log both failed: the client must not wait on a dead stream
            message = f"the event stream broke; the run goes on: GET /api/runs/{run_id}/ag-ui/ once it ends"
            yield _encoder.encode(agui.stream_error(message=message, code="unavailable"))


@api_agui_schema.run_agui_export
class RunAguiExport(APIView):
    """`GET /api/runs/{id}/ag-ui/`: a finished run of a conversation the caller is a member of, as the
    AG-UI events its stream carried, `{"thread_id", "run_id", "events": [...]}`; a run still going
    is a 409 (stream it instead)."""

    def get(self, request: Request, run_id: str) -> Response:
        try:
            run, access = run_selectors.run_for_member(user_id=_uid(request), run_id=run_id)
        except NotFound:
            return _error("not_found", "run not found")
        if run.status not in TERMINAL_STATUSES:
            return _error("conflict", f"the run has not ended (status {run.status!r})")
        stored = run_selectors.run_events(conversation_id=access.conversation_id, run_id=str(run.id))
        frames = [event.frame() for event in stored]
        events = agui.translate(thread_id=access.conversation_id, run_id=str(run.id), frames=frames)
        body: dict[str, Any] = {
            "thread_id": access.conversation_id,
            "run_id": str(run.id),
            "events": [event.model_dump(mode="json", by_alias=True) for event in events],
        }
        return Response(body)
