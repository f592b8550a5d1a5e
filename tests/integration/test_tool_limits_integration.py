"""Every agent tool against the worst arguments we could think of, with the event loop watched.

A tool runs on the agent worker's event loop, next to every other run the worker holds: a call that
computes for seconds in synchronous code freezes them all, and `asyncio.timeout` cannot interrupt
it. So each call must come back within a bound, with a clear error where the input is refused, and
the loop must keep ticking while it runs. `WORST` has a list per registered tool: a tool added to
the default registry without one fails `test_every_registered_tool_has_a_worst_case_list`.

Against the real PostgreSQL (search_history reads messages) and the fake model server for the
agent-run test at the end."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from agents.backends.base import ToolOutcome
from agents.tools import ToolContext, default_registry
from chat.models import Message
from tests.support import factories
from tests.support.fake_llm import FakeLLM, fake_backend, tool_call
from tests.support.faults import hold_exclusive_lock
from tests.support.waiting import eventually
from tests.support.ws import subscribed_client

pytestmark = [pytest.mark.timeout(60)]
# The search reads on its own thread and connection, so what a test wrote must be committed.
with_database = pytest.mark.django_db(transaction=True)

User = get_user_model()

# How long any tool call may take, worst input or not (a refused input is refused at once; this is
# the room for a loaded two-core machine).
CALL_BOUND_S = 3.0
# How late the loop's heartbeat may tick while a tool runs.
LOOP_LAG_BOUND_S = 0.1
# The longest error text a model (and every member of the conversation) may be shown.
MAX_ERROR_CHARS = 200
# What a successful worst-case search may return at most (20 matches of 300 characters and a name).
MAX_SEARCH_RESULT_CHARS = 16_000

# (arguments, a piece of the expected error) — None: the call may succeed, it only has to be quick.
Case = tuple[Any, str | None]

WORST: dict[str, list[Case]] = {
    "calculator": [
        # round with a huge ndigits builds 10**ndigits: seconds for -10**7, forever for -10**9.
        ({"expression": "round(1, -10**9)"}, "ndigits"),
        ({"expression": "round(1, -10**7)"}, "ndigits"),
        ({"expression": "round(10**300, -10**6)"}, "ndigits"),
        ({"expression": "round(1.5, 10**9)"}, "ndigits"),
        ({"expression": "round(1, 0.5)"}, "ndigits"),
        ({"expression": "round(1e999)"}, "too large"),
        ({"expression": "round(1, 2, 3)"}, "round"),
        # powers, products and shifts of big numbers
        ({"expression": "9 ** 9 ** 9"}, "too large"),
        ({"expression": "(10**300) ** 1000"}, "too large"),
        ({"expression": "(10**300) ** (10**300)"}, "too large"),
        ({"expression": "2 ** 1000 ** 1000"}, "too large"),
        ({"expression": "10**300 * 10**300 * 10**300"}, "too large"),
        ({"expression": "(10**299 * 9) ** 2"}, "too large"),
        ({"expression": "10**300 // 10**-300"}, "too large"),
        ({"expression": "10**300 / 10**-300"}, "too large"),
        ({"expression": "(-10) ** 0.5"}, "not a real number"),
        ({"expression": "0 ** -1"}, "division by zero"),
        ({"expression": "1 << 10**9"}, "not supported"),
        ({"expression": "1 >> 1"}, "not supported"),
        ({"expression": "~1 | 2 & 3 ^ 4"}, "not supported"),  # ^ is a power here; ~, | and & are not
        ({"expression": "~1"}, "not supported"),
        # huge and non-finite literals (200 characters hold at most about 10**238: within the bound)
        ({"expression": "9" * 200}, None),
        ({"expression": "1e999"}, "too large"),
        ({"expression": "-1e999 + 1e999"}, "too large"),
        ({"expression": "1e308 * 10"}, "too large"),
        ({"expression": "sqrt(1e999)"}, "too large"),
        ({"expression": "0x" + "f" * 198}, None),
        ({"expression": "9e299 * 9e299"}, "too large"),
        # deep and long expressions
        ({"expression": "(" * 99 + "1" + ")" * 99}, None),
        ({"expression": "-" * 199 + "1"}, "nested"),
        ({"expression": "sqrt(" * 33 + "1" + ")" * 33}, None),
        ({"expression": "1+" * 99 + "1"}, "nested"),
        ({"expression": "9**9**" * 33 + "9"}, None),
        ({"expression": "1" * 201}, "invalid arguments"),
        ({"expression": "1" * 100_000}, "invalid arguments"),
        # wrong arity, names, calls, other syntax
        ({"expression": "abs()"}, "abs"),
        ({"expression": "sqrt(1, 2)"}, "sqrt"),
        ({"expression": "sqrt(-1)"}, "math domain error"),
        ({"expression": "__import__('os').system('id')"}, "not supported"),
        ({"expression": "().__class__.__bases__"}, "not supported"),
        ({"expression": "(lambda: 1)()"}, "not supported"),
        ({"expression": "[1] * 10**9"}, "not supported"),
        ({"expression": "'a' * 10**9"}, "not supported"),
        ({"expression": "1 if 1 else 2"}, "not supported"),
        ({"expression": "1\x00"}, "not an arithmetic expression"),
        ({"expression": "\x00"}, "not an arithmetic expression"),
        ({"expression": " 1"}, None),
        ({"expression": "1;1"}, "not an arithmetic expression"),
        ({"expression": ""}, "invalid arguments"),
        ({"expression": 10**100}, "invalid arguments"),
        ({"expression": ["1"]}, "invalid arguments"),
        ({"expression": "1", "more": "2"}, "invalid arguments"),
        ("1 + 1", "invalid arguments"),
        (None, "invalid arguments"),
    ],
    "current_time": [
        ({}, None),
        ({"timezone": "Europe/Paris"}, None),
        ({"timezone": "../../../../etc/passwd"}, "timezone"),
        ({"timezone": "/etc/passwd"}, "timezone"),
        ({"timezone": "Not/AZone"}, "unknown timezone"),
        ({"timezone": "Europe/" + "x" * 100_000}, "invalid arguments"),
        ({"timezone": "\x00"}, "timezone"),
        ({"timezone": ""}, "invalid arguments"),
        ({"timezone": 5}, "invalid arguments"),
        ({"shell": "id"}, "invalid arguments"),
        ([], "invalid arguments"),
    ],
    "search_history": [
        ({"query": "%" * 200}, None),
        ({"query": "_" * 200}, None),
        ({"query": "\\" * 200}, None),
        ({"query": "ab " * 66}, None),
        ({"query": "a " * 100}, None),
        ({"query": "é" * 200}, None),
        ({"query": "' OR 1=1 --"}, None),
        ({"query": "needle", "limit": 20}, None),
        ({"query": "\x00"}, "control characters"),
        ({"query": "needle\x00"}, "control characters"),
        ({"query": "a" * 201}, "invalid arguments"),
        ({"query": "a" * 100_000}, "invalid arguments"),
        ({"query": ""}, "invalid arguments"),
        ({"query": "needle", "limit": 10**9}, "invalid arguments"),
        ({"query": "needle", "limit": -1}, "invalid arguments"),
        ({"query": "needle", "limit": "5"}, "invalid arguments"),
        ({"query": 5}, "invalid arguments"),
        ({"query": ["needle"]}, "invalid arguments"),
        ({}, "invalid arguments"),
    ],
    # Run as if an owner approved the call (the runtime never runs it otherwise).
    "invite_member": [
        ({"username": "nobody-here"}, "no member of this workspace"),
        ({"username": "@nobody-here", "role": "viewer"}, "no member of this workspace"),
        ({"username": "a" * 150}, "no member of this workspace"),
        ({"username": "a" * 151}, "invalid arguments"),
        ({"username": "a" * 100_000}, "invalid arguments"),
        ({"username": "\x00"}, "invalid arguments"),
        ({"username": "' OR 1=1 --"}, "invalid arguments"),
        ({"username": ""}, "invalid arguments"),
        ({"username": "bob", "role": "owner"}, "invalid arguments"),
        ({"username": "bob", "role": "x" * 100_000}, "invalid arguments"),
        ({"username": "bob", "as": "owner"}, "invalid arguments"),
        ({"username": 5}, "invalid arguments"),
        ({}, "invalid arguments"),
        ([], "invalid arguments"),
    ],
    # The analyst's tools: an enum or a bounded integer, nothing else; the searchable conversation is the
    # member's personal one, so the figures are read (and must come back as quickly).
    "workspace_report": [
        ({}, None),
        ({"period": "last_90_days"}, None),
        ({"period": "x" * 100_000}, "invalid arguments"),
        ({"period": "today", "workspace": "00000000-0000-0000-0000-000000000000"}, "invalid arguments"),
        ([], "invalid arguments"),
    ],
    "workspace_trends": [
        ({"weeks": 12}, None),
        ({"weeks": 13}, "invalid arguments"),
        ({"weeks": 10**100}, "invalid arguments"),
        ({"weeks": "6"}, "invalid arguments"),
    ],
    "spend_recommendations": [
        ({"period": "last_90_days"}, None),
        ({"period": None}, "invalid arguments"),
        ({"period": "today", "model": "gpt-4o"}, "invalid arguments"),
    ],
    "conversation_summary": [
        ({}, None),
        ({"hours": 720}, None),
        ({"hours": 721}, "invalid arguments"),
    ],
    "member_said": [
        ({"username": "nobody-here", "topic": "needle"}, None),
        ({"username": "a" * 150, "topic": "x" * 200}, None),
        ({"username": "bob", "topic": "x" * 201}, "invalid arguments"),
        ({"username": "bob", "topic": "\x00"}, "control characters"),
        ({"username": "bob", "topic": "% _ \\ needle"}, None),
        ({}, "invalid arguments"),
    ],
}


def test_every_registered_tool_has_a_worst_case_list() -> None:
    assert sorted(WORST) == default_registry().names()


class LoopWatch:
    """A heartbeat on the running loop: ticks every few milliseconds and keeps the longest it was
    late. A synchronous call that holds the loop shows up as a late tick."""

    TICK_S = 0.005

    def __init__(self) -> None:
        self.worst_lag_s = 0.0
        self.ticks = 0

    async def beat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            self.worst_lag_s = max(self.worst_lag_s, time.monotonic() - before - self.TICK_S)
            self.ticks += 1


@asynccontextmanager
async def watched_loop() -> AsyncIterator[LoopWatch]:
    watch = LoopWatch()
    task = asyncio.create_task(watch.beat())
    try:
        await asyncio.sleep(0)  # the heartbeat is running before the call starts
        yield watch
        await asyncio.sleep(LoopWatch.TICK_S * 2)  # and one tick lands after it ends
    finally:
        task.cancel()


# Tools that read the database (their cases get a database and a conversation to search).
READS_THE_DATABASE = {
    "search_history",
    "invite_member",
    "workspace_report",
    "workspace_trends",
    "spend_recommendations",
    "conversation_summary",
    "member_said",
}


def _cases(*, database: bool) -> list[Any]:
    # A schema refusal comes before the tool runs, so those cases of a database tool need no database (each
    # database case costs a flush of the test database).
    return [
        pytest.param(tool, arguments, error, id=f"{tool}-{index}")
        for tool, cases in WORST.items()
        for index, (arguments, error) in enumerate(cases)
        if (tool in READS_THE_DATABASE and error != "invalid arguments") == database
    ]


@pytest.fixture
def searchable(make_user: Any) -> tuple[int, str]:
    """A member's conversation with more matching messages than any search may return."""
    user = make_user()
    conv = factories.conversation_sync(user, agent="")
    for i in range(25):
        factories.message_sync(conv, user, f"needle ab % _ \\ é message {i} " + "x" * 400)
    return user.id, conv


