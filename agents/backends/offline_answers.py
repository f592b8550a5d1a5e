"""The offline analyst's answers, worded from its tools' results only (agents/analyst.py,
agents/conversation_digest.py): every figure in an answer is a number of a result, formatted, never computed
anew, so it can be checked against the tool_completed event.

Workspace answers are structured: Finding, Evidence (figures with their period), Action, Impact; every answer
ends by naming the tools it used and the period they read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.backends.base import ToolOutcome
from agents.backends.offline_rules import Plan

CAPABILITY_NAMES = {"trends": "Trends", "recommendations": "Spend recommendations"}


def money(value: float) -> str:
    return f"${value:,.2f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g} %"


def _period(query: dict[str, Any]) -> str:
    label = str(query.get("period", "")).replace("_", " ")
    return f"{label} ({query['from']} to {query['to']}, UTC)"


def tools_line(calls: list[tuple[str, ToolOutcome | None]]) -> str:
    parts = []
    for tool, outcome in calls:
        query = outcome.result.get("query") if outcome and outcome.ok and isinstance(outcome.result, dict) else None
        if query and query.get("from") and query.get("to"):
            parts.append(f"{tool} ({_period(query)})")
        else:
            parts.append(tool)
    return "Tools used: " + ", ".join(parts) + "."


def failure(outcome: ToolOutcome | None) -> str | None:
    if outcome is None:
        return "no result"
    if not outcome.ok or not isinstance(outcome.result, dict):
        result = outcome.result
        return str(result.get("error")) if isinstance(result, dict) else str(result)
    return None


def beyond_tier(outcome: ToolOutcome | None) -> bool:
    """Whether the tool answered that what was asked is not part of the asker's tier."""
    return (
        outcome is not None
        and outcome.ok
        and isinstance(outcome.result, dict)
        and outcome.result.get("allowed") is False
    )


def structured(finding: str, evidence: list[str], action: str, impact: str) -> str:
    lines = [f"Finding: {finding}", "Evidence:"] + [f"- {e}" for e in evidence]
    return "\n".join(lines + [f"Action: {action}", f"Impact: {impact}"])


# --- workspace_report ------------------------------------------------------------------------------------------
def _where(result: dict[str, Any]) -> str:
    ws = result["workspace"]
    return "your personal workspace" if ws["personal"] else f"the workspace “{ws['name']}”"


def _counts_line(totals: dict[str, Any]) -> str:
    runs = totals.get("runs", {})
    by_status = ", ".join(f"{n} {status}" for status, n in runs.items() if n)
    return (
        f"{totals.get('messages', 0)} messages from {totals.get('active_users', 0)} active users;"
        f" {sum(runs.values())} assistant runs ({by_status or 'none'})"
    )


def _hidden(result: dict[str, Any], section: str, what: str) -> str:
    tier = result["hidden_sections"].get(section)
    higher = f"the {tier} tier shows {what}" if tier else f"no tier shows {what}"
    return f"{what.capitalize()} are not part of the {result['tier']} tier's figures; {higher}."


def _upgrade(result: dict[str, Any], section: str) -> str:
    tier = result["hidden_sections"].get(section)
    return f"A {tier} account sees these figures: ask an owner about upgrading." if tier else "None."


