"""The agent run services (agents/services.py), called directly against the real PostgreSQL and
Redis: a run's whole life (enqueue, claim, emit, tool calls, complete, fail, cancel, heartbeat,
reap), with the exact rows and events each step writes, what each refuses (and that a refusal
changes nothing), and what each makes happen once it commits: every event it appended is in the
conversation's hot buffer with the frame the log serves, and the runners are rung exactly when
they must be. A sync caller without an event loop gets those effects before the service returns
(chat/publishing.py), so they are checked right after each call."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents.liveness import runs_heartbeat, runs_reap_lost
from agents.models import AgentRun, RunStatus, ToolCall, ToolCallStatus
from agents.services import (
    CancelResult,
    ClaimedRun,
    run_claim_next,
    run_complete,
    run_emit,
    run_enqueue,
    run_fail,
    run_finish_cancelled,
    run_request_cancel,
    tool_call_finish,
    tool_call_start,
)
from agents.tool_results import MAX_TOOL_RESULT_CHARS, bound_result, result_href
from chat.errors import ServiceError
from chat.infra.message_buffer import conversation_stream
from chat.models import AuthorKind, Conversation, Event, Message, Role, User
from chat.selectors import events_after
from chat.wire.frames import StoredEvent
from tests.support import factories
from tests.support.effects import RecordingRunner

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]

WORKER = "test-worker:1"


@pytest.fixture
def hot_buffer() -> Iterator[Callable[[str], list[tuple[int, Any]]]]:
    """The conversation's hot buffer in the real Redis, as (seq, decoded frame) by seq."""
    client = redis.Redis.from_url(settings.REDIS_URL)

    def read(conversation_id: str) -> list[tuple[int, Any]]:
        key = f"{settings.CHANNEL_PREFIX}:buf:{conversation_stream(conversation_id)}"
        rows = client.zrange(key, 0, -1, withscores=True)
        return [(int(score), json.loads(member.decode().partition("|")[2])) for member, score in rows]

    try:
        yield read
    finally:
        client.close()


def log(conversation_id: str) -> list[StoredEvent]:
    return events_after(conversation_id=conversation_id, after_seq=0)


def shape(conversation_id: str) -> list[tuple[int, str]]:
    return [(e.seq, e.type) for e in log(conversation_id)]


def assert_published(hot_buffer: Callable[[str], list[tuple[int, Any]]], conversation_id: str) -> None:
    """Every event in the log reached the hot buffer, with the frame the log serves, and nothing else."""
    assert hot_buffer(conversation_id) == [(e.seq, e.frame()) for e in log(conversation_id)]


def assert_stored(event: StoredEvent, run_id: str | None) -> None:
    """The StoredEvent a service returned is the row it wrote (and carries the run's id)."""
    row = Event.objects.get(conversation_id=event.conversation_id, seq=event.seq)
    assert event == StoredEvent.from_row(row)
    assert json.loads(event.encoded()) == StoredEvent.from_row(row).frame()
    assert (str(row.run_id) if row.run_id else None) == run_id


def db_state() -> dict[str, list[tuple[Any, ...]]]:
    """Every row a run service can write (each test starts from an empty database)."""
    run_fields = [f.attname for f in AgentRun._meta.concrete_fields]
    call_fields = [f.attname for f in ToolCall._meta.concrete_fields]
    return {
        "conversations": list(Conversation.objects.order_by("id").values_list("id", "last_seq")),
        "events": list(Event.objects.order_by("id").values_list("id", "conversation_id", "seq", "type", "data")),
        "messages": list(Message.objects.order_by("id").values_list("id", "author_kind", "text", "seq", "run_id")),
        "runs": list(AgentRun.objects.order_by("id").values_list(*run_fields)),
        "tool_calls": list(ToolCall.objects.order_by("id").values_list(*call_fields)),
    }


def refused(code: str, call: Callable[[], Any], message: str | None = None) -> ServiceError:
    """`call` raises ServiceError(`code`) and leaves every row as it was."""
    before = db_state()
    with pytest.raises(ServiceError) as raised:
        call()
    assert raised.value.code == code, raised.value.message
    if message is not None:
        assert raised.value.message == message
    assert db_state() == before
    return raised.value


def unchanged(call: Callable[[], Any]) -> Any:
    """`call`'s result, asserting it left every row as it was."""
    before = db_state()
    result = call()
    assert db_state() == before
    return result


def run_row(run_id: str) -> AgentRun:
    return AgentRun.objects.get(id=run_id)


def queued_run(owner: Any, conv: str | None = None, text: str = "hello") -> tuple[str, str]:
    """A prompt `owner` sends (to a new assistant conversation unless `conv`): its run is queued."""
    conv = conv or factories.conversation_sync(owner)
    sent = factories.message_sync(conv, owner, text)
    assert sent.run_id is not None
    return conv, sent.run_id