@pytest.mark.parametrize(("tool", "arguments", "error"), _cases(database=False))
async def test_the_worst_input_returns_quickly_with_a_clear_error_and_the_loop_keeps_ticking(
    tool: str, arguments: Any, error: str | None
) -> None:
    await check_worst_input(tool, arguments, error, ToolContext(user_id=None, conversation_id="none"))


@with_database
@pytest.mark.parametrize(("tool", "arguments", "error"), _cases(database=True))
async def test_the_worst_input_to_a_database_tool_returns_quickly_with_a_clear_error_and_the_loop_keeps_ticking(
    tool: str, arguments: Any, error: str | None, searchable: tuple[int, str]
) -> None:
    user_id, conv = searchable
    await check_worst_input(
        tool, arguments, error, ToolContext(user_id=user_id, conversation_id=conv, approved_by=user_id)
    )


async def check_worst_input(tool: str, arguments: Any, error: str | None, ctx: ToolContext) -> None:
    """The call returns within CALL_BOUND_S with strict JSON, the loop never stalls, and a refused
    input says why in a short message containing `error` (None: the call may also succeed)."""
    registry = default_registry()
    # The first call may start the tool's workers; that is not what is measured.
    await registry.call("calculator", {"expression": "1 + 1"}, ctx)

    async with watched_loop() as watch:
        started = time.monotonic()
        outcome = await registry.call(tool, arguments, ctx)
        took = time.monotonic() - started

    assert isinstance(outcome, ToolOutcome)
    assert took < CALL_BOUND_S, f"{tool}({arguments!r:.80}) took {took:.2f}s"
    assert watch.worst_lag_s < LOOP_LAG_BOUND_S, f"the loop stalled {watch.worst_lag_s * 1000:.0f} ms"
    assert watch.ticks > 0
    json.dumps(outcome.result, allow_nan=False)  # what becomes the tool_completed event: strict JSON
    if error is None:
        if outcome.ok:
            assert len(json.dumps(outcome.result)) <= MAX_SEARCH_RESULT_CHARS
        else:
            assert 0 < len(outcome.result["error"]) <= MAX_ERROR_CHARS, outcome.result
        return
    assert outcome.ok is False, f"{tool}({arguments!r:.80}) was not refused: {outcome.result!r:.200}"
    message = outcome.result["error"]
    assert isinstance(message, str)
    assert error in message, message
    assert len(message) <= MAX_ERROR_CHARS, message