def report_answer(plan: Plan, result: dict[str, Any]) -> str:
    totals, query, focus = result["totals"], result["query"], plan.focus
    period, where = _period(query), _where(result)
    evidence = [f"{_counts_line(totals)} in the {period}"]
    sections = result["sections"]
    if "usage" in sections:
        models = sorted(totals["by_model"].items(), key=lambda kv: -kv[1]["cost"])
        evidence.append(
            f"{totals['tokens']['prompt'] + totals['tokens']['completion']:,} tokens"
            f" ({totals['tokens']['prompt']:,} prompt, {totals['tokens']['completion']:,} completion),"
            f" costing {money(totals['cost'])}"
        )
        evidence += [
            f"{m}: {money(c['cost'])} for {c['runs']} runs ({c['prompt_tokens'] + c['completion_tokens']:,} tokens)"
            for m, c in models
        ]
    if "latency" in sections:
        ttft = totals["time_to_first_token_ms"]
        evidence.append(f"time to first token p50 {ttft['p50']} ms, p95 {ttft['p95']} ms over {ttft['samples']} runs")
    if "tool_errors" in sections:
        errors = totals["tool_errors"]
        listed = ", ".join(f"{tool} {n}" for tool, n in errors.items())
        evidence.append(f"{sum(errors.values())} failed tool calls{': ' + listed if listed else ''}")
    action, impact = "None needed from these figures alone.", "Not applicable: this is a report of what happened."
    if focus == "cost" and "usage" in sections:
        models = sorted(totals["by_model"].items(), key=lambda kv: -kv[1]["cost"])
        top = models[0] if models else None
        share = ""
        if top and totals["cost"]:
            share = f", {round(top[1]['cost'] / totals['cost'] * 100)} % of it on {top[0]}"
        finding = f"In the {period}, {where} spent {money(totals['cost'])} on AI{share}."
        action = "Ask “how can we cut our AI spend?” to see which runs a cheaper model could answer."
    elif focus == "cost":
        finding, action = _hidden(result, "usage", "tokens and cost by model"), _upgrade(result, "usage")
    elif focus == "users":
        top_users = result["top_users"]
        runs = sum(c["runs"] for c in top_users)
        if top_users:
            first = top_users[0]
            finding = f"{first['username']} uses the assistant most: {first['runs']} completed runs in the {period}."
        else:
            finding = f"Nobody used the assistant in {where} in the {period}."
        evidence += [
            f"{c['username']}: {c['runs']} runs" + (f", {money(c['cost'])}" if "cost" in c else "") for c in top_users
        ]
        impact = f"The top {len(top_users)} account for {runs} completed runs." if top_users else impact
    elif focus == "latency" and "latency" in sections:
        ttft = totals["time_to_first_token_ms"]
        finding = (
            f"In the {period}, the assistant's first token came after {ttft['p50']} ms at the median,"
            f" {ttft['p95']} ms at p95."
        )
        action = "Ask “is the assistant getting slower?” for the week-over-week trend."
    elif focus == "latency":
        finding, action = _hidden(result, "latency", "time to first token (p50, p95)"), _upgrade(result, "latency")
    elif focus == "errors" and "tool_errors" in sections:
        errors = totals["tool_errors"]
        worst = max(errors.items(), key=lambda kv: kv[1]) if errors else None
        finding = (
            f"{sum(errors.values())} tool calls failed in the {period}, most of them {worst[0]} ({worst[1]})."
            if worst
            else f"No tool call failed in the {period}."
        )
        action = f"Look at {worst[0]}'s failed calls in the admin (Tool calls, status error)." if worst else action
    elif focus == "errors":
        finding = _hidden(result, "tool_errors", "failed tool calls by tool")
        action = _upgrade(result, "tool_errors")
    else:
        finding = f"In the {period}, {where} had {_counts_line(totals)}."
    return structured(finding, evidence, action, impact)


# --- workspace_trends ------------------------------------------------------------------------------------------
METRIC_WORDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "messages": ("messages", str),
    "runs": ("runs", str),
    "cost": ("cost", money),
    "ttft_p95_ms": ("time to first token p95", lambda v: f"{v} ms"),
    "tool_errors": ("failed tool calls", str),
}


def _times(anomaly: dict[str, Any]) -> str:
    return f"{anomaly['ratio']}×" if anomaly["ratio"] is not None else "far above"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _fmt(metric: str, value: Any) -> str:
    return "no data" if value is None else METRIC_WORDS[metric][1](value)


