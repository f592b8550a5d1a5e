"""Tools: the safe calculator (no eval), schema validation of arguments, the offline agent's rules."""

from __future__ import annotations

from typing import Any

import pytest

from agents.backends.base import AgentInput, AnswerChunk, CallTool, Think, ToolOutcome, Usage
from agents.backends.offline import OfflineBackend, find_expression
from agents.tools import ToolContext, ToolError, calculate, default_registry


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("17 * 23", 391),
        ("2 + 3 * 4", 14),
        ("(2 + 3) ^ 2", 25),
        ("7 / 2", 3.5),
        ("sqrt(16)", 4),
        ("-3 + 1", -2),
        ("10 // 3", 3),
        ("2 ** 10", 1024),
        ("6 × 7", 42),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('id')",
        "open('/etc/passwd')",
        "1 / 0",
        "9 ** 9 ** 9",
        "x + 1",
        "[1, 2]",
        "10.0 ** 400",
        "1" * 201,
        "(lambda: 1)()",
        "True + 1",
    ],
)
def test_calculator_refuses_anything_else(expression: str) -> None:
    with pytest.raises(ToolError):
        calculate(expression)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what is 17 * 23?", "17 * 23"),
        ("compute (2+3)^2 please", "(2+3)^2"),
        ("hello there", None),
        ("I have 3 cats", None),
    ],
)
def test_expression_detection(text: str, expected: str | None) -> None:
    assert find_expression(text) == expected


async def test_registry_validates_arguments_against_the_schema() -> None:
    registry = default_registry()
    ctx = ToolContext(user_id=None, conversation_id="c")
    ok = await registry.call("calculator", {"expression": "1 + 1"}, ctx)
    assert ok == ToolOutcome(True, {"expression": "1 + 1", "value": 2})
    missing = await registry.call("calculator", {}, ctx)
    assert missing.ok is False
    assert "invalid arguments" in missing.result["error"]
    extra = await registry.call("calculator", {"expression": "1", "shell": "rm"}, ctx)
    assert extra.ok is False
    unknown = await registry.call("rm_rf", {}, ctx)
    assert unknown.ok is False
    assert "unknown tool" in unknown.result["error"]
    refused = await registry.call("calculator", {"expression": "1/0"}, ctx)
    assert refused == ToolOutcome(False, {"error": "division by zero"})


async def drive(prompt: str, outcomes: dict[str, ToolOutcome]) -> list[Any]:
    steps: list[Any] = []
    gen = OfflineBackend().steps(AgentInput("r", "c", 1, prompt), default_registry())
    outcome = None
    try:
        while True:
            step = await gen.asend(outcome)
            outcome = outcomes.get(step.tool) if isinstance(step, CallTool) else None
            steps.append(step)
    except StopAsyncIteration:
        return steps


