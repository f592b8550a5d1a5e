"""One OpenTelemetry trace per agent run (monitoring/tracing.py), read from the SDK's in-memory
exporter while real runs go over the socket, PostgreSQL and Redis: the run is the root span, its
tool call and model rounds are children, a caller's traceparent makes it part of the caller's trace,
and a run parked on an approval and resumed by another runner stays in the same trace."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agents.models import AgentRun
from agents.runner import get_supervisor, supervisors
from chat.publishing import run_service
from chat.services.conversations import workspace_create, workspace_member_add
from chat.services.messages import message_send
from monitoring import tracing
from tests.support import factories
from tests.support.waiting import eventually
from tests.support.ws import Client, connected

pytestmark = [pytest.mark.django_db(transaction=True)]

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def run_row(run_id: str) -> AgentRun:
    return AgentRun.objects.get(id=run_id)


async def subscribed(user: Any, conv: str) -> Client:
    client = await connected(user)
    assert (await client.command("subscribe", conversation=conv, since_seq=0))["ok"] is True
    return client


def roots(exporter: InMemorySpanExporter, run_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("agent.run.id") == run_id]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    found = [s for s in exporter.get_finished_spans() if s.parent is not None and s.parent.span_id == span_id(parent)]
    return sorted(found, key=lambda s: s.start_time or 0)


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def trace_id(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}"


async def ended_leg(exporter: InMemorySpanExporter, run_id: str, count: int = 1) -> list[ReadableSpan]:
    """The run's root spans once `count` legs have ended (a leg's span ends just after its last event)."""
    return await eventually(
        lambda: (found := roots(exporter, run_id)) and len(found) >= count and found,
        what=lambda: f"{count} ended span(s) of run {run_id}; have {len(roots(exporter, run_id))}",
    )


async def test_a_run_over_the_socket_is_one_trace_of_its_tool_call_and_model_rounds(
    make_user: Any, spans: InMemorySpanExporter
) -> None:
    user = await database_sync_to_async(make_user)(tier="pro")
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="t1", text="what is 2+2?")
    run_id = sent["run_id"]
    done = await client.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert done["type"] == "agent_completed"

    [root] = await ended_leg(spans, run_id)
    assert root.name == "invoke_agent assistant"
    assert root.parent is None  # no traceparent: the run starts its own trace
    attributes = dict(root.attributes or {})
    assert attributes["agent.run.id"] == run_id
    assert attributes["agent.run.tier"] == "pro"
    assert attributes["agent.run.outcome"] == "completed"
    assert attributes["gen_ai.conversation.id"] == conv
    assert attributes["agent.run.resumed"] is False
    assert root.status.status_code is StatusCode.UNSET

    # Model round 1 decides on the calculator, the tool runs, round 2 answers from its result.
    steps = children(spans, root)
    assert [s.name for s in steps] == ["chat offline-rules", "execute_tool calculator", "chat offline-rules"]
    first_round, tool, second_round = steps
    assert [(s.attributes or {})["agent.llm.round"] for s in (first_round, second_round)] == [1, 2]
    assert (first_round.attributes or {})["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert (second_round.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)
    tool_attributes = dict(tool.attributes or {})
    assert tool_attributes["gen_ai.tool.name"] == "calculator"
    assert tool_attributes["gen_ai.tool.call.id"] == "call_1"
    assert tool_attributes["agent.tool.ok"] is True
    for step in steps:  # inside the run's span, in the run's trace
        assert trace_id(step) == trace_id(root)
        assert (root.start_time or 0) <= (step.start_time or 0) <= (step.end_time or 0) <= (root.end_time or 0)
    assert (first_round.end_time or 0) <= (tool.start_time or 0) <= (tool.end_time or 0)
    assert (tool.end_time or 0) <= (second_round.start_time or 0)

    # The run keeps its trace id (the admin shows it) and its root span for a later leg.
    row = await database_sync_to_async(run_row)(run_id)
    assert row.trace_id == trace_id(root)
    assert row.trace_context.split("-")[:3] == ["00", trace_id(root), f"{span_id(root):016x}"]
    assert row.traceparent == ""
    await client.close()


async def test_the_callers_traceparent_makes_the_run_part_of_the_callers_trace(
    make_user: Any, spans: InMemorySpanExporter
) -> None:
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await run_service(
        message_send,
        conversation_id=conv,
        author_id=user.id,
        username=user.username,
        client_msg_id="t2",
        text="what is 3*3?",
        can_write=True,
        traceparent=CALLER,
    )
    assert sent.run_id is not None
    await client.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == sent.run_id)
    [root] = await ended_leg(spans, sent.run_id)
    assert root.parent is not None
    assert root.parent.is_remote
    assert f"{root.parent.span_id:016x}" == CALLER_SPAN
    assert trace_id(root) == CALLER_TRACE
    assert {trace_id(s) for s in children(spans, root)} == {CALLER_TRACE}
    row = await database_sync_to_async(run_row)(sent.run_id)
    assert (row.traceparent, row.trace_id) == (CALLER, CALLER_TRACE)
    await client.close()


async def test_a_bad_traceparent_is_refused_naming_the_field(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    reply = await client.command(
        "send", conversation=conv, client_msg_id="t3", text="hi", traceparent=f"00-{CALLER_TRACE}-{'0' * 16}-01"
    )
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"].startswith("traceparent must be a W3C traceparent")
    assert not await database_sync_to_async(AgentRun.objects.filter(conversation_id=conv).exists)()
    await client.close()


def _team(make_user: Any) -> tuple[Any, Any, Any, str]:
    """An owner, a member and carol in a workspace; a conversation of the owner and the member."""
    owner, member, carol = (make_user() for _ in range(3))
    workspace = workspace_create(owner=owner, name="team")
    for user in (member, carol):
        workspace_member_add(workspace=workspace, actor=owner, username=user.username, role="member")
    conv = factories.conversation_sync(owner, members=((member, "member"),), workspace_id=workspace.id)
    return owner, member, carol, conv


async def test_a_run_resumed_by_another_runner_after_an_approval_stays_in_its_trace(
    make_user: Any, spans: InMemorySpanExporter
) -> None:
    owner_user, member_user, carol, conv = await database_sync_to_async(_team)(make_user)
    member, owner = await subscribed(member_user, conv), await subscribed(owner_user, conv)
    sent = await member.command(
        "send", conversation=conv, client_msg_id="t4", text=f"@assistant invite @{carol.username}"
    )
    run_id = sent["run_id"]
    await member.seen_or_until(lambda f: f.get("type") == "approval_requested" and f["data"]["run_id"] == run_id)
    [first_leg] = await ended_leg(spans, run_id)
    assert (first_leg.attributes or {})["agent.run.outcome"] == "waiting_approval"
    assert [s.name for s in children(spans, first_leg)] == ["chat offline-rules"]

    # The parked run is resumed by a new runner (its first one is gone), as after a worker restart.
    first = get_supervisor()
    await eventually(lambda: run_id not in first.tasks)
    stopped = supervisors.pop_current()
    assert stopped is first
    await stopped.stop()
    assert (await owner.command("approve", run_id=run_id, call_id="call_1", decision="approve"))["ok"] is True
    second = get_supervisor()
    assert second is not first
    done = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert done["type"] == "agent_completed"

    legs = await ended_leg(spans, run_id, count=2)
    second_leg = next(s for s in legs if s is not first_leg)
    assert second_leg.parent is not None
    assert second_leg.parent.span_id == span_id(first_leg)
    assert trace_id(second_leg) == trace_id(first_leg)
    attributes = dict(second_leg.attributes or {})
    assert (attributes["agent.run.resumed"], attributes["agent.approval.decision"]) == (True, "approved")
    assert attributes["agent.run.outcome"] == "completed"
    # The approved call runs in the resumed leg, then the offline agent answers from its outcome.
    steps = children(spans, second_leg)
    assert [s.name for s in steps] == ["execute_tool invite_member", "chat offline-rules"]
    assert (steps[0].attributes or {})["agent.tool.ok"] is True
    row = await database_sync_to_async(run_row)(run_id)
    assert row.trace_id == trace_id(first_leg)  # the first leg's, kept
    assert row.trace_context.split("-")[2] == f"{span_id(first_leg):016x}"
    await member.close()
    await owner.close()


async def test_with_tracing_off_a_run_has_no_trace_but_keeps_its_callers_traceparent(
    make_user: Any, tracing_off: None
) -> None:
    assert not tracing.enabled()
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await run_service(
        message_send,
        conversation_id=conv,
        author_id=user.id,
        username=user.username,
        client_msg_id="t5",
        text="what is 5*5?",
        can_write=True,
        traceparent=CALLER,
    )
    assert sent.run_id is not None
    done = await client.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == sent.run_id)
    assert done["type"] == "agent_completed"
    row = await database_sync_to_async(run_row)(sent.run_id)
    assert (row.traceparent, row.trace_id, row.trace_context) == (CALLER, "", "")
    await client.close()


async def test_a_traceparent_sent_over_the_socket_parents_the_run(make_user: Any, spans: Any) -> None:
    """The caller's trace reaches the run from the socket's `send`, not only from the service."""
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    sent = await client.command("send", conversation=conv, client_msg_id="s", text="what is 2+2?", traceparent=CALLER)
    await client.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == sent["run_id"])
    [root] = await ended_leg(spans, sent["run_id"])
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == CALLER_SPAN
    assert trace_id(root) == CALLER_TRACE
    row = await database_sync_to_async(AgentRun.objects.get)(id=sent["run_id"])
    assert row.traceparent == CALLER
    await client.close()
