"""The built-in offline agent: no network, real tools, clear rules.

Rules, first match wins:
1. the prompt contains an arithmetic expression  -> calculator
2. it asks to invite / add someone ("invite @bob", "add bob to this conversation [as viewer]")
                                                 -> invite_member, which waits for an owner's approval
3. it asks to search / find / what was said      -> search_history; "search all my conversations for X",
                                                    "search everywhere for X", "find X across conversations"
                                                    -> scope "all" (enterprise; others get this conversation's
                                                    matches and what enterprise would show)
4. it asks for the workspace's figures, trends, savings, a summary or what someone said
                                                 -> the analyst's tools (agents/backends/offline_rules.py), whose
                                                    answers (offline_answers.py) say which tools they used
5. it asks for the time or date                  -> current_time, in the place it names ("in Tokyo",
                                                    "in America/Chicago"), else in the asker's zone
6. otherwise                                     -> a short answer saying what it can do
(Search before time: "did anyone mention the meeting time?" is a search.)
The answer is built from what the tools returned, in words a person would use (times on a 12-hour
clock with the weekday and the zone), and streamed word by word. After an approval the run resumes
here with the call's outcome (`AgentInput.resume`) and answers from it.

Its "model rounds" for the run's trace are the stretches between tool calls: deciding on a call,
then answering from its outcome (`chat offline-rules` spans, like a real model's completions).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

from django.conf import settings

from agents.backends.base import AgentInput, AnswerChunk, CallTool, Step, Think, ToolOutcome, Usage
from agents.backends.offline_answers import analyst_answer, beyond_tier
from agents.backends.offline_rules import SEARCH_EVERYWHERE, plan
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
# "... in Tokyo?", "... in America/New_York right now": the place a time question names.
PLACE = re.compile(
    r"\bin\s+(?P<place>[^\W\d][\w/+\-' .]*?)\s*(?:right\s+now|now|today|at\s+the\s+moment)?[\s?.!]*$",
    re.IGNORECASE,
)
# Common places by the IANA zone they keep; any IANA name is taken as written.
CITY_ZONES = {
    "amsterdam": "Europe/Amsterdam",
    "auckland": "Pacific/Auckland",
    "bangkok": "Asia/Bangkok",
    "beijing": "Asia/Shanghai",
    "berlin": "Europe/Berlin",
    "boston": "America/New_York",
    "buenos aires": "America/Argentina/Buenos_Aires",
    "cairo": "Africa/Cairo",
    "chicago": "America/Chicago",
    "delhi": "Asia/Kolkata",
    "denver": "America/Denver",
    "dubai": "Asia/Dubai",
    "hong kong": "Asia/Hong_Kong",
    "istanbul": "Europe/Istanbul",
    "jakarta": "Asia/Jakarta",
    "johannesburg": "Africa/Johannesburg",
    "lagos": "Africa/Lagos",
    "la": "America/Los_Angeles",
    "lisbon": "Europe/Lisbon",
    "london": "Europe/London",
    "los angeles": "America/Los_Angeles",
    "madrid": "Europe/Madrid",
    "melbourne": "Australia/Melbourne",
    "mexico city": "America/Mexico_City",
    "moscow": "Europe/Moscow",
    "mumbai": "Asia/Kolkata",
    "nairobi": "Africa/Nairobi",
    "new delhi": "Asia/Kolkata",
    "new york": "America/New_York",
    "nyc": "America/New_York",
    "paris": "Europe/Paris",
    "rome": "Europe/Rome",
    "san francisco": "America/Los_Angeles",
    "sao paulo": "America/Sao_Paulo",
    "são paulo": "America/Sao_Paulo",
    "seattle": "America/Los_Angeles",
    "seoul": "Asia/Seoul",
    "shanghai": "Asia/Shanghai",
    "singapore": "Asia/Singapore",
    "stockholm": "Europe/Stockholm",
    "sydney": "Australia/Sydney",
    "tokyo": "Asia/Tokyo",
    "toronto": "America/Toronto",
    "vancouver": "America/Vancouver",
    "vienna": "Europe/Vienna",
    "warsaw": "Europe/Warsaw",
    "zurich": "Europe/Zurich",
    "utc": "UTC",
    "gmt": "UTC",
}
MAX_PLACE_CHARS = 64  # current_time's timezone argument


def find_place(text: str) -> str | None:
    """The place a time question names, as written ("Tokyo", "Europe/Paris"), or None."""
    match = PLACE.search(text)
    if match is None:
        return None
    place = match["place"].strip(" .'")
    if place.lower().removeprefix("the ") in ("world", "morning", "afternoon", "evening", "my time zone", "my zone"):
        return None
    return place[:MAX_PLACE_CHARS] or None


def zone_for(place: str) -> str | None:
    """The IANA zone of a place: a known city, or a name that looks like an IANA zone (the tool checks it)."""
    known = CITY_ZONES.get(" ".join(place.lower().split()))
    if known is not None:
        return known
    return place if "/" in place and " " not in place else None


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
        analyst = plan(prompt) if not (expression or invite) else None
        cross = SEARCH_EVERYWHERE.search(prompt) is not None
        search = SEARCH.search(" ".join(SEARCH_EVERYWHERE.sub(" ", prompt).split()) if cross else prompt)
        place = find_place(prompt) if TIME_WORDS.search(prompt) else None
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
        elif analyst is not None:
            yield Think(analyst.thought)
            outcome = yield CallTool("call_1", analyst.tool, analyst.arguments)
            calls = [(analyst.tool, outcome)]
            if beyond_tier(outcome):
                # Beyond the asker's tier: say so, and show what the tier does include instead.
                yield Think("That is beyond the asker's tier; I will read the figures the tier does show.")
                period = analyst.arguments.get("period", "last_30_days")
                shown = yield CallTool("call_2", "workspace_report", {"period": period})
                calls.append(("workspace_report", shown))
            answer = analyst_answer(analyst, calls)
        elif search:
            query = search.group("q").strip(" ?.!,\"'")[:200] or prompt[:200]
            where = "every conversation all members here can read" if cross else "the history"
            yield Think(f"The message asks about earlier messages; I will search {where} for {query!r}.")
            args = {"query": query, "scope": "all"} if cross else {"query": query}
            outcome = yield CallTool("call_1", "search_history", args)
            answer = search_answer(query, outcome)
        elif TIME_WORDS.search(prompt):
            zone = zone_for(place) if place else None
            if zone:
                yield Think(f"The message asks for the time in {place}; I will read the clock in {zone}.")
            else:
                yield Think("The message asks for the current time; I will read the clock in the asker's zone.")
            outcome = yield CallTool("call_1", "current_time", {"timezone": zone} if zone else {})
            answer = _time_answer(outcome)
            if place and not zone and outcome and outcome.ok:
                answer = f"I don't know the time zone of {place}. For you: {answer}"
        else:
            yield Think("No tool applies to this message; answering with what I can do.")
            answer = (
                'I am the offline assistant. I can calculate ("what is 17 * 23?"), tell the time '
                '("what time is it?"), search this conversation ("search for invoices"; on the enterprise tier also '
                '"search everywhere for invoices"), summarise it '
                '("summarize this conversation", "what did @bob say about the launch?"), read the workspace\'s '
                'figures ("how much did we spend on AI this month?", "who uses the assistant most?", "is the '
                'assistant getting slower?", "how can we cut our AI spend?") and, once an owner approves, add '
                'someone to it ("invite @bob").'
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


def clock_time(moment: datetime) -> str:
    """ "3:42 PM": a 12-hour clock, as people say it."""
    hour = moment.hour % 12 or 12
    return f"{hour}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"


def spoken_time(iso: str) -> str:
    """ "3:42 PM on Tuesday, 1 December 2026" from an ISO time with its offset."""
    moment = datetime.fromisoformat(iso)
    return f"{clock_time(moment)} on {moment:%A}, {moment.day} {moment:%B %Y}"


def short_time(iso: str) -> str:
    """ "3:42 PM, Tue 1 Dec 2026": a message's time in a list."""
    moment = datetime.fromisoformat(iso)
    return f"{clock_time(moment)}, {moment:%a} {moment.day} {moment:%b %Y}"


