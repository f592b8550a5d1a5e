"""Tools that need approval (docs/protocol.md §11), without a database: the registry says which,
the model's spec says so, edited arguments get short errors naming the field, the offline agent
asks for invite_member and answers from whatever the decision was, and the OpenAI-compatible
backend continues from the state it attached to the paused call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.backends.base import AgentInput, AnswerChunk, CallTool, Resume, Think, ToolOutcome
from agents.backends.offline import OfflineBackend, find_invite
from agents.backends.openai import _RunState
from agents.tools import ToolContext, default_registry


def test_only_invite_member_needs_approval_and_its_spec_says_so() -> None:
    registry = default_registry()
    rules = {name: registry.needs_approval(name) for name in registry.names()}
    assert {name for name, rule in rules.items() if rule is not None} == {"invite_member"}
    assert rules["invite_member"] is not None
    assert rules["invite_member"].approver_role == "owner"
    assert rules["invite_member"].reason({"username": "bob", "role": "viewer"}) == (
        "Add bob to this conversation as viewer."
    )
    specs = {s["function"]["name"]: s["function"]["description"] for s in registry.specs()}
    assert "approval of a conversation owner" in specs["invite_member"]
    assert "approval" not in specs["calculator"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"username": "bob"}, None),
        ({"username": "@bob", "role": "viewer"}, None),
        ({"username": "bob", "role": "owner"}, "invalid arguments: role must be one of member, viewer"),
        ({"username": "bob", "role": "x" * 100_000}, "invalid arguments: role must be one of member, viewer"),
        ({"username": "b b"}, "invalid arguments: username must match ^@?[\\w.@+-]+$"),
        ({"username": "a" * 100_000}, "invalid arguments: username is longer than 150 characters"),
        ({"username": "bob", "as": "x"}, "invalid arguments: the arguments may only have the fields role, username"),
        ({}, "invalid arguments: 'username' is a required property"),
    ],
)
def test_edited_arguments_are_checked_against_the_tools_schema_with_a_short_error(
    arguments: dict[str, Any], problem: str | None
) -> None:
    assert default_registry().problem("invite_member", arguments) == problem


async def test_invite_member_never_runs_without_an_approver() -> None:
    outcome = await default_registry().call("invite_member", {"username": "bob"}, ToolContext(None, "c"))
    assert outcome == ToolOutcome(False, {"error": "invite_member runs only once an owner approved it"})


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("@assistant please invite @bob", {"username": "bob", "role": "member"}),
        ("invite carol as a viewer", {"username": "carol", "role": "viewer"}),
        ("Add dave.smith to this conversation.", {"username": "dave.smith", "role": "member"}),
        ("add erin into the chat as viewer", {"username": "erin", "role": "viewer"}),
        ("invite @assistant", None),
        ("hey bob, are you there?", None),
        ("add this to the list", None),
    ],
)
def test_the_offline_agent_reads_who_to_invite(text: str, arguments: dict[str, str] | None) -> None:
    assert find_invite(text) == arguments


async def collect(request: AgentInput, outcomes: list[ToolOutcome]) -> list[Any]:
    steps, sent = [], None
    generator = OfflineBackend().steps(request, default_registry())
    try:
        while True:
            step = await generator.asend(sent)
            steps.append(step)
            sent = outcomes.pop(0) if isinstance(step, CallTool) else None
    except StopAsyncIteration:
        return steps


def answer_of(steps: list[Any]) -> str:
    return "".join(s.text for s in steps if isinstance(s, AnswerChunk))


async def test_the_offline_agent_asks_then_answers_from_the_decision(settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    request = AgentInput("r", "c", 1, "@assistant invite @bob")
    steps = await collect(request, [ToolOutcome(True, {"added": "bob", "role": "member"})])
    assert isinstance(steps[0], Think)
    call = steps[1]
    assert call == CallTool("call_1", "invite_member", {"username": "bob", "role": "member"}, state=call.state)
    assert call.state == {"arguments": {"username": "bob", "role": "member"}}
    # Resumed after the pause with each possible outcome: no new call, an answer from the outcome.
    for outcome, said in [
        (ToolOutcome(True, {"added": "bob", "role": "viewer"}), "Done: bob is now in this conversation as viewer."),
        (ToolOutcome(False, {"error": "alice rejected it, so it was not run"}), "I did not add bob: alice rejected"),
    ]:
        resumed = AgentInput("r", "c", 1, "@assistant invite @bob", resume=Resume("call_1", call.state, outcome))
        steps = await collect(resumed, [])
        assert not [s for s in steps if isinstance(s, CallTool)]
        assert answer_of(steps).startswith(said)


def test_the_openai_backend_state_round_trips_through_json() -> None:
    # The state must survive the database's JSON column.
    run = _RunState.start("system", AgentInput("r", "c", 1, "hi", [{"role": "user", "content": "earlier"}]))
    run.used_call_ids = {"call_a", "call_b"}
    run.prompt_tokens, run.completion_tokens, run.usage_reported = 5, 3, True
    state = json.loads(json.dumps(run.snapshot(2)))
    resumed = _RunState.start(None, AgentInput("r", "c", 1, "hi", resume=Resume("call_a", state, ToolOutcome(True, 4))))
    assert resumed.messages == [*run.messages, {"role": "tool", "tool_call_id": "call_a", "content": "4"}]
    assert (resumed.next_round, resumed.used_call_ids) == (3, {"call_a", "call_b"})
    assert (resumed.prompt_tokens, resumed.completion_tokens, resumed.usage_reported) == (5, 3, True)
