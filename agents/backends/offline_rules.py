"""The offline agent's analyst rules: which tool a prompt asks for, with which arguments. First match wins:

1. "what did @bob say [about X]"                        -> member_said
2. "summarize", "recap", "tl;dr", "catch me up", "what did I miss" [in the last N hours/days, today]
                                                         -> conversation_summary
3. a plain search request ("search for", "find", "look up", "mention", "said about"), or one across
   conversations ("everywhere", "across conversations", "all my conversations") -> None here: the offline
   agent's own search rule takes it (agents/backends/offline.py)
4. cutting spend ("cut", "reduce", "save", "cheaper", "optimise", "recommend")
                                                         -> spend_recommendations (enterprise tier)
5. change over time ("trend", "slower", "spike", "week over week", "anomaly", "getting worse")
                                                         -> workspace_trends (pro tier)
6. a workspace figure ("spend", "cost", "tokens", "who uses", "how many", "messages", "runs", "latency",
   "errors", "usage", "analytics")                       -> workspace_report, with a focus for the answer
Periods named in the prompt ("this month", "last week", "last 7 days", "yesterday", ...) become the tool's
`period` (agents/analyst.py PERIODS); none named: the last 30 days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MEMBER_SAID = re.compile(
    r"\bwhat\s+(?:did|has|does|do)\s+@?(?P<user>[\w.+-]+)\s+(?:say|said|write|wrote|think|mention)"
    r"(?:\s+(?:about|on|regarding|of)\s+(?P<topic>.+))?",
    re.IGNORECASE | re.DOTALL,
)
NOT_A_MEMBER = frozenset(
    "i we you they he she it the assistant anyone anybody everyone everybody people someone somebody".split()
)
SUMMARY = re.compile(
    r"\b(summar\w*|recap|tl;?dr|catch me up|what did i miss|what have i missed|digest|key points)\b", re.IGNORECASE
)
PLAIN_SEARCH = re.compile(
    r"^\W*(?:@\w+\s+)?(?:search|find|look\s*up|lookup)\b|\b(?:mention(?:ed)?|said about)\b", re.IGNORECASE
)
# "across conversations, find …", "in all my chats, who mentioned …": a search, never a workspace figure.
SEARCH_EVERYWHERE = re.compile(
    r"\b(?:everywhere|across\s+(?:all\s+)?(?:of\s+)?(?:my\s+|our\s+|the\s+)?(?:conversations|chats|rooms)|"
    r"(?:in\s+)?(?:all|every)\s+(?:of\s+)?(?:my\s+|our\s+|the\s+)?(?:conversations?|chats?|rooms?))\b",
    re.IGNORECASE,
)
SEARCH_VERB = re.compile(r"\b(?:search|find|look\s*up|lookup|mention(?:ed)?|said about)\b", re.IGNORECASE)
RECOMMEND = re.compile(
    r"\b(cut|cutting|reduce|reducing|lower|save|saving|savings|cheaper|optimi[sz]e\w*|recommend\w*|"
    r"spend less|wasting|waste|too expensive|economi[sz]e)\b",
    re.IGNORECASE,
)
TRENDS = re.compile(
    r"\b(trends?|trending|slower|faster|slowing|slowed|getting\s+(?:worse|better|slower|faster|more)|"
    r"week[\s-]+over[\s-]+week|spikes?|spiked|spiking|anomal\w*|unusual|compared?\s+(?:to|with)\s+last\s+week|"
    r"increas\w*|decreas\w*|going up|going down|changed?)\b",
    re.IGNORECASE,
)
REPORT = re.compile(
    r"\b(spend|spent|spending|costs?|costing|bills?|billing|money|dollars|budget|tokens?|usage|"
    r"who\s+(?:uses|used|asks|asked)|most\s+active|top\s+users?|heaviest|power users?|"
    r"how\s+many|messages|active\s+users|runs|latency|fast|speed|response\s+times?|time\s+to\s+first\s+token|"
    r"errors?|failures?|failed|failing|stats|statistics|analytics|activity|busiest|workspace)\b",
    re.IGNORECASE,
)
FOCUS = [
    ("users", re.compile(r"\b(who|users?|people|most active|heaviest)\b", re.IGNORECASE)),
    ("errors", re.compile(r"\b(errors?|failures?|failed|failing)\b", re.IGNORECASE)),
    ("latency", re.compile(r"\b(latency|fast|speed|slow\w*|response\s+times?|first\s+token)\b", re.IGNORECASE)),
    ("cost", re.compile(r"\b(spend|spent|spending|costs?|bills?|billing|money|dollars|budget|tokens?)\b", re.I)),
]
LAST_N = re.compile(r"\b(?:last|past|previous)\s+(?P<n>\d{1,3})\s+(?P<unit>hours?|days?|weeks?)\b", re.IGNORECASE)
NAMED_PERIODS = [
    (re.compile(r"\blast\s+month\b|\bprevious\s+month\b", re.I), "last_month"),
    (re.compile(r"\bthis\s+month\b|\bmonth\s+to\s+date\b", re.I), "this_month"),
    (re.compile(r"\blast\s+week\b|\bprevious\s+week\b", re.I), "last_week"),
    (re.compile(r"\bthis\s+week\b", re.I), "this_week"),
    (re.compile(r"\byesterday\b", re.I), "yesterday"),
    (re.compile(r"\btoday\b", re.I), "today"),
    (re.compile(r"\bquarter\b", re.I), "last_90_days"),
]
SUMMARY_HOURS = {"today": 24, "yesterday": 48, "this_week": 168, "last_week": 336}


@dataclass(frozen=True)
class Plan:
    tool: str
    arguments: dict[str, Any]
    thought: str
    # What the answer leads with (workspace_report: counts, cost, users, latency or errors).
    focus: str = "counts"
    extra: dict[str, Any] = field(default_factory=dict)


def find_period(text: str) -> str | None:
    """The analyst period (agents/analyst.py PERIODS) a prompt names, or None."""
    last_n = LAST_N.search(text)
    if last_n is not None:
        n, unit = int(last_n["n"]), last_n["unit"].lower()
        days = n * 7 if unit.startswith("week") else max(1, n // 24) if unit.startswith("hour") else n
        return "last_7_days" if days <= 7 else "last_30_days" if days <= 30 else "last_90_days"
    for pattern, period in NAMED_PERIODS:
        if pattern.search(text):
            return period
    return None


def summary_hours(text: str) -> int | None:
    last_n = LAST_N.search(text)
    if last_n is not None:
        n, unit = int(last_n["n"]), last_n["unit"].lower()
        hours = n if unit.startswith("hour") else n * 24 if unit.startswith("day") else n * 168
        return max(1, min(hours, 720))
    period = find_period(text)
    return SUMMARY_HOURS.get(period or "")


def _focus(text: str) -> str:
    for name, pattern in FOCUS:
        if pattern.search(text):
            return name
    return "counts"


def plan(prompt: str) -> Plan | None:
    """The analyst tool a prompt asks for, or None (another rule of the offline agent, or none, applies)."""
    said = MEMBER_SAID.search(prompt)
    if said is not None and said["user"].lower() not in NOT_A_MEMBER:
        user = said["user"].rstrip(".?!")
        topic = (said["topic"] or "").strip(" ?.!\"'")[:200]
        about = f" about {topic!r}" if topic else ""
        args = {"username": user, "topic": topic} if topic else {"username": user}
        return Plan("member_said", args, f"The message asks what {user} said{about}; I will read their messages.")
    if SUMMARY.search(prompt):
        hours = summary_hours(prompt)
        span = f"the last {hours} hours of " if hours else ""
        return Plan(
            "conversation_summary",
            {"hours": hours} if hours else {},
            f"The message asks for a summary; I will pick out {span}this conversation's speakers, decisions and"
            " open questions.",
        )
    if PLAIN_SEARCH.search(prompt) or (SEARCH_EVERYWHERE.search(prompt) and SEARCH_VERB.search(prompt)):
        return None
    period = find_period(prompt)
    args = {"period": period} if period else {}
    named = (period or "last_30_days").replace("_", " ")
    if RECOMMEND.search(prompt):
        return Plan(
            "spend_recommendations",
            args,
            f"The message asks how to spend less; I will price the workspace's runs of the {named} again with"
            " cheaper models.",
            focus="cost",
        )
    if TRENDS.search(prompt):
        return Plan(
            "workspace_trends",
            {},
            "The message asks how things changed; I will compare the workspace's last whole weeks.",
            focus=_focus(prompt),
        )
    if REPORT.search(prompt):
        focus = _focus(prompt)
        return Plan(
            "workspace_report",
            args,
            f"The message asks about the workspace's {focus if focus != 'counts' else 'activity'}; I will read its"
            f" figures for the {named}.",
            focus=focus,
        )
    return None
