"""AG-UI (docs/protocol.md "AG-UI"): an AG-UI client written from the spec drives the agent through
`POST /api/ag-ui/` on Django's ASGI app in-process (httpx.ASGITransport), on the real PostgreSQL and
Redis, with the run executed by the in-process runner (the offline agent and the real calculator).

Every SSE `data:` line is parsed into the `ag-ui-protocol` package's event models (a line that is
not a valid AG-UI event fails the test), and the sequence is checked against the spec's rules:
RUN_STARTED first, exactly one RUN_FINISHED or RUN_ERROR last, text and tool-call events opened,
filled and closed in order under one id, steps paired. Meanwhile a member's socket sees the same
run as chat.v1 events, and the export of the finished run is what was streamed."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from ag_ui.core import BaseEvent, Event, EventType, RunAgentInput, UserMessage
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.test import Client
from django.utils.crypto import get_random_string
from pydantic import TypeAdapter

from agents import agui
from chat.models import Message
from chat.realtime.broadcast_manager import get_hub
from chat.services.conversations import conversation_member_remove
from chatsite.asgi import application
from tests.support import factories
from tests.support.waiting import eventually
from tests.support.ws import access_token, subscribed_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

EVENT: TypeAdapter[Any] = TypeAdapter(Event)
PROMPT = "what is 17 * 23?"


def run_input(thread_id: str, text: str = PROMPT, *, message_id: str | None = None) -> dict[str, Any]:
    """A RunAgentInput as an AG-UI client sends it (camelCase on the wire)."""
    body = RunAgentInput(
        thread_id=thread_id,
        run_id=uuid.uuid4().hex,
        messages=[UserMessage(id=message_id or uuid.uuid4().hex, content=text)],
        state={},
        tools=[],
        context=[],
    )
    return body.model_dump(mode="json", by_alias=True)


def parse_sse(body: str) -> list[BaseEvent]:
    """The spec's SSE framing: events separated by a blank line, each one `data:` line of JSON (and
    comments starting with `:`, which carry nothing). Every event must validate."""
    events: list[BaseEvent] = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        assert len(data) + sum(line.startswith(":") for line in lines) == len(lines), block
        if data:
            events.append(EVENT.validate_json("\n".join(data)))
    assert body.endswith("\n\n")
    return events


def check_sequence(events: list[BaseEvent]) -> None:
    """The AG-UI event ordering rules this endpoint promises."""
    kinds = [e.type for e in events]
    assert kinds[0] == EventType.RUN_STARTED
    assert kinds[-1] in (EventType.RUN_FINISHED, EventType.RUN_ERROR)
    assert sum(k in (EventType.RUN_FINISHED, EventType.RUN_ERROR) for k in kinds) == 1
    assert kinds.count(EventType.RUN_STARTED) == 1
    open_text: str | None = None
    open_step: str | None = None
    calls: dict[str, str] = {}  # tool call id -> its state
    for event in events[1:-1]:
        kind = event.type
        if kind == EventType.TEXT_MESSAGE_START:
            assert open_text is None
            open_text = event.message_id  # type: ignore[attr-defined]
        elif kind in (EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END):
            assert open_text == event.message_id  # type: ignore[attr-defined]
            if kind == EventType.TEXT_MESSAGE_END:
                open_text = None
        elif kind == EventType.STEP_STARTED:
            assert open_step is None
            open_step = event.step_name  # type: ignore[attr-defined]
        elif kind == EventType.STEP_FINISHED:
            assert open_step == event.step_name  # type: ignore[attr-defined]
            open_step = None
        elif kind == EventType.TOOL_CALL_START:
            assert event.tool_call_id not in calls  # type: ignore[attr-defined]
            calls[event.tool_call_id] = "started"  # type: ignore[attr-defined]
        elif kind == EventType.TOOL_CALL_ARGS:
            assert calls[event.tool_call_id] == "started"  # type: ignore[attr-defined]
        elif kind == EventType.TOOL_CALL_END:
            assert calls[event.tool_call_id] == "started"  # type: ignore[attr-defined]
            calls[event.tool_call_id] = "ended"  # type: ignore[attr-defined]
        elif kind == EventType.TOOL_CALL_RESULT:
            assert calls[event.tool_call_id] == "ended"  # type: ignore[attr-defined]
            calls[event.tool_call_id] = "answered"  # type: ignore[attr-defined]
    assert open_text is None
    assert open_step is None


async def client(user: Any | None) -> httpx.AsyncClient:
    """An HTTP client of Django's ASGI app in-process, with `user`'s Bearer token (None: anonymous)."""
    token = await database_sync_to_async(access_token)(user) if user is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://testserver", headers=headers, timeout=30
    )


def dumped(events: list[BaseEvent]) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json", by_alias=True) for e in events]


async def test_a_prompt_streams_a_valid_agui_run_that_members_see_live_and_the_export_repeats(
    make_user: Any,
) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"),), agent_mode="always")
    async with subscribed_client(bob, conv) as watcher:
        async with await client(alice) as http:
            response = await http.post("/api/ag-ui/", json=run_input(conv))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text)
        check_sequence(events)
        started, finished = events[0], events[-1]
        run_id = started.run_id  # type: ignore[attr-defined]
        assert (started.thread_id, started.protocol_version) == (conv, "1.0")  # type: ignore[attr-defined]
        assert finished.type == EventType.RUN_FINISHED
        assert finished.outcome.type == "success"  # type: ignore[attr-defined]
        kinds = [e.type for e in events]
        # The calculator's call, in order: start, its arguments, end, then its result.
        tool_events = [e for e in events if e.type.startswith("TOOL_CALL")]
        assert [e.type for e in tool_events] == [
            EventType.TOOL_CALL_START,
            EventType.TOOL_CALL_ARGS,
            EventType.TOOL_CALL_END,
            EventType.TOOL_CALL_RESULT,
        ]
        assert tool_events[0].tool_call_name == "calculator"  # type: ignore[attr-defined]
        assert json.loads(tool_events[1].delta) == {"expression": "17 * 23"}  # type: ignore[attr-defined]
        assert json.loads(tool_events[3].content)["value"] == 391  # type: ignore[attr-defined]
        assert kinds.index(EventType.STEP_STARTED) < kinds.index(EventType.TOOL_CALL_START)
        answer = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)  # type: ignore[attr-defined]
        assert answer == "17 * 23 = 391"
        assert kinds.index(EventType.TOOL_CALL_RESULT) < kinds.index(EventType.TEXT_MESSAGE_START)

        # The member's socket saw the same run: the message as alice's, then the run's five critical
        # events, which translate to exactly what was streamed.
        completed = await watcher.seen_or_until(
            lambda f: f.get("type") == "agent_completed" and f["data"]["run_id"] == run_id
        )
        frames = watcher.events(conv)
        sent = next(f for f in frames if f["type"] == "message")
        assert (sent["data"]["author"]["id"], sent["data"]["text"]) == (alice.id, PROMPT)
        run_frames = [f for f in frames if f["data"].get("run_id") == run_id]
        assert [f["type"] for f in run_frames if f["type"] != "agent_delta"] == [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_thinking",
            "agent_completed",
        ]
        assert completed["data"]["text"] == answer
        assert dumped(agui.translate(thread_id=conv, run_id=run_id, frames=run_frames)) == dumped(events)

    # The export of the finished run is what was streamed, event for event.
    async with await client(alice) as http:
        exported = await http.get(f"/api/runs/{run_id}/ag-ui/")
    assert exported.status_code == 200, exported.text
    assert exported.json()["run_id"] == run_id
    assert exported.json()["thread_id"] == conv
    assert [EVENT.validate_python(e) for e in exported.json()["events"]] == events
    assert exported.json()["events"] == dumped(events)


async def test_a_retried_request_starts_nothing_twice(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    body = run_input(conv, message_id="m-1")
    async with await client(alice) as http:
        first = parse_sse((await http.post("/api/ag-ui/", json=body)).text)
        body["runId"] = uuid.uuid4().hex  # a client retrying sends a new run id, the same message
        again = parse_sse((await http.post("/api/ag-ui/", json=body)).text)
    assert again == first  # the same run, streamed again from its start
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv, author=alice).count)() == 1


async def test_refusals(make_user: Any, settings: Any) -> None:
    alice, viewer, stranger = [await database_sync_to_async(make_user)() for _ in range(3)]
    conv = await factories.conversation(alice, members=((viewer, "viewer"),), agent_mode="always")
    people_only = await factories.conversation(alice, agent="")

    async def post(user: Any, body: Any, **kw: Any) -> httpx.Response:
        async with await client(user) as http:
            if isinstance(body, str):
                return await http.post("/api/ag-ui/", content=body, headers={"Content-Type": "application/json"})
            return await http.post("/api/ag-ui/", json=body, **kw)

    def error(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["code"]

    # A conversation the caller is not in answers exactly as one that does not exist.
    hidden, missing = await post(stranger, run_input(conv)), await post(stranger, run_input(str(uuid.uuid4())))
    assert error(hidden) == error(missing) == (404, "not_found")
    assert hidden.json() == missing.json()
    assert error(await post(viewer, run_input(conv))) == (403, "forbidden")
    assert (await post(None, run_input(conv))).status_code == 401
    assert error(await post(alice, "{not json")) == (400, "bad_request")
    assert error(await post(alice, {"threadId": conv})) == (400, "bad_request")  # no runId, no messages
    no_user_last = run_input(conv)
    no_user_last["messages"].append({"id": "a1", "role": "assistant", "content": "hi"})
    assert "role 'user'" in (await post(alice, no_user_last)).json()["error"]["message"]
    assert error(await post(alice, run_input(conv, "   "))) == (400, "bad_request")
    too_long = run_input(conv, "x" * (django_settings.CHAT_TIERS["free"]["max_text_chars"] + 1))
    assert error(await post(alice, too_long)) == (413, "too_large")
    assert error(await post(alice, run_input(people_only))) == (409, "conflict")  # no agent: no run
    # Nothing refused was stored.
    in_either = Message.objects.filter(conversation_id__in=[conv, people_only])
    stored = await database_sync_to_async(in_either.count)()
    assert stored == 0

    # The export: a member's finished run only; a run still queued is a conflict.
    settings.AGENT_RUNNER = "worker"  # no runner here: the run stays queued
    queued = await factories.message(conv, alice, "what is 1 + 1?")
    async with await client(alice) as http:
        assert error(await http.get(f"/api/runs/{queued.run_id}/ag-ui/")) == (409, "conflict")
    async with await client(stranger) as http:
        hidden, missing = (
            await http.get(f"/api/runs/{queued.run_id}/ag-ui/"),
            await http.get(f"/api/runs/{uuid.uuid4()}/ag-ui/"),
        )
    assert error(hidden) == error(missing) == (404, "not_found")


async def test_the_sockets_rate_windows_apply(make_user: Any, settings: Any) -> None:
    free = settings.CHAT_TIERS["free"]
    settings.CHAT_TIERS = {**settings.CHAT_TIERS, "free": {**free, "rates": {**free["rates"], "agent_runs": [1, 60]}}}
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    async with await client(alice) as http:
        assert (await http.post("/api/ag-ui/", json=run_input(conv))).status_code == 200
        refused = await http.post("/api/ag-ui/", json=run_input(conv, "what is 2 * 2?"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["limit"] == "agent_runs"
    assert int(refused.headers["Retry-After"]) >= 1
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv, author=alice).count)() == 1


async def test_a_run_waiting_for_approval_ends_the_stream_with_an_interrupt(make_user: Any) -> None:
    """docs/protocol.md §11 as AG-UI: the stream ends with RUN_FINISHED and an interrupt outcome naming the
    tool call; the owner decides over the socket, the run goes on, and its export shows the approval as
    CUSTOM events between the same tool-call events a run without approval has."""
    alice = await database_sync_to_async(make_user)()
    carol = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    async with subscribed_client(alice, conv) as owner:
        async with await client(alice) as http:
            asked = run_input(conv, f"@assistant invite @{carol.username}")
            response = await http.post("/api/ag-ui/", json=asked)
        events = parse_sse(response.text)
        check_sequence(events)
        run_id, finished = events[0].run_id, events[-1]  # type: ignore[attr-defined]
        assert finished.type == EventType.RUN_FINISHED
        assert finished.outcome.type == "interrupt"  # type: ignore[attr-defined]
        (interrupt,) = finished.outcome.interrupts  # type: ignore[attr-defined]
        assert interrupt.reason == "tool_approval"
        assert interrupt.tool_call_id == f"{run_id}.call_1"
        assert interrupt.metadata["tool"] == "invite_member"
        assert interrupt.metadata["arguments"] == {"username": carol.username, "role": "member"}
        assert events[-2].type == EventType.CUSTOM
        assert events[-2].name == "approval_requested"  # type: ignore[attr-defined]

        decided = await owner.command(
            "approve", run_id=run_id, call_id=interrupt.metadata["call_id"], decision="approve"
        )
        assert decided["ok"] is True, decided
        await owner.seen_or_until(lambda f: f.get("type") == "agent_completed" and f["data"]["run_id"] == run_id)
    async with await client(alice) as http:
        exported = (await http.get(f"/api/runs/{run_id}/ag-ui/")).json()["events"]
    parsed = [EVENT.validate_python(e) for e in exported]
    check_sequence(parsed)
    names = [
        (e.type, getattr(e, "name", None)) for e in parsed if e.type in (EventType.CUSTOM, EventType.TOOL_CALL_START)
    ]
    assert names == [
        (EventType.CUSTOM, "approval_requested"),
        (EventType.CUSTOM, "approval_resolved"),
        (EventType.TOOL_CALL_START, None),
    ]
    assert parsed[-1].outcome.type == "success"  # type: ignore[attr-defined]
    # A retry of the request once the approval was decided replays the whole run as history, no interrupt.
    async with await client(alice) as http:
        retried = parse_sse((await http.post("/api/ag-ui/", json=asked)).text)
    assert retried == parsed


async def test_events_leave_as_they_happen_not_buffered(make_user: Any) -> None:
    """Under ASGI the response is an async iterator: Django sends each event as its own body message
    (a sync iterator would be read whole first)."""
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    token = await database_sync_to_async(access_token)(alice)
    body = json.dumps(run_input(conv)).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/ag-ui/",
        "raw_path": b"/api/ag-ui/",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    request = [{"type": "http.request", "body": body, "more_body": False}]
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await asyncio.wait_for(application(scope, receive, send), 30)
    chunks = [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]
    events = parse_sse(b"".join(chunks).decode())
    check_sequence(events)
    assert len(chunks) == len(events)  # one body message per event


async def test_a_member_removed_while_streaming_gets_nothing_more(make_user: Any, settings: Any) -> None:
    """Like a socket (§6.3): the removal's revoke ends the stream at once with RUN_ERROR not_found, and no
    event of the run reaches the removed member afterwards."""
    settings.AGENT_RUNNER = "worker"  # no runner here: the run stays queued while the stream waits for it
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"),), agent_mode="always")
    hub = get_hub()
    async with await client(bob) as http:
        streaming = asyncio.create_task(http.post("/api/ag-ui/", json=run_input(conv)))
        await eventually(lambda: bool(hub.conversations.get(conv)), what="the stream joined the conversation")
        remove = database_sync_to_async(conversation_member_remove)
        await remove(conversation_id=conv, actor_id=alice.id, user_id=bob.id)
        response = await asyncio.wait_for(streaming, 10)
    events = parse_sse(response.text)
    assert [(e.type, e.code) for e in events] == [(EventType.RUN_ERROR, "not_found")]  # type: ignore[attr-defined]
    assert hub.conversations.get(conv) is None  # the stream left the hub


async def test_a_browser_session_drives_it_too(make_user: Any) -> None:
    """The session (the chat page's own login, with its CSRF token) authenticates like a Bearer token."""
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    browser = Client()
    await database_sync_to_async(browser.force_login)(alice)
    csrf = get_random_string(32)
    cookies = {"sessionid": browser.cookies["sessionid"].value, "csrftoken": csrf}
    async with await client(None) as http:
        http.cookies.update(cookies)
        refused = await http.post("/api/ag-ui/", json=run_input(conv))  # no CSRF token: a forged request
        response = await http.post("/api/ag-ui/", json=run_input(conv), headers={"X-CSRFToken": csrf})
    assert refused.status_code == 403
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    check_sequence(events)
    assert events[-1].outcome.type == "success"  # type: ignore[attr-defined]


async def test_an_interrupt_is_answered_with_resume(make_user: Any) -> None:
    """AG-UI's own answer to an interrupt, RunAgentInput.resume, is the socket's `approve`: the same role rule,
    one decision only; the run goes on under its run id, streamed from the decision on."""
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    carol = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, members=((bob, "member"),), agent_mode="always")
    other = await factories.conversation(alice)
    async with await client(alice) as http:
        asked = parse_sse((await http.post("/api/ag-ui/", json=run_input(conv, f"invite @{carol.username}"))).text)
    run_id, (interrupt,) = asked[0].run_id, asked[-1].outcome.interrupts  # type: ignore[attr-defined]

    def answer(thread: str, interrupt_id: str, payload: Any = None, status: str = "resolved") -> dict[str, Any]:
        body = run_input(thread)
        body["messages"] = []
        body["resume"] = [{"interruptId": interrupt_id, "status": status, "payload": payload}]
        return body

    async with await client(bob) as http:  # a member, below the owner the invitation needs
        assert (await http.post("/api/ag-ui/", json=answer(conv, interrupt.id))).status_code == 403
    async with await client(alice) as http:
        assert (await http.post("/api/ag-ui/", json=answer(other, interrupt.id))).status_code == 404
        assert (await http.post("/api/ag-ui/", json=answer(conv, f"{run_id}.call_9"))).status_code == 404
        bad = await http.post("/api/ag-ui/", json=answer(conv, interrupt.id, {"decision": "maybe"}))
        assert bad.status_code == 400
        resumed = await http.post("/api/ag-ui/", json=answer(conv, interrupt.id, {"decision": "approve"}))
        again = await http.post("/api/ag-ui/", json=answer(conv, interrupt.id, {"decision": "reject"}))
    assert again.status_code == 409
    events = parse_sse(resumed.text)
    check_sequence(events)
    assert events[0].run_id == run_id  # type: ignore[attr-defined]
    assert (events[1].type, events[1].name) == (EventType.CUSTOM, "approval_resolved")  # type: ignore[attr-defined]
    assert events[1].value["decision"] == "approved"  # type: ignore[attr-defined]
    assert [e.type for e in events if e.type.startswith("TOOL_CALL")][0] == EventType.TOOL_CALL_START
    assert events[-1].outcome.type == "success"  # type: ignore[attr-defined]
    # The approved call ran with the arguments the interrupt showed (carol is in no workspace of alice's: the
    # tool says so in its result, which is the agent's business, not the protocol's).
    args = next(e for e in events if e.type == EventType.TOOL_CALL_ARGS)
    assert json.loads(args.delta) == interrupt.metadata["arguments"]  # type: ignore[attr-defined]
    assert any(e.type == EventType.TOOL_CALL_RESULT for e in events)