def claimed_id() -> str | None:
    """The id of the run the next claim starts (None: nothing to start)."""
    claimed = run_claim_next(worker_id=WORKER)
    return claimed.run_id if claimed is not None else None


def running_run(owner: Any, conv: str | None = None, text: str = "hello") -> tuple[str, str]:
    conv, run_id = queued_run(owner, conv, text)
    claimed = run_claim_next(worker_id=WORKER)
    assert claimed is not None
    assert claimed.run_id == run_id
    return conv, run_id


def started_data(run: AgentRun) -> dict[str, Any]:
    """agent_started's data for `run`, as stored (its queued time measured from its own row)."""
    assert run.started_at is not None
    return {
        "run_id": str(run.id),
        "agent": run.agent,
        "trigger_message_id": str(run.trigger_message_id) if run.trigger_message_id else None,
        "queued_ms": int((run.started_at - run.created_at).total_seconds() * 1000),
    }


def age_heartbeat(run_id: str, seconds: float) -> None:
    """The run's runner last heart-beat `seconds` ago (as if it stopped then)."""
    AgentRun.objects.filter(id=run_id).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


# --- run_enqueue -------------------------------------------------------------------------------------


def test_run_enqueue_queues_a_run_and_wakes_the_runners_once_committed(make_user: Any, runner: RecordingRunner) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")  # the message service queues nothing here
    message = Message.objects.get(id=factories.message_sync(conv, owner, "do it").message_id)
    before_seq = Conversation.objects.filter(id=conv).values_list("last_seq", flat=True).get()

    run_id = run_enqueue(conversation_id=conv, trigger_message_id=message.id, requested_by_id=owner.id, agent="helper")

    run = run_row(str(run_id))
    assert isinstance(run_id, uuid.UUID)
    assert (str(run.conversation_id), run.trigger_message_id, run.requested_by_id, run.agent) == (
        conv,
        message.id,
        owner.id,
        "helper",
    )
    assert (run.status, run.started_at, run.finished_at, run.heartbeat_at, run.worker_id) == (
        RunStatus.QUEUED,
        None,
        None,
        None,
        "",
    )
    assert (run.cancel_requested, run.cancelled_by_id, run.partial_text, run.partial_seq, run.usage) == (
        False,
        None,
        "",
        0,
        {},
    )
    assert Conversation.objects.filter(id=conv).values_list("last_seq", flat=True).get() == before_seq  # no event
    assert runner.told == ["wake"]


def test_a_run_enqueued_in_a_rolled_back_transaction_neither_exists_nor_wakes_anyone(
    make_user: Any, runner: RecordingRunner
) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    message = Message.objects.get(id=factories.message_sync(conv, owner, "do it").message_id)

    class Abandoned(Exception):
        pass

    def abandoned_transaction() -> None:
        with transaction.atomic():
            run_enqueue(conversation_id=conv, trigger_message_id=message.id, requested_by_id=owner.id, agent="a")
            raise Abandoned

    with pytest.raises(Abandoned):
        abandoned_transaction()
    assert not AgentRun.objects.exists()
    assert runner.told == []


# --- run_claim_next ----------------------------------------------------------------------------------


def test_nothing_queued_nothing_claimed(make_user: Any) -> None:
    owner = make_user()
    factories.message_sync(factories.conversation_sync(owner, agent=""), owner)  # no agent: no run
    assert unchanged(lambda: run_claim_next(worker_id=WORKER)) is None


def test_run_claim_next_starts_the_run_and_emits_agent_started(
    make_user: Any, runner: RecordingRunner, hot_buffer: Any
) -> None:
    owner = make_user()
    conv, run_id = queued_run(owner, text="what is 2+2?")
    runner.told.clear()

    claimed = run_claim_next(worker_id=WORKER)

    run = run_row(run_id)
    assert (run.status, run.worker_id) == (RunStatus.RUNNING, WORKER)
    assert run.started_at is not None
    assert run.started_at == run.heartbeat_at
    assert run.started_at >= run.created_at
    [started] = log(conv)[1:]
    assert (started.seq, started.type, started.data) == (2, "agent_started", started_data(run))
    assert started.data["trigger_message_id"] == str(run.trigger_message_id)
    assert_stored(started, run_id)
    assert claimed == ClaimedRun(
        run_id=run_id,
        conversation_id=conv,
        agent="assistant",
        requested_by_id=owner.id,
        prompt="what is 2+2?",
        events=[started],
        trigger_seq=1,
    )
    assert runner.told == []  # the claimer is the runner: nobody else to wake
    assert_published(hot_buffer, conv)


