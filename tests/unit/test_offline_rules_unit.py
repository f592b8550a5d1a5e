"""The offline analyst's planner (agents/backends/offline_rules.py): which tool a prompt asks for, with which
period, and the prompts it leaves to the offline agent's older rules (search, time, arithmetic, small talk)."""

from __future__ import annotations

import pytest

from agents.backends.offline_rules import find_period, plan, summary_hours


@pytest.mark.parametrize(
    ("prompt", "tool", "arguments"),
    [
        ("How much did we spend on AI this month, and on what?", "workspace_report", {"period": "this_month"}),
        ("@assistant who uses the assistant most?", "workspace_report", {}),
        ("how can we cut our AI spend last month?", "spend_recommendations", {"period": "last_month"}),
        ("is the assistant getting slower?", "workspace_trends", {}),
        ("any spikes in tool errors?", "workspace_trends", {}),
        ("summarize the last 3 hours", "conversation_summary", {"hours": 3}),
        ("what did @bob say about the Q3 budget?", "member_said", {"username": "bob", "topic": "the Q3 budget"}),
        ("what did bob.smith say?", "member_said", {"username": "bob.smith"}),
        # "all conversations" without a search word is still a figure
        ("how many messages in all conversations this week?", "workspace_report", {"period": "this_week"}),
    ],
)
def test_the_planner_picks_the_tool_and_its_arguments(prompt: str, tool: str, arguments: dict[str, object]) -> None:
    chosen = plan(prompt)
    assert chosen is not None
    assert (chosen.tool, chosen.arguments) == (tool, arguments)


@pytest.mark.parametrize(
    "prompt",
    [
        "search for the budget",  # a plain search stays a search, whatever it is about
        "find the budget across conversations",  # so does one across conversations
        "across all my chats, what mentioned the spend?",
        "did anyone mention the cost of the venue?",
        "find invoices",
        "what time is it in Tokyo?",
        "what's the date today?",
        "hello",
    ],
)
def test_prompts_for_the_older_rules_get_no_analyst_plan(prompt: str) -> None:
    assert plan(prompt) is None


def test_periods_and_summary_hours() -> None:
    assert find_period("spend in the last 7 days") == "last_7_days"
    assert find_period("past 2 weeks") == "last_30_days"
    assert find_period("the last 45 days") == "last_90_days"
    assert find_period("this quarter") == "last_90_days"
    assert find_period("yesterday's cost") == "yesterday"
    assert find_period("ever") is None
    assert summary_hours("recap the last 2 days") == 48
    assert summary_hours("tl;dr of today") == 24
    assert summary_hours("recap the last 90 days") == 720
    missed = plan("what did I miss?")  # "I" is nobody's username: a summary, not member_said
    assert missed is not None
    assert missed.tool == "conversation_summary"
