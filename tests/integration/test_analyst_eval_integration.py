"""The offline analyst's evaluation set: fixed prompts, each with the tools it must choose and the figures its
answer must carry, run against a workspace history this test writes into the real PostgreSQL database.

The expected figures are computed here from the history's own specification (plain Python over the runs this
test made: sums, the price table, linear-interpolated percentiles), never by the analytics code under test, so a
planner rule or a query that drifts shows up as a failed case. The set prints its pass rate and must pass >= 95 %.

The history (UTC): six whole ISO weeks (Mondays 2026-10-05 to 2026-11-09) of runs on each week's Tuesday —
gpt-4o without tools (alice), gpt-4o with a calculator call (bob), gpt-4o-mini without tools (carol), offline (bob),
one failed run (dave) — plus a cost spike (the week of 2026-10-26: 30 long gpt-4o runs), six failed search_history
calls (the week of 2026-11-02), a slow week (2026-11-09: every first token 3-4x later), and a few runs this week.
"Today" is Wednesday 2026-11-18 (the tools' clock).
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command

from agents.backends.base import AgentInput, AnswerChunk, CallTool
from agents.backends.offline import OfflineBackend
from agents.models import AgentRun, RunStatus, ToolCall, ToolCallStatus
from agents.runtime import execute_run
from agents.services import run_claim_next
from agents.tools import ToolContext, default_registry
from chat.management.commands.seed_demo import TEAM_TITLE
from chat.models import AuthorKind, Conversation, ConversationMember, Event, Message, Role, User
from chat.services.conversations import workspace_create, workspace_member_add
from tests.support import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
PRICES = {
    "offline": {"prompt_per_1k": 0.0, "completion_per_1k": 0.0},
    "gpt-4o-mini": {"prompt_per_1k": 0.00015, "completion_per_1k": 0.0006},
    "gpt-4o": {"prompt_per_1k": 0.0025, "completion_per_1k": 0.01},
}
MONDAYS = [date(2026, 10, 5) + timedelta(weeks=i) for i in range(6)]
SPIKE_WEEK, ERROR_WEEK, SLOW_WEEK = date(2026, 10, 26), date(2026, 11, 2), date(2026, 11, 9)
PASS_RATE = 0.95


@dataclass(frozen=True)
class RunSpec:
    at: datetime
    who: str
    model: str
    prompt: int
    completion: int
    ttft: int | None
    tool_ok: int = 0
    tool_failed: int = 0
    status: str = RunStatus.COMPLETED

    @property
    def cost(self) -> float:
        price = PRICES.get(self.model)
        return (
            0.0
            if price is None
            else self.prompt / 1000 * price["prompt_per_1k"] + self.completion / 1000 * price["completion_per_1k"]
        )


def history() -> list[RunSpec]:
    runs: list[RunSpec] = []
    for monday in MONDAYS:
        day = datetime.combine(monday + timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(hours=10)
        slow = 4 if monday == SLOW_WEEK else 1
        for i in range(8):
            runs.append(RunSpec(day + timedelta(minutes=i), "alice", "gpt-4o", 1000, 200, 400 * slow + i))
        for i in range(4):
            runs.append(RunSpec(day + timedelta(minutes=10 + i), "bob", "gpt-4o", 2000, 300, 500 * slow, tool_ok=1))
        for i in range(6):
            runs.append(RunSpec(day + timedelta(minutes=20 + i), "carol", "gpt-4o-mini", 600, 150, 300 * slow))
        for i in range(3):
            runs.append(RunSpec(day + timedelta(minutes=30 + i), "bob", "offline", 20, 30, 50 * slow))
        runs.append(RunSpec(day + timedelta(minutes=40), "dave", "", 0, 0, None, status=RunStatus.FAILED))
        if monday == SPIKE_WEEK:
            for i in range(30):
                runs.append(RunSpec(day + timedelta(hours=2, minutes=i), "alice", "gpt-4o", 3000, 800, 420))
        if monday == ERROR_WEEK:
            for i in range(6):
                runs.append(RunSpec(day + timedelta(hours=3, minutes=i), "bob", "gpt-4o-mini", 800, 100, 350, 0, 1))
    for i in range(5):  # this week, before today
        runs.append(RunSpec(datetime(2026, 11, 17, 9, i, tzinfo=UTC), "alice", "gpt-4o", 1000, 200, 410))
    return runs


RUNS = history()
CHAT = [  # (author, text), sent 5 hours before NOW, one a minute, in the room the questions are asked in
    ("bob", "Should we move the launch to Friday?"),
    ("alice", "Let's go with Thursday for the launch, the venue is booked."),
    ("carol", "Agreed. I will draft the announcement."),
    ("bob", "Who owns the pricing page copy?"),
    ("alice", "The budget for the launch event is 5000 dollars."),
    ("dave", "Invoices for October are in the shared drive."),
]
CHAT_AT = NOW - timedelta(hours=5)


# --- the expected figures, from the specification ------------------------------------------------------------
def days(period: str) -> tuple[date, date]:
    today = NOW.date()
    return {
        "this_month": (date(2026, 11, 1), today),
        "last_month": (date(2026, 10, 1), date(2026, 10, 31)),
        "last_7_days": (today - timedelta(days=6), today),
        "last_30_days": (today - timedelta(days=29), today),
        "this_week": (date(2026, 11, 16), today),
        "last_week": (date(2026, 11, 9), date(2026, 11, 15)),
        "today": (today, today),
        "yesterday": (today - timedelta(days=1), today - timedelta(days=1)),
    }[period]


def runs_in(period: str) -> list[RunSpec]:
    first, last = days(period)
    return [r for r in RUNS if first <= r.at.date() <= last]


def done(period: str) -> list[RunSpec]:
    return [r for r in runs_in(period) if r.status == RunStatus.COMPLETED]


def money(value: float) -> str:
    return f"${value:,.2f}"


def cost(period: str) -> str:
    return money(round(sum(r.cost for r in done(period)), 6))


def tokens(period: str) -> str:
    return f"{sum(r.prompt + r.completion for r in done(period)):,} tokens"


def chat_in(period: str) -> int:
    first, last = days(period)
    return len(CHAT) if first <= CHAT_AT.date() <= last else 0


def messages(period: str) -> str:
    return f"{len(runs_in(period)) + chat_in(period)} messages"


def active(period: str) -> str:
    who = {r.who for r in runs_in(period)} | ({a for a, _ in CHAT} if chat_in(period) else set())
    return f"{len(who)} active users"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    at = fraction * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (at - low), 1)


def ttft(period: str, fraction: float) -> str:
    return f"{percentile([float(r.ttft) for r in runs_in(period) if r.ttft is not None], fraction)} ms"


def week_p95(monday: date) -> str:
    return f"{percentile([float(r.ttft) for r in RUNS if r.ttft is not None and r.at.date() - timedelta(days=r.at.weekday()) == monday], 0.95)} ms"  # noqa: E501


def top_user(period: str) -> str:
    counts: dict[str, int] = {}
    for r in done(period):
        counts[r.who] = counts.get(r.who, 0) + 1
    who, n = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return f"{who} uses the assistant most: {n} completed runs"


def saving(period: str) -> list[str]:
    plain = [r for r in done(period) if r.model == "gpt-4o" and not (r.tool_ok or r.tool_failed)]
    prompt, completion = sum(r.prompt for r in plain), sum(r.completion for r in plain)
    now = prompt / 1000 * 0.0025 + completion / 1000 * 0.01
    alt = prompt / 1000 * 0.00015 + completion / 1000 * 0.0006
    share = round(len(plain) / len(done(period)) * 100, 1)
    total = sum(r.cost for r in done(period))
    return [
        f"{share:g} %",
        f"({len(plain)} of {len(done(period))})",
        f"averaged {round((prompt + completion) / len(plain)):,} tokens",
        f"with gpt-4o-mini instead of gpt-4o would have cost {money(round(now - alt, 2))} less",
        f"−{round((now - alt) / total * 100, 1):g} % of all AI spend",
    ]


# --- the set --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    prompt: str
    asker: str
    tools: list[str]
    expect: Callable[[], list[str]]
    room: str = "ops"
    absent: tuple[str, ...] = ()


def c(prompt: str, asker: str, tools: list[str], *expect: str | Callable[[], Any], **kw: Any) -> Case:
    def figures() -> list[str]:
        out: list[str] = []
        for e in expect:
            value = e() if callable(e) else e
            out += value if isinstance(value, list) else [value]
        return out

    return Case(prompt, asker, tools, figures, **kw)


R, T, S = "workspace_report", "workspace_trends", "spend_recommendations"
CASES = [
    # figures (enterprise: every section)
    c(
        "How much did we spend on AI this month, and on what?",
        "carol",
        [R],
        lambda: f"spent {cost('this_month')}",
        "gpt-4o:",
        "gpt-4o-mini:",
        "Tools used: workspace_report (this month (2026-11-01 to 2026-11-18, UTC))",
    ),
    c("what did we spend last month?", "carol", [R], lambda: f"spent {cost('last_month')}"),
    c("How much money did the assistant cost in the last 7 days?", "carol", [R], lambda: cost("last_7_days")),
    c("what's our AI bill for the last 30 days?", "carol", [R], lambda: cost("last_30_days")),
    c("how many tokens did we use this month?", "carol", [R], lambda: tokens("this_month")),
    c("who uses the assistant most?", "carol", [R], lambda: top_user("last_30_days")),
    c("who used the assistant most last month?", "carol", [R], lambda: top_user("last_month")),
    c("how many messages were sent this week?", "carol", [R], lambda: messages("this_week")),
    c("how many active users this month?", "carol", [R], lambda: active("this_month")),
    c("show me the workspace analytics for last week", "carol", [R], lambda: messages("last_week")),
    c(
        "what is the latency of the assistant this month?",
        "carol",
        [R],
        lambda: f"{ttft('this_month', 0.5)} at the median",
        lambda: f"{ttft('this_month', 0.95)} at p95",
    ),
    c("how many tool errors did we have this month?", "carol", [R], "6 tool calls failed", "search_history (6)"),
    c("how fast is the assistant?", "carol", [R], lambda: f"{ttft('last_30_days', 0.95)} at p95"),
    c(
        "how many runs failed last month?",
        "carol",
        [R],
        lambda: f"{len(runs_in('last_month')) - len(done('last_month'))} failed",
    ),
    c("What's the token usage for today?", "carol", [R], "0 tokens"),
    c("How much did we spend yesterday?", "carol", [R], lambda: f"spent {cost('yesterday')}"),
    # trends (pro and above)
    c(
        "is the assistant getting slower?",
        "carol",
        [T],
        "Yes, the assistant is getting slower",
        lambda: week_p95(SLOW_WEEK),
        lambda: week_p95(ERROR_WEEK),
    ),
    c("any spikes in cost recently?", "carol", [T], "spike: cost in the week of 2026-10-26"),
    c("show me week over week trends", "carol", [T], "week of 2026-11-02", "week of 2026-11-09"),
    c("did tool errors spike?", "carol", [T], "spike: failed tool calls in the week of 2026-11-02 was 6"),
    c("are costs going up?", "carol", [T], "Week over week, cost fell"),
    c("how did usage change compared to last week?", "carol", [T], "Week over week"),
    c("is the assistant getting slower?", "alice", [T], "Yes, the assistant is getting slower"),
    # recommendations (enterprise)
    c(
        "how can we cut our AI spend?",
        "carol",
        [S],
        lambda: saving("last_30_days"),
        "Action: Route questions that need no tool to gpt-4o-mini",
    ),
    c("How can we reduce costs last month?", "carol", [S], lambda: saving("last_month")),
    c("any recommendations to save money this month?", "carol", [S], lambda: saving("this_month")),
    c("which model would make it cheaper?", "carol", [S], lambda: saving("last_30_days")),
    c("optimise our AI budget", "carol", [S], lambda: saving("last_30_days")),
    # beyond the tier: what the higher tier would show, and what this one does
    c(
        "how can we cut our AI spend?",
        "alice",
        [S, R],
        "not part of your pro tier",
        "The enterprise tier would show",
        lambda: cost("last_30_days"),
    ),
    c(
        "how can we cut our AI spend?",
        "bob",
        [S, R],
        "not part of your free tier",
        "The enterprise tier would show",
        "the pro tier shows tokens and cost by model",
        absent=("$",),
    ),
    c(
        "is the assistant getting slower?",
        "bob",
        [T, R],
        "Trends are not part of your free tier",
        "The pro tier would show",
    ),
    c(
        "how much did we spend this month?",
        "bob",
        [R],
        "not part of the free tier's figures; the pro tier shows",
        lambda: messages("this_month"),
        absent=("$",),
    ),
    c("how many tool errors this month?", "alice", [R], "the enterprise tier shows failed tool calls by tool"),
    c("who uses the assistant most?", "bob", [R], lambda: top_user("last_30_days"), absent=("$",)),
    # the conversation
    c(
        "summarize this conversation",
        "carol",
        ["conversation_summary"],
        "6 messages from 4 authors",
        "bob (2 messages), latest: “Who owns",
        "alice: “Let's go with Thursday",
        "carol: “Agreed.",
        "Open questions:\n- bob: “Who owns the pricing page copy?”",
    ),
    c("tl;dr of the last 24 hours", "alice", ["conversation_summary"], "6 messages from 4 authors"),
    c("catch me up", "dave", ["conversation_summary"], "Decisions:"),
    c("summarize this conversation", "bob", ["conversation_summary"], "Who owns the pricing page copy?"),
    c("what did @bob say about the launch?", "carol", ["member_said"], "Should we move the launch to Friday?"),
    c(
        "what did alice say about the budget?",
        "carol",
        ["member_said"],
        "The budget for the launch event",
        absent=("Thursday",),
    ),
    c("what did dave say?", "alice", ["member_said"], "Invoices for October are in the shared drive."),
    c("what did @carol say about pricing?", "bob", ["member_said"], "carol said nothing about 'pricing'"),
    # ranked: the message holding both words first, though the other is newer
    c(
        "what did alice say about the venue launch?",
        "carol",
        ["member_said"],
        "(2 messages, best match first):\n- ",
        "“Let's go with Thursday for the launch, the venue is booked.”\n- ",
    ),
    # search across conversations (enterprise): only conversations every member of the room can read
    c(
        "search all my conversations for invoices",
        "carol",
        ["search_history"],
        "2 messages mention 'invoices', across the conversations everyone here can read, best match first",
        "“finance”, alice",
        "The «invoices» for the venue are paid.",
        "«Invoices» for October",
        absent=("salary",),
    ),
    c("search everywhere for invoices", "carol", ["search_history"], "“finance”, alice", absent=("salary",)),
    c("find venue across all conversations", "carol", ["search_history"], "“finance”, alice", "the «venue» is booked"),
    c(
        "search all my conversations for salary",
        "carol",
        ["search_history"],
        "No messages mention 'salary' in the conversations everyone here can read yet.",
        absent=("private",),
    ),
    c(
        "search all my conversations for salary",
        "carol",
        ["search_history"],
        "1 message mentions 'salary', across the conversations everyone here can read",
        "“notes”, carol",
        "«salary»",
        room="personal",
    ),
    c(
        "search everywhere for invoices",
        "bob",
        ["search_history"],
        "Searching all conversations is not part of your free tier. The enterprise tier would show",
        "In this conversation:\n1 message mentions 'invoices', best match first",
        "«Invoices» for October",
        absent=("finance", "salary"),
    ),
    c(
        "search all my conversations for invoices",
        "frank",
        ["search_history"],
        "No messages mention 'invoices'",
        absent=("October", "finance"),
    ),
    # the earlier rules still answer
    c("what is 17 * 23?", "carol", ["calculator"], "17 * 23 = 391"),
    c("search for invoices", "alice", ["search_history"], "«Invoices» for October"),
    c("hello", "alice", [], "I am the offline assistant"),
    # who may read what
    c("how much did we spend this month?", "eve", [R], "not a member of this conversation's workspace"),
    c("how can we cut our AI spend?", "frank", [S], "this conversation was not found", absent=("$",)),
    c(
        "summarize this conversation",
        "frank",
        ["conversation_summary"],
        "this conversation was not found",
        absent=("pricing",),
    ),
    c("how much did we spend this month?", "carol", [R], "your personal workspace", "spent $0.00", room="personal"),
]


# --- the data --------------------------------------------------------------------------------------------------
def build(make_user: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, str]]:
    tiers = {
        "alice": "pro",
        "bob": "free",
        "carol": "enterprise",
        "dave": "pro",
        "eve": "enterprise",
        "frank": "enterprise",
    }
    users = {name: make_user(tier=tier) for name, tier in tiers.items()}
    workspace = workspace_create(owner=users["carol"], name="Acme")
    for name in ("alice", "bob", "dave"):
        workspace_member_add(workspace=workspace, actor=users["carol"], username=users[name].username, role=Role.MEMBER)
    members = tuple((users[n], "member") for n in ("alice", "bob", "dave"))
    ops = factories.conversation_sync(users["carol"], members=members, workspace_id=workspace.id, agent_mode="off")
    # eve reads the room but is no member of its workspace (added by hand: the services would refuse her).
    ConversationMember.objects.create(conversation_id=ops, user=users["eve"], role=Role.MEMBER)
    past = factories.conversation_sync(users["carol"], workspace_id=workspace.id, agent_mode="off", title="past")
    personal = factories.conversation_sync(users["carol"], agent_mode="off", title="mine")
    # Another room of all the ops room's members, and carol's own notes: what a search across conversations
    # may and may not show the ops room.
    finance = factories.conversation_sync(
        users["carol"], members=members, workspace_id=workspace.id, agent_mode="off", title="finance"
    )
    ConversationMember.objects.create(conversation_id=finance, user=users["eve"], role=Role.MEMBER)
    factories.message_sync(finance, users["alice"], "The invoices for the venue are paid.")
    notes = factories.conversation_sync(users["carol"], workspace_id=workspace.id, agent_mode="off", title="notes")
    factories.message_sync(notes, users["carol"], "invoices aside: my private salary notes")
    for i, (who, text) in enumerate(CHAT):
        sent = factories.message_sync(ops, users[who], text)
        Message.objects.filter(id=sent.message_id).update(created_at=CHAT_AT + timedelta(minutes=i))
    # In bulk (one query per table): created_at is set on insert (auto_now_add), so it is written again after.
    triggers = Message.objects.bulk_create(
        Message(conversation_id=past, author=users[r.who], author_kind=AuthorKind.USER, text="q") for r in RUNS
    )
    runs = AgentRun.objects.bulk_create(
        AgentRun(
            conversation_id=past,
            trigger_message=trigger,
            requested_by=users[r.who],
            agent="assistant",
            status=r.status,
            model=r.model,
            usage={"prompt_tokens": r.prompt, "completion_tokens": r.completion} if r.model else {},
            first_token_ms=r.ttft,
        )
        for r, trigger in zip(RUNS, triggers, strict=True)
    )
    for r, trigger, run in zip(RUNS, triggers, runs, strict=True):
        trigger.created_at = run.created_at = r.at
    Message.objects.bulk_update(triggers, ["created_at"])
    AgentRun.objects.bulk_update(runs, ["created_at"])
    ToolCall.objects.bulk_create(
        ToolCall(run=run, call_id=f"c{n}", tool=tool, status=status, started_at=r.at)
        for r, run in zip(RUNS, runs, strict=True)
        for n, (tool, status) in enumerate(
            [("calculator", ToolCallStatus.OK)] * r.tool_ok + [("search_history", ToolCallStatus.ERROR)] * r.tool_failed
        )
    )
    return users, {"ops": ops, "personal": personal}


async def ask(registry: Any, user: Any, conv: str, prompt: str) -> tuple[list[str], str]:
    steps = OfflineBackend().steps(
        AgentInput(run_id=str(uuid.uuid4()), conversation_id=conv, user_id=user.id, prompt=prompt), registry
    )
    tools, text = [], []
    step = await steps.asend(None)
    try:
        while True:
            if isinstance(step, CallTool):
                tools.append(step.tool)
                outcome = await registry.call(step.tool, step.arguments, ToolContext(user.id, conv))
                step = await steps.asend(outcome)
                continue
            if isinstance(step, AnswerChunk):
                text.append(step.text)
            step = await steps.asend(None)
    except StopAsyncIteration:
        pass
    return tools, "".join(text)


async def test_the_evaluation_set_passes(make_user: Any, settings: Any) -> None:
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    settings.AGENT_PRICES = PRICES
    assert len(CASES) >= 40
    users, rooms = await database_sync_to_async(build)(make_user)
    registry = default_registry(clock=lambda: NOW)
    failures = []
    for case in CASES:
        prompt = case.prompt.replace("@bob", f"@{users['bob'].username}").replace(
            "@carol", f"@{users['carol'].username}"
        )
        for name in ("alice", "dave"):
            prompt = prompt.replace(f"did {name} ", f"did {users[name].username} ")
        tools, answer = await ask(registry, users[case.asker], rooms[case.room], prompt)
        for name, user in users.items():
            answer = answer.replace(user.username, name)
        missing = [e for e in case.expect() if e not in answer]
        present = [a for a in case.absent if a in answer]
        if tools != case.tools or missing or present:
            failures.append(
                f"{case.asker}: {case.prompt!r}: tools {tools} (want {case.tools}), missing {missing}, "
                f"should be absent {present}\n{answer}"
            )
    rate = 1 - len(failures) / len(CASES)
    print(f"\nanalyst evaluation: {len(CASES) - len(failures)}/{len(CASES)} passed ({rate:.1%})")
    for failure in failures:
        print("FAILED", failure)
    assert rate >= PASS_RATE, "\n\n".join(failures)


async def test_the_demo_seed_gives_the_analyst_a_real_answer_and_runs_once(settings: Any) -> None:
    """`seed_demo` writes the team's history once (a second run adds nothing), and carol (enterprise) asking in
    the team room how to cut the AI spend, through the real runtime, gets every critical event and an answer whose
    saving is the one in the tool_completed result, which carries its query (workspace, days, functions)."""
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    settings.AGENT_RUNNER = "worker"  # the run stays queued until the test runs it

    def seed() -> tuple[int, str, Any]:
        call_command("seed_demo", stdout=io.StringIO())
        count = AgentRun.objects.count()
        call_command("seed_demo", stdout=io.StringIO())
        assert AgentRun.objects.count() == count
        room = Conversation.objects.get(title=TEAM_TITLE)
        return count, str(room.id), User.objects.get(username="carol")

    count, room, carol = await database_sync_to_async(seed)()
    assert count > 500
    sent = await factories.message(room, carol, "@assistant how can we cut our AI spend?")
    claimed = await database_sync_to_async(run_claim_next)(worker_id="analyst-test")
    assert claimed is not None
    assert claimed.run_id == sent.run_id
    await execute_run(claimed, backend=OfflineBackend(), tools=default_registry())

    def events() -> dict[str, Any]:
        return {e.type: e.data for e in Event.objects.filter(conversation_id=room, run_id=sent.run_id)}

    seen = await database_sync_to_async(events)()
    assert {"agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"} <= set(seen)
    result = seen["tool_completed"]["result"]
    assert seen["tool_completed"]["tool"] == "spend_recommendations"
    assert result["query"]["functions"] == ["workspace_analytics", "usage_without_tools", "token_cost"]
    assert result["query"]["period"] == "last_30_days"
    best = result["recommendations"][0]
    assert best["model_from"] == "gpt-4o"
    assert best["model_to"] == "gpt-4o-mini"
    # The saving is rounded once from the exact costs; the two costs shown are rounded each on their own.
    assert abs(best["saving"] - (best["cost_now"] - best["cost_alternative"])) <= 0.01
    answer = seen["agent_completed"]["text"]
    assert f"would have cost {money(best['saving'])} less" in answer, answer
    assert f"({best['runs']} of {best['completed_runs']})" in answer
    assert "Action: Route questions that need no tool to gpt-4o-mini" in answer
    assert "Tools used: spend_recommendations" in answer