def test_a_run_whose_prompt_was_deleted_starts_with_no_prompt(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = queued_run(owner)
    Message.objects.filter(conversation_id=conv).delete()  # the run keeps going without its trigger

    claimed = run_claim_next(worker_id=WORKER)

    assert claimed is not None
    assert (claimed.run_id, claimed.prompt, claimed.trigger_seq) == (run_id, "", 0)
    assert claimed.events[0].data["trigger_message_id"] is None
    assert claimed.events[0].data == started_data(run_row(run_id))


def test_one_running_run_per_conversation_while_other_conversations_go_on(make_user: Any) -> None:
    owner = make_user()
    busy, first = queued_run(owner, text="one")
    _, second = queued_run(owner, busy, text="two")
    other, elsewhere = queued_run(owner, text="three")

    assert claimed_id() == first
    # The busy conversation's next run waits; the other conversation's run does not.
    assert claimed_id() == elsewhere
    assert unchanged(lambda: run_claim_next(worker_id=WORKER)) is None
    assert run_row(second).status == RunStatus.QUEUED

    run_complete(run_id=first, conversation_id=busy, text="1", usage={})
    claimed = run_claim_next(worker_id=WORKER)

    assert claimed is not None
    assert (claimed.run_id, claimed.prompt, claimed.trigger_seq) == (second, "two", 2)
    assert shape(busy) == [
        (1, "message"),
        (2, "message"),
        (3, "agent_started"),
        (4, "agent_completed"),
        (5, "agent_started"),
    ]
    assert shape(other) == [(1, "message"), (2, "agent_started")]
    assert run_claim_next(worker_id=WORKER) is None


def test_the_conversation_waiting_longest_is_claimed_first(make_user: Any) -> None:
    owner = make_user()
    # Ordered by the oldest queued run, not by when the conversation was made.
    made_first = factories.conversation_sync(owner)
    _, older = queued_run(owner)
    _, newer = queued_run(owner, made_first)

    assert [claimed_id(), claimed_id()] == [older, newer]


def test_a_conversation_whose_run_ended_any_way_starts_its_next_one(make_user: Any) -> None:
    owner = make_user()
    conv, first = running_run(owner)
    _, second = queued_run(owner, conv)
    _, third = queued_run(owner, conv)

    run_fail(run_id=first, conversation_id=conv, code="llm_error", message="boom")
    assert claimed_id() == second
    run_request_cancel(run_id=second, by_user_id=owner.id, by_username=owner.username)
    assert run_claim_next(worker_id=WORKER) is None  # cancelling is not ended
    run_finish_cancelled(run_id=second, conversation_id=conv)
    assert claimed_id() == third


# --- run_emit ----------------------------------------------------------------------------------------


def test_run_emit_appends_agent_events_and_folds_deltas_into_the_partial_answer(
    make_user: Any, hot_buffer: Any
) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)

    thinking = run_emit(run_id=run_id, conversation_id=conv, type="agent_thinking", data={"text": "hmm"})
    first = run_emit(run_id=run_id, conversation_id=conv, type="agent_delta", data={"text": "Hel"})
    second = run_emit(run_id=run_id, conversation_id=conv, type="agent_delta", data={"text": "lo"})

    assert [(e.seq, e.type, e.data) for e in (thinking, first, second)] == [
        (3, "agent_thinking", {"run_id": run_id, "text": "hmm"}),
        (4, "agent_delta", {"run_id": run_id, "text": "Hel"}),
        (5, "agent_delta", {"run_id": run_id, "text": "lo"}),
    ]
    for event in (thinking, first, second):
        assert_stored(event, run_id)
    run = run_row(run_id)
    assert (run.status, run.partial_text, run.partial_seq) == (RunStatus.RUNNING, "Hello", 5)
    assert_published(hot_buffer, conv)


