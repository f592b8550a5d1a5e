"""The built-in offline agent: no network, real tools, clear rules.

Rules, first match wins:
1. the prompt contains an arithmetic expression  -> calculator
2. it asks to invite / add someone ("invite @bob", "add bob to this conversation [as viewer]")
                                                 -> invite_member, which waits for an owner's approval
3. it asks for the time or date                  -> current_time
4. it asks to search / find / what was said      -> search_history
5. otherwise                                     -> a short answer saying what it can do
The answer is built from what the tools returned and streamed word by word. After an approval the
run resumes here with the call's outcome (`AgentInput.resume`) and answers from it.

Its "model rounds" for the run's trace are the stretches between tool calls: deciding on a call,
then answering from its outcome (`chat offline-rules` spans, like a real model's completions).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any

from django.conf import settings

from agents.backends.base import AgentInput, AnswerChunk, CallTool, Step, Think, ToolOutcome, Usage
from monitoring import tracing

# The model name the offline agent's round spans carry.
MODEL = "offline-rules"

# Digits joined by operators, optionally with parentheses/sqrt: "17 * 23", "(2+3)^2", "sqrt(16)".
EXPRESSION = re.compile(r"(?:sqrt\s*)?[\(\d](?:[\d\s\.\+\-\*/%\^×÷\(\)]|sqrt)*[\d\)]")
TIME_WORDS = re.compile(r"\b(time|date|today|day is it|clock)\b", re.IGNORECASE)
INVITE = re.compile(
    r"\b(?:invite\s+@?(?P<invitee>[\w.+-]+)|add\s+@?(?P<added>[\w.+-]+)\s+(?:to|into)\s+(?:this|the)\s+"
    r"(?:conversation|chat|room))(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
AS_VIEWER = re.compile(r"\bas\s+(?:an?\s+)?viewer\b", re.IGNORECASE)
SEARCH = re.compile(
    r"\b(?:search|find|look up|lookup|mention(?:ed)?|said about)\b(?:\s+(?:for|about|the history for))?\s+(?P<q>.+)",
    re.IGNORECASE,
)


def find_expression(text: str) -> str | None:
    for match in EXPRESSION.finditer(text):
        candidate = match.group(0).strip()
        if re.search(r"\d", candidate) and re.search(r"[\+\-\*/%\^×÷]|sqrt", candidate):
            return candidate
    return None


def find_invite(text: str) -> dict[str, str] | None:
    """invite_member's arguments if the text asks to add someone to the conversation."""
    match = INVITE.search(text)
    if match is None:
        return None
    username = (match["invitee"] or match["added"]).rstrip(".")
    if not username or username.lower() == "assistant":
        return None
    return {"username": username, "role": "viewer" if AS_VIEWER.search(match["rest"]) else "member"}


class OfflineBackend:
    name = "offline"

    async def steps(self, request: AgentInput, tools: Any) -> AsyncGenerator[Step, ToolOutcome | None]:
        """The rules' steps, with a round span from the start or a tool's outcome to the next call or the end."""
        rules = self._steps(request, tools)
        outcome: ToolOutcome | None = None
        round_no = 0
        try:
            while True:
                round_no += 1
                with tracing.llm_round(self.name, MODEL, round_no) as span:
                    while True:
                        try:
                            step = await rules.asend(outcome)
                        except StopAsyncIteration:
                            span.round_end(finish_reason="stop")
                            return
                        if isinstance(step, CallTool):
                            span.round_end(finish_reason="tool_calls")
                            break
                        outcome = yield step
                outcome = yield step
        finally:
            await rules.aclose()

    async def _steps(self, request: AgentInput, tools: Any) -> AsyncGenerator[Step, ToolOutcome | None]:
        prompt = request.prompt.strip()
        expression = find_expression(prompt)
        invite = find_invite(prompt)
        search = SEARCH.search(prompt)
        if request.resume is not None:  # the invitation was decided; the run goes on from here
            answer = _invite_answer(request.resume.state.get("arguments", {}), request.resume.outcome)
        elif expression:
            yield Think(f"The message asks for a calculation; I will evaluate {expression} with the calculator.")
            outcome = yield CallTool("call_1", "calculator", {"expression": expression})
            yield Think("The calculator returned; writing the answer.")
            if outcome and outcome.ok:
                answer = f"{expression} = {outcome.result['value']}"
            else:
                answer = f"I could not evaluate {expression}: {_error(outcome)}"
        elif invite:
            who = invite["username"]
            yield Think(f"The message asks to add {who} to this conversation; an owner has to approve that.")
            outcome = yield CallTool("call_1", "invite_member", invite, state={"arguments": invite})
            answer = _invite_answer(invite, outcome)
        elif TIME_WORDS.search(prompt):
            yield Think("The message asks for the current time; I will read the clock.")
            outcome = yield CallTool("call_1", "current_time", {})
            answer = (
                f"It is {outcome.result['utc']} (UTC), a {outcome.result['weekday']}."
                if outcome and outcome.ok
                else f"I could not read the clock: {_error(outcome)}"
            )
        elif search:
            query = search.group("q").strip(" ?.!\"'")[:200] or prompt[:200]
            yield Think(f"The message asks about earlier messages; I will search the history for {query!r}.")
            outcome = yield CallTool("call_1", "search_history", {"query": query})
            if outcome and outcome.ok and outcome.result["matches"]:
                lines = [f"- {m['author']}: {m['text']}" for m in outcome.result["matches"]]
                answer = f"I found {len(lines)} message(s) about {query!r}:\n" + "\n".join(lines)
            elif outcome and outcome.ok:
                answer = f"I found no messages about {query!r}."
            else:
                answer = f"The search failed: {_error(outcome)}"
        else:
            yield Think("No tool applies to this message; answering with what I can do.")
            answer = (
                'I am the offline assistant. I can calculate ("what is 17 * 23?"), tell the time '
                '("what time is it?"), search this conversation ("search for invoices") and, once an '
                'owner approves, add someone to it ("invite @bob").'
            )
        delay = settings.AGENT_OFFLINE_TOKEN_DELAY_MS / 1000
        words = re.findall(r"\S+\s*", answer) or [answer]
        for word in words:
            if delay:
                await asyncio.sleep(delay)
            yield AnswerChunk(word)
        yield Usage(prompt_tokens=len(prompt.split()), completion_tokens=len(words))


def _error(outcome: ToolOutcome | None) -> str:
    if outcome is None:
        return "no result"
    result = outcome.result
    return str(result.get("error")) if isinstance(result, dict) else str(result)


def _invite_answer(asked: dict[str, Any], outcome: ToolOutcome | None) -> str:
    if outcome is not None and outcome.ok and isinstance(outcome.result, dict):
        return f"Done: {outcome.result.get('added')} is now in this conversation as {outcome.result.get('role')}."
    return f"I did not add {asked.get('username', 'them')}: {_error(outcome)}"