def trends_answer(plan: Plan, result: dict[str, Any]) -> str:
    changes = {c["metric"]: c for c in result["week_over_week"]}
    anomalies = result["anomalies"]
    wanted = {"latency": "ttft_p95_ms", "cost": "cost", "errors": "tool_errors"}.get(plan.focus, "runs")
    metric = wanted if wanted in changes else "runs"
    change = changes.get(metric)
    evidence = [
        f"week of {w['week']}: " + ", ".join(f"{METRIC_WORDS[m][0]} {_fmt(m, w[m])}" for m in w if m != "week")
        for w in result["weeks"]
    ]
    if change is None:
        return structured("There are not enough whole weeks to compare.", evidence, "Ask again next week.", "None.")
    name = METRIC_WORDS[metric][0]
    direction = "rose" if (change["change_pct"] or 0) > 0 else "fell" if (change["change_pct"] or 0) < 0 else "held"
    finding = (
        f"Week over week, {name} {direction} from {_fmt(metric, change['before'])} (week of {change['from_week']})"
        f" to {_fmt(metric, change['after'])} (week of {change['to_week']}), {pct(change['change_pct'])}."
    )
    if metric == "ttft_p95_ms":
        slower = (change["change_pct"] or 0) > 0
        verdict = "Yes, the assistant is getting slower. " if slower else "No, the assistant is not getting slower. "
        finding = verdict + finding
    if wanted not in changes:
        finding = f"{wanted.replace('_', ' ')} is not part of the {result['tier']} tier's figures. " + finding
    evidence += [
        f"spike: {METRIC_WORDS[a['metric']][0]} in the week of {a['week']} was {_fmt(a['metric'], a['value'])},"
        f" {_times(a)} the median week ({_fmt(a['metric'], a['baseline_median'])})"
        for a in anomalies
    ]
    # The question's own metric first: "any cost spikes?" is answered by the cost spike.
    ours = [a for a in anomalies if a["metric"] == metric]
    if ours:
        a = ours[0]
        finding += (
            f" The week of {a['week']} stands out: {name} {_fmt(metric, a['value'])}, {_times(a)} the median week"
            f" ({_fmt(metric, a['baseline_median'])})."
        )
    if anomalies:
        a = (ours or anomalies)[0]
        action = f"Look at what ran in the week of {a['week']}: its {METRIC_WORDS[a['metric']][0]} spiked."
        impact = f"That week's {METRIC_WORDS[a['metric']][0]} was {_times(a)} a usual week's."
    else:
        action, impact = "Nothing stands out; no week spiked.", "None."
    return structured(finding, evidence, action, impact)


# --- spend_recommendations -------------------------------------------------------------------------------------
def recommendations_answer(result: dict[str, Any]) -> str:
    period = _period(result["query"])
    evidence = [
        f"{result['completed_runs']} completed runs cost {money(result['total_cost'])} in the {period}",
    ] + [f"{m}: {money(c['cost'])} for {c['runs']} runs" for m, c in sorted(result["by_model"].items())]
    recs = result["recommendations"]
    if not recs:
        return structured(
            f"I found no cheaper way to answer the {period}'s runs with the models in the price table.",
            evidence,
            "None.",
            "None.",
        )
    r = recs[0]
    finding = (
        f"In the {period}, {pct(r['share_of_runs_pct'])} of completed runs ({r['runs']} of {r['completed_runs']})"
        f" called no tool and averaged {r['avg_tokens']:,} tokens; answering them with {r['model_to']} instead of"
        f" {r['model_from']} would have cost {money(r['saving'])} less (−{pct(r['saving_pct_of_total_cost'])} of all"
        " AI spend)."
    )
    prices = r["prices_per_1k"]
    evidence += [
        f"those runs used {r['prompt_tokens']:,} prompt and {r['completion_tokens']:,} completion tokens:"
        f" {money(r['cost_now'])} at {r['model_from']}'s price (${prices[r['model_from']]['prompt_per_1k']} /"
        f" ${prices[r['model_from']]['completion_per_1k']} per 1k), {money(r['cost_alternative'])} at"
        f" {r['model_to']}'s (${prices[r['model_to']]['prompt_per_1k']} / ${prices[r['model_to']]['completion_per_1k']}"
        " per 1k)"
    ]
    evidence += [
        f"also: {o['model_from']} → {o['model_to']} for {o['runs']} tool-free runs saves {money(o['saving'])}"
        for o in recs[1:]
    ]
    action = f"Route questions that need no tool to {r['model_to']}; keep {r['model_from']} for runs that call tools."
    impact = (
        f"{money(r['saving'])} less over the period (−{pct(r['saving_pct_of_these_runs'])} on those runs,"
        f" −{pct(r['saving_pct_of_total_cost'])} of the total)."
    )
    return structured(finding, evidence, action, impact)


