"""Six weeks of the demo team's past assistant use, for the analytics page and the analyst (`seed_demo`).

Deterministic (a fixed random seed; days counted back from today, UTC) and written in bulk (a few queries, well
under a second). What it holds, so that the analyst's answers have something to find:
- alice, bob, carol and dave asking the assistant on weekdays in three past threads, on gpt-4o (long answers),
  gpt-4o-mini and the offline agent, some runs calling calculator, search_history or current_time, a few failed;
- a cost spike three weeks ago (a batch of long gpt-4o summaries), a slow week two weeks ago (first tokens ~3x
  later) and a run of failed search_history calls four weeks ago;
- most gpt-4o runs call no tool: "how can we cut our AI spend?" finds the saving of answering them with
  gpt-4o-mini.
The threads have no members (nobody's conversation list shows them); their messages carry no sequence number,
so no event log is implied: they exist for the figures.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.utils import timezone

from agents.models import AgentRun, RunStatus, ToolCall, ToolCallStatus
from chat.models import AuthorKind, Conversation, Message, User, Workspace

HISTORY_TITLES = ("Past: Q4 planning", "Past: support escalations", "Past: pricing research")
WEEKS = 6
SPIKE_WEEKS_AGO, SLOW_WEEKS_AGO, ERROR_WEEKS_AGO = 3, 2, 4
QUESTIONS = (
    "Draft a reply to the customer about the delayed invoice.",
    "Summarise yesterday's incident report in five bullet points.",
    "What is 18 % of 2450?",
    "Search the thread for the renewal date.",
    "Rewrite this paragraph for the release notes.",
    "What time is it in Tokyo?",
    "Give me three options for the pricing page headline.",
)
# (model, share of runs, prompt tokens range, completion tokens range)
# (prompts carry the thread's context: thousands of tokens are usual)
MODELS = (
    ("gpt-4o", 0.5, (3000, 9000), (300, 900)),
    ("gpt-4o-mini", 0.3, (2000, 6000), (200, 600)),
    ("offline", 0.2, (10, 40), (20, 60)),
)
PEOPLE = (("alice", 0.4), ("bob", 0.25), ("carol", 0.2), ("dave", 0.15))
TOOLS = ("calculator", "search_history", "current_time")


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def seed_history(*, workspace: Workspace, users: dict[str, User]) -> bool:
    """Write the history into `workspace` unless it is there already; True when it was written."""
    if Conversation.objects.filter(workspace=workspace, title=HISTORY_TITLES[0]).exists():
        return False
    rng = random.Random(14)
    threads = [
        Conversation.objects.create(workspace=workspace, title=title, agent="assistant", created_by=users["alice"])
        for title in HISTORY_TITLES
    ]
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    plans: list[tuple[datetime, str, str, int, int, int, list[tuple[str, bool]], str]] = []
    for day_back in range(WEEKS * 7, 0, -1):
        day = today - timedelta(days=day_back)
        if day.weekday() >= 5:
            continue
        # 1 for last week (Monday to Sunday), 2 for the week before, ...
        weeks_ago = (today - timedelta(days=today.weekday()) - (day - timedelta(days=day.weekday()))).days // 7
        for _ in range(rng.randint(20, 30)):
            at = day + timedelta(hours=rng.randint(8, 17), minutes=rng.randint(0, 59))
            model = _pick(rng, tuple((m[0], m[1]) for m in MODELS))
            spec = next(m for m in MODELS if m[0] == model)
            prompt, completion = rng.randint(*spec[2]), rng.randint(*spec[3])
            ttft = rng.randint(250, 700) * (3 if weeks_ago == SLOW_WEEKS_AGO else 1)
            calls = [(rng.choice(TOOLS), True)] if rng.random() < 0.25 else []
            if weeks_ago == ERROR_WEEKS_AGO and rng.random() < 0.3:
                calls.append(("search_history", False))
            status = RunStatus.FAILED if rng.random() < 0.03 else RunStatus.COMPLETED
            plans.append((at, _pick(rng, PEOPLE), model, prompt, completion, ttft, calls, status))
        if weeks_ago == SPIKE_WEEKS_AGO and day.weekday() == 2:  # Wednesday: the batch of long summaries
            for i in range(150):
                at = day + timedelta(hours=14, minutes=i)
                plans.append(
                    (at, "alice", "gpt-4o", rng.randint(12000, 20000), rng.randint(1500, 2500), 600, [], "completed")
                )
    triggers = Message.objects.bulk_create(
        Message(
            conversation=threads[i % len(threads)],
            author=users[who],
            author_kind=AuthorKind.USER,
            text=rng.choice(QUESTIONS),
        )
        for i, (_, who, *_rest) in enumerate(plans)
    )
    runs = AgentRun.objects.bulk_create(
        AgentRun(
            conversation_id=trigger.conversation_id,
            trigger_message=trigger,
            requested_by=users[who],
            agent="assistant",
            status=status,
            model=model if status == RunStatus.COMPLETED else "",
            usage={"prompt_tokens": prompt, "completion_tokens": completion} if status == RunStatus.COMPLETED else {},
            first_token_ms=ttft,
            started_at=at,
            finished_at=at + timedelta(milliseconds=ttft + completion * 15),
            error_code="" if status == RunStatus.COMPLETED else "llm_unavailable",
        )
        for trigger, (at, who, model, prompt, completion, ttft, _calls, status) in zip(triggers, plans, strict=True)
    )
    for trigger, run, plan in zip(triggers, runs, plans, strict=True):
        trigger.created_at = run.created_at = plan[0]
    Message.objects.bulk_update(triggers, ["created_at"])
    AgentRun.objects.bulk_update(runs, ["created_at"])
    ToolCall.objects.bulk_create(
        ToolCall(
            run=run,
            call_id=f"call_{n + 1}",
            tool=tool,
            arguments={},
            result={"ok": True} if ok else {"error": "the search took longer than 3000 ms and was stopped"},
            status=ToolCallStatus.OK if ok else ToolCallStatus.ERROR,
            started_at=plan[0] + timedelta(milliseconds=200),
            finished_at=plan[0] + timedelta(milliseconds=300 if ok else 3200),
            duration_ms=100 if ok else 3000,
        )
        for run, plan in zip(runs, plans, strict=True)
        for n, (tool, ok) in enumerate(plan[6])
    )
    return True