@with_database
async def test_a_search_stuck_on_the_database_ends_in_its_own_time_without_holding_the_shared_database_thread(
    searchable: tuple[int, str], settings: Any
) -> None:
    settings.AGENT_TOOL_SEARCH_TIMEOUT_MS = 2000
    user_id, conv = searchable
    registry = default_registry()
    ctx = ToolContext(user_id=user_id, conversation_id=conv)
    locked, release = threading.Event(), threading.Event()

    holder = asyncio.get_running_loop().run_in_executor(
        None, functools.partial(hold_exclusive_lock, Message._meta.db_table, locked, release)
    )
    try:
        await eventually(locked.is_set, what="the lock on the messages table")
        async with watched_loop() as watch:
            started = time.monotonic()
            search = asyncio.create_task(registry.call("search_history", {"query": "needle"}, ctx))
            # Every run's event writes share one database thread: the stuck search is not on it.
            assert await asyncio.wait_for(
                database_sync_to_async(lambda: User.objects.filter(id=user_id).exists())(), 1.0
            )
            assert not search.done()
            outcome = await search
            took = time.monotonic() - started
    finally:
        release.set()
        await holder
    assert outcome == ToolOutcome(False, {"error": "the search took longer than 2000 ms and was stopped"})
    assert 1.5 < took < CALL_BOUND_S + 2.0
    assert watch.worst_lag_s < LOOP_LAG_BOUND_S, f"the loop stalled {watch.worst_lag_s * 1000:.0f} ms"