def refusal_answer(result: dict[str, Any]) -> str:
    name = CAPABILITY_NAMES[result["capability"]]
    higher = result["available_in"]
    offer = f"The {higher} tier would show {result['would_show']}." if higher else "No tier offers it here."
    return f"{name} are not part of your {result['tier']} tier. {offer}"


# --- conversation tools ----------------------------------------------------------------------------------------
def summary_answer(result: dict[str, Any]) -> str:
    if not result["messages"]:
        return "There is nothing to summarise: no messages in that time."
    people = result["people"]
    lines = [
        f"Finding: {result['messages']} messages from {len(people)} authors between {result['first_at']}"
        f" and {result['last_at']} (UTC).",
        "Who said what:",
    ] + [f"- {p['author']} ({_n(p['messages'], 'message')}), latest: “{p['latest']}”" for p in people]
    lines.append("Decisions:" if result["decisions"] else "Decisions: none stated.")
    lines += [f"- {d['author']}: “{d['text']}”" for d in result["decisions"]]
    lines.append("Open questions:" if result["open_questions"] else "Open questions: none.")
    lines += [f"- {q['author']}: “{q['text']}”" for q in result["open_questions"]]
    if result["open_questions"]:
        lines.append(f"Action: answer the {len(result['open_questions'])} open question(s).")
    return "\n".join(lines)


def said_answer(result: dict[str, Any]) -> str:
    query, matches = result["query"], result["matches"]
    about = f" about '{query['topic']}'" if query["topic"] else ""
    if not matches:
        return f"{query['username']} said nothing{about} in this conversation."
    order = "best match first" if query["topic"] else "newest first"
    head = f"{query['username']} said{about} ({len(matches)} message{'s' if len(matches) != 1 else ''}, {order}):"
    return "\n".join([head] + [f"- {m['created_at']}: “{m['text']}”" for m in matches])


def analyst_answer(plan: Plan, calls: list[tuple[str, ToolOutcome | None]]) -> str:
    """The answer to an analyst plan from its calls' outcomes: the plan's tool first, then, when that was beyond
    the asker's tier, the workspace_report of what the tier does show."""
    tool, outcome = calls[0]
    problem = failure(outcome)
    if problem is not None:
        return f"I could not answer that: {problem}\n{tools_line(calls)}"
    assert outcome is not None
    result = outcome.result
    if result.get("allowed") is False:
        text = refusal_answer(result)
        if len(calls) > 1 and failure(calls[1][1]) is None:
            shown = calls[1][1]
            assert shown is not None
            text += "\nWhat your tier shows:\n" + report_answer(plan, shown.result)
    elif tool == "workspace_report":
        text = report_answer(plan, result)
    elif tool == "workspace_trends":
        text = trends_answer(plan, result)
    elif tool == "spend_recommendations":
        text = recommendations_answer(result)
    elif tool == "conversation_summary":
        text = summary_answer(result)
    else:
        text = said_answer(result)
    return f"{text}\n{tools_line(calls)}"