async def test_offline_agent_calculates_with_the_tool_result(settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    steps = await drive("what is 17 * 23?", {"calculator": ToolOutcome(True, {"value": 391})})
    assert isinstance(steps[0], Think)
    assert steps[1] == CallTool("call_1", "calculator", {"expression": "17 * 23"})
    answer = "".join(s.text for s in steps if isinstance(s, AnswerChunk))
    assert answer == "17 * 23 = 391"
    assert isinstance(steps[-1], Usage)


async def test_offline_agent_reports_tool_failure_honestly(settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    steps = await drive("what is 1 / 0?", {"calculator": ToolOutcome(False, {"error": "division by zero"})})
    answer = "".join(s.text for s in steps if isinstance(s, AnswerChunk))
    assert answer == "I could not evaluate 1 / 0: division by zero"


async def test_offline_agent_picks_time_and_search_tools(settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    clock = {"utc": "2026-12-01T14:42:00Z", "timezone": "Europe/Paris", "local": "2026-12-01T15:42:00+01:00"}
    time_steps = await drive("what time is it?", {"current_time": ToolOutcome(True, clock)})
    assert [s for s in time_steps if isinstance(s, CallTool)] == [CallTool("call_1", "current_time", {})]
    answer = "".join(s.text for s in time_steps if isinstance(s, AnswerChunk))
    assert answer == "It's 3:42 PM on Tuesday, 1 December 2026 (Europe/Paris)."
    search_steps = await drive("search for invoices", {"search_history": ToolOutcome(True, {"matches": []})})
    calls = [s for s in search_steps if isinstance(s, CallTool)]
    assert calls == [CallTool("call_1", "search_history", {"query": "invoices"})]
    answer = "".join(s.text for s in search_steps if isinstance(s, AnswerChunk))
    assert answer == "No messages mention 'invoices' yet."
    help_steps = await drive("hello there", {})
    assert not [s for s in help_steps if isinstance(s, CallTool)]


def test_calculator_refuses_complex_results() -> None:
    with pytest.raises(ToolError, match="not a real number"):
        calculate("(-8) ** 0.5")


@pytest.mark.parametrize(
    ("prompt", "arguments"),
    [
        ("what time is it in Tokyo?", {"timezone": "Asia/Tokyo"}),
        ("What's the time in new  york right now?", {"timezone": "America/New_York"}),
        ("what time is it in America/Chicago", {"timezone": "America/Chicago"}),
        ("what time is it in utc?", {"timezone": "UTC"}),
        ("what time is it?", {}),
        ("what is the date today", {}),
        ("what time is it in Atlantis?", {}),  # no zone known: the asker's own, and the answer says so
    ],
)
async def test_offline_agent_reads_the_clock_where_the_question_says(
    prompt: str, arguments: dict[str, str], settings: Any
) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    clock = {"utc": "2026-07-04T00:05:00Z", "timezone": "UTC", "local": "2026-07-04T00:05:00+00:00"}
    steps = await drive(prompt, {"current_time": ToolOutcome(True, clock)})
    assert [s for s in steps if isinstance(s, CallTool)] == [CallTool("call_1", "current_time", arguments)]
    answer = "".join(s.text for s in steps if isinstance(s, AnswerChunk))
    assert answer.endswith("It's 12:05 AM on Saturday, 4 July 2026 (UTC).")
    assert ("Atlantis" in answer) == ("Atlantis" in prompt)


async def test_offline_agent_lists_each_match_whole_with_author_and_local_time(settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    found = {
        "query": "invoices",
        "timezone": "Asia/Tokyo",
        "matches": [
            {
                "author": "bob",
                "snippet": "«invoices»\nare paid",
                "local_time": "2026-03-02T09:05:00+09:00",
            },
            {
                "author": "alice",
                "snippet": "the «invoices»",
                "local_time": "2026-03-01T23:59:00+09:00",
            },
        ],
    }
    steps = await drive("@assistant did anyone mention invoices?", {"search_history": ToolOutcome(True, found)})
    answer = "".join(s.text for s in steps if isinstance(s, AnswerChunk))
    assert answer == (
        "2 messages mention 'invoices', best match first (times in Asia/Tokyo):\n"
        "- bob (9:05 AM, Mon 2 Mar 2026): «invoices»\nare paid\n"
        "- alice (11:59 PM, Sun 1 Mar 2026): the «invoices»"
    )
    failed = await drive("search for invoices", {"search_history": ToolOutcome(False, {"error": "too slow"})})
    assert "".join(s.text for s in failed if isinstance(s, AnswerChunk)) == "The search failed: too slow"


@pytest.mark.parametrize(
    ("prompt", "arguments"),
    [
        ("search for invoices", {"query": "invoices"}),
        ("search all my conversations for invoices", {"query": "invoices", "scope": "all"}),
        ("@assistant search everywhere for the Q3 budget?", {"query": "the Q3 budget", "scope": "all"}),
        ("find the venue across conversations", {"query": "the venue", "scope": "all"}),
        ("across all of my chats, find the venue", {"query": "the venue", "scope": "all"}),
        ("search for invoices in all conversations", {"query": "invoices", "scope": "all"}),
        ("did anyone mention pricing in every conversation?", {"query": "pricing", "scope": "all"}),
    ],
)
async def test_offline_agent_picks_the_search_scope_from_the_words(
    settings: Any, prompt: str, arguments: dict[str, str]
) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    steps = await drive(prompt, {"search_history": ToolOutcome(True, {"matches": []})})
    assert [s for s in steps if isinstance(s, CallTool)] == [CallTool("call_1", "search_history", arguments)]


async def test_offline_agent_answers_a_cross_search_with_titles_and_a_lower_tier_with_what_it_lacks(
    settings: Any,
) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    match = {"author": "bob", "snippet": "the «venue» is booked", "local_time": "2026-03-02T09:05:00+09:00"}
    everywhere = {
        "query": "venue",
        "scope": "all",
        "timezone": "Asia/Tokyo",
        "matches": [match | {"conversation_title": "Launch"}],
    }
    steps = await drive("search everywhere for venue", {"search_history": ToolOutcome(True, everywhere)})
    assert "".join(s.text for s in steps if isinstance(s, AnswerChunk)) == (
        "1 message mentions 'venue', across the conversations everyone here can read, best match first"
        " (times in Asia/Tokyo):\n- “Launch”, bob (9:05 AM, Mon 2 Mar 2026): the «venue» is booked"
    )
    lower = {
        "query": "venue",
        "scope": "conversation",
        "timezone": "Asia/Tokyo",
        "beyond_tier": {"capability": "search", "tier": "pro", "available_in": "enterprise", "would_show": "more"},
        "matches": [match | {"conversation_title": "here"}],
    }
    steps = await drive("search everywhere for venue", {"search_history": ToolOutcome(True, lower)})
    assert "".join(s.text for s in steps if isinstance(s, AnswerChunk)) == (
        "Searching all conversations is not part of your pro tier. The enterprise tier would show more."
        " In this conversation:\n1 message mentions 'venue', best match first (times in Asia/Tokyo):\n"
        "- bob (9:05 AM, Mon 2 Mar 2026): the «venue» is booked"
    )