def test_thinking_leaves_the_partial_answer_alone(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    run_emit(run_id=run_id, conversation_id=conv, type="agent_delta", data={"text": "so far"})
    run_emit(run_id=run_id, conversation_id=conv, type="agent_thinking", data={"text": "more"})
    assert AgentRun.objects.filter(id=run_id).values_list("partial_text", "partial_seq").get() == ("so far", 3)


def test_run_emit_refuses_a_run_that_is_not_running(make_user: Any) -> None:
    owner = make_user()
    other, done = running_run(owner)
    run_complete(run_id=done, conversation_id=other, text="done", usage={})
    conv, queued = queued_run(owner)
    refused(
        "conflict",
        lambda: run_emit(run_id=queued, conversation_id=conv, type="agent_delta", data={"text": "x"}),
        f"run {queued} is queued",
    )
    refused(
        "conflict",
        lambda: run_emit(run_id=done, conversation_id=other, type="agent_thinking", data={"text": "x"}),
        f"run {done} is completed",
    )


def test_run_emit_for_a_run_that_does_not_exist(make_user: Any) -> None:
    owner = make_user()
    conv, _ = running_run(owner)
    before = db_state()
    with pytest.raises(AgentRun.DoesNotExist):
        run_emit(run_id=str(uuid.uuid4()), conversation_id=conv, type="agent_delta", data={"text": "x"})
    assert db_state() == before


# --- tool_call_start / tool_call_finish ---------------------------------------------------------------


def test_a_tool_call_is_recorded_and_announced_from_start_to_finish(make_user: Any, hot_buffer: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)

    executing = tool_call_start(
        run_id=run_id, conversation_id=conv, call_id="c1", tool="calculator", arguments={"expression": "2+2"}
    )

    call = ToolCall.objects.get()
    assert (str(call.run_id), call.call_id, call.tool, call.arguments, call.status) == (
        run_id,
        "c1",
        "calculator",
        {"expression": "2+2"},
        ToolCallStatus.RUNNING,
    )
    assert (call.result, call.finished_at, call.duration_ms) == (None, None, None)
    assert (executing.seq, executing.type, executing.data) == (
        3,
        "tool_executing",
        {"run_id": run_id, "call_id": "c1", "tool": "calculator", "arguments": {"expression": "2+2"}},
    )
    assert_stored(executing, run_id)

    completed = tool_call_finish(
        run_id=run_id, conversation_id=conv, call_id="c1", ok=True, result={"expression": "2+2", "value": 4}
    )

    call.refresh_from_db()
    assert call.finished_at is not None
    assert (call.status, call.result) == (ToolCallStatus.OK, {"expression": "2+2", "value": 4})
    assert call.duration_ms == int((call.finished_at - call.started_at).total_seconds() * 1000)
    assert (completed.seq, completed.type, completed.data) == (
        4,
        "tool_completed",
        {
            "run_id": run_id,
            "call_id": "c1",
            "tool": "calculator",
            "ok": True,
            "result": {"expression": "2+2", "value": 4},
            "duration_ms": call.duration_ms,
        },
    )
    assert_stored(completed, run_id)
    assert_published(hot_buffer, conv)


def test_a_failed_tool_call_is_recorded_as_an_error(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    tool_call_start(run_id=run_id, conversation_id=conv, call_id="c1", tool="search_history", arguments={})

    completed = tool_call_finish(
        run_id=run_id, conversation_id=conv, call_id="c1", ok=False, result={"error": "timed out"}
    )

    assert ToolCall.objects.values_list("status", "result").get() == (ToolCallStatus.ERROR, {"error": "timed out"})
    assert (completed.data["ok"], completed.data["tool"], completed.data["result"]) == (
        False,
        "search_history",
        {"error": "timed out"},
    )


@pytest.mark.parametrize(
    ("result", "encoded_size"),
    [
        ("x" * (MAX_TOOL_RESULT_CHARS - 2), MAX_TOOL_RESULT_CHARS),  # the quotes count
        ({"k": "v"}, len('{"k": "v"}')),
        ("é" * 666, 666 * 6 + 2),  # measured on the \\uXXXX-escaped encoding
        (None, 4),
    ],
)
def test_bound_result_keeps_a_result_of_at_most_the_limit(result: Any, encoded_size: int) -> None:
    assert len(json.dumps(result)) == encoded_size <= MAX_TOOL_RESULT_CHARS
    assert bound_result(result) is result


def assert_cut(result: Any, cut: Any, href: str | None = None) -> None:
    """`cut` is `result`'s truncated form: at most the bound when encoded, with the longest preview of
    the result's encoding that fits, its full size and (if given) where to read it whole."""
    encoded = json.dumps(result, default=str)
    assert len(encoded) > MAX_TOOL_RESULT_CHARS
    assert cut == {
        "truncated": True,
        "preview": cut["preview"],
        "size": len(encoded),
        **({"href": href} if href else {}),
    }
    assert encoded.startswith(cut["preview"])
    assert len(json.dumps(cut)) <= MAX_TOOL_RESULT_CHARS
    longer = {**cut, "preview": encoded[: len(cut["preview"]) + 1]}
    assert len(json.dumps(longer)) > MAX_TOOL_RESULT_CHARS  # nothing more would have fitted
    assert len(cut["preview"]) > MAX_TOOL_RESULT_CHARS // 3  # a preview worth reading, even of quote-heavy JSON


@pytest.mark.parametrize(
    "result",
    [
        "x" * (MAX_TOOL_RESULT_CHARS - 1),
        "é" * 667,
        {"matches": [{"text": "y" * 300}] * 20},
        ['"q"'] * 2000,  # every character of the encoding escaped again inside the preview
    ],
)
def test_bound_result_cuts_a_longer_result_to_the_bound_and_says_so(result: Any) -> None:
    assert_cut(result, bound_result(result))
    href = "/api/conversations/c/runs/r/tool-calls/call_1/result/"
    assert_cut(result, bound_result(result, href=href), href)


def test_bound_result_measures_what_json_cannot_encode_by_its_text() -> None:
    when = timezone.now()
    assert bound_result({"at": when}) == {"at": when}
    huge = [when] * 200
    assert_cut(huge, bound_result(huge))


def test_a_long_tool_result_is_stored_whole_and_sent_bounded_with_where_to_read_it(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    tool_call_start(run_id=run_id, conversation_id=conv, call_id="c1", tool="search_history", arguments={})
    result = {"matches": ["z" * 5000]}

    completed = tool_call_finish(run_id=run_id, conversation_id=conv, call_id="c1", ok=True, result=result)

    href = result_href(conversation_id=conv, run_id=run_id, call_id="c1")
    assert href == f"/api/conversations/{conv}/runs/{run_id}/tool-calls/c1/result/"
    assert_cut(result, completed.data["result"], href)
    assert ToolCall.objects.values_list("result", flat=True).get() == result
    assert log(conv)[-1].data["result"] == completed.data["result"]


def test_tool_calls_are_refused_on_a_run_that_is_not_running(make_user: Any) -> None:
    owner = make_user()
    other, run_id = running_run(owner)
    tool_call_start(run_id=run_id, conversation_id=other, call_id="c1", tool="t", arguments={})
    run_fail(run_id=run_id, conversation_id=other, code="internal", message="bug")
    conv, queued = queued_run(owner)
    refused(
        "conflict",
        lambda: tool_call_start(run_id=queued, conversation_id=conv, call_id="c1", tool="t", arguments={}),
        f"run {queued} is queued",
    )
    refused(
        "conflict",
        lambda: tool_call_finish(run_id=run_id, conversation_id=other, call_id="c1", ok=True, result=1),
        f"run {run_id} is failed",
    )
    assert ToolCall.objects.values_list("status", flat=True).get() == ToolCallStatus.RUNNING


def test_a_call_id_is_started_once_and_only_a_started_call_finishes(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    tool_call_start(run_id=run_id, conversation_id=conv, call_id="c1", tool="t", arguments={})
    before = db_state()

    with pytest.raises(IntegrityError):
        tool_call_start(run_id=run_id, conversation_id=conv, call_id="c1", tool="t", arguments={})
    assert db_state() == before
    with pytest.raises(ToolCall.DoesNotExist):
        tool_call_finish(run_id=run_id, conversation_id=conv, call_id="never", ok=True, result=1)
    assert db_state() == before


# --- run_complete ------------------------------------------------------------------------------------


def test_run_complete_stores_the_answer_and_emits_agent_completed(
    make_user: Any, runner: RecordingRunner, hot_buffer: Any
) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    run_emit(run_id=run_id, conversation_id=conv, type="agent_delta", data={"text": "4"})
    runner.told.clear()
    usage = {"prompt_tokens": 12, "completion_tokens": 1}

    completed = run_complete(run_id=run_id, conversation_id=conv, text="The answer is 4.", usage=usage)

    run = run_row(run_id)
    assert (run.status, run.partial_text, run.usage) == (RunStatus.COMPLETED, "The answer is 4.", usage)
    assert run.finished_at is not None
    assert run.duration_ms is not None
    answer = Message.objects.get(author_kind=AuthorKind.AGENT)
    assert (answer.author_id, answer.client_msg_id, answer.text, str(answer.run_id), answer.seq) == (
        None,
        "",
        "The answer is 4.",
        run_id,
        4,
    )
    assert (completed.seq, completed.type, completed.data) == (
        4,
        "agent_completed",
        {
            "run_id": run_id,
            "message_id": str(answer.id),
            "text": "The answer is 4.",
            "duration_ms": run.duration_ms,
            "usage": usage,
        },
    )
    assert_stored(completed, run_id)
    assert runner.told == []
    assert_published(hot_buffer, conv)


def test_an_empty_answer_is_stored_as_no_answer(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)

    completed = run_complete(run_id=run_id, conversation_id=conv, text="", usage={})

    assert completed.data["text"] == "(no answer)"
    assert Message.objects.filter(author_kind=AuthorKind.AGENT).values_list("text", flat=True).get() == "(no answer)"
    assert run_row(run_id).partial_text == ""


def test_run_complete_is_refused_unless_the_run_is_running(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = queued_run(owner)
    refused("conflict", lambda: run_complete(run_id=run_id, conversation_id=conv, text="x", usage={}))
    run_claim_next(worker_id=WORKER)
    run_complete(run_id=run_id, conversation_id=conv, text="once", usage={})
    refused(
        "conflict",
        lambda: run_complete(run_id=run_id, conversation_id=conv, text="twice", usage={}),
        f"run {run_id} is completed",
    )


# --- run_fail ----------------------------------------------------------------------------------------


def test_run_fail_ends_a_running_run_with_agent_failed(make_user: Any, hot_buffer: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)

    failed = run_fail(run_id=run_id, conversation_id=conv, code="llm_error", message="the model said no")

    assert failed is not None
    run = run_row(run_id)
    assert (run.status, run.error_code, run.error_message) == (RunStatus.FAILED, "llm_error", "the model said no")
    assert run.finished_at is not None
    assert (failed.seq, failed.type, failed.data) == (
        3,
        "agent_failed",
        {"run_id": run_id, "error": {"code": "llm_error", "message": "the model said no"}},
    )
    assert_stored(failed, run_id)
    assert_published(hot_buffer, conv)


def test_run_fail_carries_retry_after_and_bounds_the_message(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    long_message = "m" * 2500

    failed = run_fail(
        run_id=run_id, conversation_id=conv, code="llm_unavailable", message=long_message, retry_after_ms=1500
    )

    assert failed is not None
    assert failed.data["error"] == {"code": "llm_unavailable", "message": "m" * 2000, "retry_after_ms": 1500}
    assert run_row(run_id).error_message == "m" * 2000


def test_a_queued_run_that_fails_gets_agent_started_first(make_user: Any, hot_buffer: Any) -> None:
    owner = make_user()
    conv, run_id = queued_run(owner)

    failed = run_fail(run_id=run_id, conversation_id=conv, code="llm_unavailable", message="down")

    run = run_row(run_id)
    assert run.status == RunStatus.FAILED
    assert run.started_at is not None
    assert run.started_at == run.finished_at
    [started, end] = log(conv)[1:]
    assert (started.seq, started.type, started.data) == (2, "agent_started", started_data(run))
    assert_stored(started, run_id)
    assert failed == end
    assert (end.seq, end.type) == (3, "agent_failed")
    assert_published(hot_buffer, conv)


def test_a_run_ends_once_a_second_ending_changes_nothing(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    run_complete(run_id=run_id, conversation_id=conv, text="done", usage={})

    assert unchanged(lambda: run_fail(run_id=run_id, conversation_id=conv, code="internal", message="late")) is None
    assert run_row(run_id).status == RunStatus.COMPLETED


def test_run_fail_for_the_reaper_fails_only_a_run_still_stale_under_the_lock(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    heartbeat = run_row(run_id).heartbeat_at
    assert heartbeat is not None

    def reap(stale_before: Any) -> StoredEvent | None:
        return run_fail(
            run_id=run_id, conversation_id=conv, code="worker_lost", message="lost", only_if_stale_before=stale_before
        )

    # The heartbeat came back at or after the reaper's cutoff: the run lives on.
    assert unchanged(lambda: reap(heartbeat)) is None
    assert unchanged(lambda: reap(heartbeat - timedelta(seconds=1))) is None
    failed = reap(heartbeat + timedelta(microseconds=1))

    assert failed is not None
    assert failed.data["error"] == {"code": "worker_lost", "message": "lost"}
    assert run_row(run_id).status == RunStatus.FAILED


def test_the_reaper_never_fails_a_queued_run(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = queued_run(owner)
    result = unchanged(
        lambda: run_fail(
            run_id=run_id, conversation_id=conv, code="worker_lost", message="lost", only_if_stale_before=timezone.now()
        )
    )
    assert result is None


# --- run_request_cancel ------------------------------------------------------------------------------


def test_cancelling_a_queued_run_ends_it_at_once(make_user: Any, runner: RecordingRunner, hot_buffer: Any) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((member, Role.MEMBER),), agent_mode="always")
    _, run_id = queued_run(owner, conv)
    runner.told.clear()

    result = run_request_cancel(run_id=run_id, by_user_id=member.id, by_username=member.username)

    run = run_row(run_id)
    assert (run.status, run.cancel_requested, run.cancelled_by_id) == (RunStatus.CANCELLED, True, member.id)
    assert run.started_at is not None
    assert run.started_at == run.finished_at
    started, cancelled = log(conv)[1:]
    assert (started.seq, started.type, started.data) == (2, "agent_started", started_data(run))
    assert (cancelled.seq, cancelled.type, cancelled.data) == (
        3,
        "agent_cancelled",
        {"run_id": run_id, "by": {"id": member.id, "username": member.username}, "partial_text": ""},
    )
    assert_stored(started, run_id)
    assert_stored(cancelled, run_id)
    assert result == CancelResult(run_id, RunStatus.CANCELLED, [started, cancelled], conv)
    assert runner.told == ["wake"]  # the conversation's next queued run may start now
    assert_published(hot_buffer, conv)


def test_cancelling_a_running_run_flags_it_and_tells_its_runner(
    make_user: Any, runner: RecordingRunner, hot_buffer: Any
) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    runner.told.clear()
    events_before = log(conv)

    result = run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username)

    assert result == CancelResult(run_id, "cancelling", [], conv)
    run = run_row(run_id)
    assert (run.status, run.cancel_requested, run.cancelled_by_id, run.finished_at) == (
        RunStatus.RUNNING,
        True,
        owner.id,
        None,
    )
    assert log(conv) == events_before  # agent_cancelled comes from the runner once it stopped
    assert runner.told == [("cancel", run_id)]
    assert_published(hot_buffer, conv)

    # Asked again while it stops: the same answer, the runner told again.
    again = run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username)
    assert again == result
    assert runner.told == [("cancel", run_id), ("cancel", run_id)]


def test_cancelling_a_running_run_does_not_wait_for_its_conversation(make_user: Any, runner: RecordingRunner) -> None:
    """Stop on a running run is one UPDATE of the run's row: it never waits for the conversation that the
    runner's writes lock (tests/integration/test_run_lock_order_integration.py has their order)."""
    owner = make_user()
    conv, run_id = running_run(owner)
    runner.told.clear()
    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"], port=params["PORT"], user=params["USER"], password=params["PASSWORD"],
        dbname=params["NAME"],
    ) as holder:  # fmt: skip
        holder.execute("SELECT 1 FROM chat_conversation WHERE id = %s FOR UPDATE", [conv])
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")  # before: blocked here, then this timeout
            result = run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username)
        holder.rollback()
    assert result == CancelResult(run_id, "cancelling", [], conv)
    assert run_row(run_id).cancel_requested is True
    assert runner.told == [("cancel", run_id)]


@pytest.mark.parametrize("ending", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_cancelling_an_ended_run_is_a_conflict(make_user: Any, runner: RecordingRunner, ending: str) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    if ending == RunStatus.COMPLETED:
        run_complete(run_id=run_id, conversation_id=conv, text="done", usage={})
    elif ending == RunStatus.FAILED:
        run_fail(run_id=run_id, conversation_id=conv, code="llm_error", message="x")
    else:
        run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username)
        run_finish_cancelled(run_id=run_id, conversation_id=conv)
    runner.told.clear()

    refused(
        "conflict",
        lambda: run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username),
        f"run already {ending}",
    )
    assert runner.told == []


def test_cancelling_a_run_that_does_not_exist(make_user: Any, runner: RecordingRunner) -> None:
    owner = make_user()
    queued_run(owner)
    runner.told.clear()
    before = db_state()
    with pytest.raises(AgentRun.DoesNotExist):
        run_request_cancel(run_id=str(uuid.uuid4()), by_user_id=owner.id, by_username=owner.username)
    assert db_state() == before
    assert runner.told == []


# --- run_finish_cancelled ----------------------------------------------------------------------------


def test_the_runner_ends_a_cancelled_run_with_the_answer_so_far(make_user: Any, hot_buffer: Any) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((member, Role.MEMBER),), agent_mode="always")
    _, run_id = running_run(owner, conv)
    run_emit(run_id=run_id, conversation_id=conv, type="agent_delta", data={"text": "Once upon"})
    run_request_cancel(run_id=run_id, by_user_id=member.id, by_username=member.username)

    cancelled = run_finish_cancelled(run_id=run_id, conversation_id=conv)

    assert cancelled is not None
    run = run_row(run_id)
    assert (run.status, run.cancelled_by_id, run.partial_text) == (RunStatus.CANCELLED, member.id, "Once upon")
    assert run.finished_at is not None
    assert (cancelled.seq, cancelled.type, cancelled.data) == (
        4,
        "agent_cancelled",
        {"run_id": run_id, "by": {"id": member.id, "username": member.username}, "partial_text": "Once upon"},
    )
    assert_stored(cancelled, run_id)
    assert shape(conv) == [(1, "message"), (2, "agent_started"), (3, "agent_delta"), (4, "agent_cancelled")]
    assert_published(hot_buffer, conv)


def test_a_run_stopped_without_a_request_or_whose_canceller_is_gone_names_nobody(make_user: Any) -> None:
    owner, canceller = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((canceller, Role.MEMBER),), agent_mode="always")
    _, stopped = running_run(owner, conv)  # e.g. the runner shutting down: nobody asked

    first = run_finish_cancelled(run_id=stopped, conversation_id=conv)

    _, asked = running_run(owner, conv)
    run_request_cancel(run_id=asked, by_user_id=canceller.id, by_username=canceller.username)
    User.objects.filter(id=canceller.id).delete()
    second = run_finish_cancelled(run_id=asked, conversation_id=conv)

    nobody = {"id": None, "username": None}
    assert first is not None
    assert first.data == {"run_id": stopped, "by": nobody, "partial_text": ""}
    assert second is not None
    assert second.data == {"run_id": asked, "by": nobody, "partial_text": ""}


def test_finishing_an_ended_run_as_cancelled_changes_nothing(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = running_run(owner)
    run_complete(run_id=run_id, conversation_id=conv, text="done", usage={})
    assert unchanged(lambda: run_finish_cancelled(run_id=run_id, conversation_id=conv)) is None
    assert run_row(run_id).status == RunStatus.COMPLETED


# --- runs_heartbeat ----------------------------------------------------------------------------------


def test_runs_heartbeat_refreshes_the_running_runs_and_returns_those_to_cancel(make_user: Any) -> None:
    owner = make_user()
    conv_a, flagged = running_run(owner)
    _, plain = running_run(owner)
    _, queued = queued_run(owner, conv_a)  # waits behind `flagged`
    conv_d, ended = running_run(owner)
    run_complete(run_id=ended, conversation_id=conv_d, text="done", usage={})
    run_request_cancel(run_id=flagged, by_user_id=owner.id, by_username=owner.username)
    for run_id in (flagged, plain, ended):
        age_heartbeat(run_id, 60)
    stale = timezone.now() - timedelta(seconds=30)
    ended_heartbeat = run_row(ended).heartbeat_at
    events_before = list(Event.objects.values_list("id", flat=True))

    to_cancel = runs_heartbeat(run_ids=[flagged, plain, queued, ended])

    assert to_cancel == [flagged]
    assert run_row(flagged).heartbeat_at > stale
    assert run_row(plain).heartbeat_at > stale
    assert run_row(queued).heartbeat_at is None  # only running runs beat
    assert run_row(ended).heartbeat_at == ended_heartbeat
    assert [run_row(r).status for r in (flagged, plain, queued, ended)] == [
        RunStatus.RUNNING,
        RunStatus.RUNNING,
        RunStatus.QUEUED,
        RunStatus.COMPLETED,
    ]
    assert list(Event.objects.values_list("id", flat=True)) == events_before


def test_runs_heartbeat_of_no_runs(make_user: Any) -> None:
    owner = make_user()
    running_run(owner)
    assert unchanged(lambda: runs_heartbeat(run_ids=[])) == []


# --- runs_reap_lost ----------------------------------------------------------------------------------


def test_runs_reap_lost_fails_the_runs_whose_runner_stopped_beating(
    make_user: Any, runner: RecordingRunner, hot_buffer: Any
) -> None:
    owner = make_user()
    lost_conv, lost = running_run(owner)
    _, waiting = queued_run(owner, lost_conv)
    live_conv, live = running_run(owner)
    age_heartbeat(lost, 60)
    age_heartbeat(live, 5)
    runner.told.clear()

    reaped = runs_reap_lost(lost_after_s=20)

    [failed] = reaped
    assert (failed.conversation_id, failed.seq, failed.type, failed.data) == (
        lost_conv,
        4,
        "agent_failed",
        {
            "run_id": lost,
            "error": {"code": "worker_lost", "message": "the worker running this agent stopped responding"},
        },
    )
    assert_stored(failed, lost)
    assert AgentRun.objects.filter(id=lost).values_list("status", "error_code").get() == (
        RunStatus.FAILED,
        "worker_lost",
    )
    assert [run_row(r).status for r in (waiting, live)] == [RunStatus.QUEUED, RunStatus.RUNNING]
    assert shape(live_conv) == [(1, "message"), (2, "agent_started")]
    assert runner.told == ["wake"]  # the lost run's conversation may start its next run
    assert_published(hot_buffer, lost_conv)
    assert claimed_id() == waiting


def test_runs_reap_lost_with_nothing_lost_changes_nothing_and_wakes_nobody(
    make_user: Any, runner: RecordingRunner
) -> None:
    owner = make_user()
    _, live = running_run(owner)
    queued_run(owner)
    age_heartbeat(live, 5)
    runner.told.clear()

    assert unchanged(lambda: runs_reap_lost(lost_after_s=20)) == []
    assert runner.told == []