@pytest.fixture
def fake_llm(settings: Any) -> Iterator[FakeLLM]:
    with fake_backend(settings, api_key="sk-tool-limits-test", timeout_s=10.0) as server:
        yield server


@with_database
async def test_a_run_whose_model_asks_for_a_huge_round_ends_the_call_with_an_error_and_the_worker_serves_on(
    make_user: Any, fake_llm: FakeLLM
) -> None:
    alice, bob = await database_sync_to_async(make_user)(), await database_sync_to_async(make_user)()
    hostile = await factories.conversation(alice, agent="assistant")
    other = await factories.conversation(bob, agent="assistant")

    async def ask(user: Any, conv: str, expression: str, call_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        fake_llm.script(tool_call("calculator", {"expression": expression}, call_id=call_id))
        async with subscribed_client(user, conv) as client:
            reply = await client.command(
                "send", conversation=conv, client_msg_id=call_id, text=f"what is {expression}?"
            )
            assert reply["ok"] is True
            ended = await client.until(lambda f: f.get("type") in ("agent_completed", "agent_failed"), timeout=15)
        return ended, client.events(conv)

    # A first run starts this loop's run supervisor, its model client and the calculator's workers.
    ended, _ = await ask(bob, other, "1 + 1", "call_warm")
    assert ended["type"] == "agent_completed", ended

    async with watched_loop() as watch:
        ended, events = await ask(alice, hostile, "round(1, -10**9)", "call_huge")
    assert watch.worst_lag_s < LOOP_LAG_BOUND_S, f"the loop stalled {watch.worst_lag_s * 1000:.0f} ms"
    completed_tool = next(e["data"] for e in events if e["type"] == "tool_completed")
    assert completed_tool["call_id"] == "call_huge"
    assert completed_tool["ok"] is False
    assert "ndigits" in completed_tool["result"]["error"]
    # The model saw the error and answered; the run itself did not fail.
    assert ended["type"] == "agent_completed", ended
    assert "ndigits" in ended["data"]["text"]

    # The same worker (this loop's run supervisor) serves the next conversation as usual.
    ended, _ = await ask(bob, other, "17 * 23", "call_fine")
    assert ended["type"] == "agent_completed", ended
    assert "391" in ended["data"]["text"]