def _time_answer(outcome: ToolOutcome | None) -> str:
    if outcome is None or not outcome.ok or not isinstance(outcome.result, dict):
        return f"I could not read the clock: {_error(outcome)}"
    result = outcome.result
    return f"It's {spoken_time(result['local'])} ({result['timezone']})."


def search_answer(query: str, outcome: ToolOutcome | None) -> str:
    """The matches as snippets (matched words between « and »), best first; across conversations each names
    its conversation; a scope beyond the asker's tier says so first, then this conversation's matches."""
    if outcome is None or not outcome.ok or not isinstance(outcome.result, dict):
        return f"The search failed: {_error(outcome)}"
    result = outcome.result
    head = ""
    refused = result.get("beyond_tier")
    if refused:
        offer = (
            f"The {refused['available_in']} tier would show {refused['would_show']}."
            if refused["available_in"]
            else "No tier offers it here."
        )
        head = (
            f"Searching all conversations is not part of your {refused['tier']} tier. {offer} In this conversation:\n"
        )
    everywhere = result.get("scope") == "all"
    matches = result["matches"]
    if not matches:
        where = " in the conversations everyone here can read" if everywhere else ""
        return f"{head}No messages mention '{query}'{where} yet."
    count = "1 message mentions" if len(matches) == 1 else f"{len(matches)} messages mention"
    lines = [
        f"- {'“' + m['conversation_title'] + '”, ' if everywhere else ''}{m['author']}"
        f" ({short_time(m['local_time'])}): {m['snippet']}"
        for m in matches
    ]
    where = ", across the conversations everyone here can read" if everywhere else ""
    zone = result.get("timezone", "UTC")
    return f"{head}{count} '{query}'{where}, best match first (times in {zone}):\n" + "\n".join(lines)


def _invite_answer(asked: dict[str, Any], outcome: ToolOutcome | None) -> str:
    if outcome is not None and outcome.ok and isinstance(outcome.result, dict):
        return f"Done: {outcome.result.get('added')} is now in this conversation as {outcome.result.get('role')}."
    return f"I did not add {asked.get('username', 'them')}: {_error(outcome)}"
