"""Workspace usage figures the analyst needs beyond the analytics report (enterprise/analytics.py): who asked for
the runs, and the runs that called no tool. Same rules as the report: a workspace's conversations (deleted ones
included: their usage happened), completed runs only for tokens and cost, priced with `token_cost`, by creation
time within a `Range` (UTC days).

Access is the asker's, not an owner's: any active member of the workspace may ask the analyst about it, with the
figures their own tier shows (`member_access`). A non-member gets NotFound, whether or not the workspace exists.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import BigIntegerField, Count, Exists, OuterRef, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce

from agents.models import AgentRun, RunStatus, ToolCall
from chat.errors import NotFound
from chat.models import User, WorkspaceMember
from chat.tiers import limits_for
from enterprise.analytics import Access, Range, token_cost

_TOKENS = {
    "prompt": Coalesce(Sum(Cast(KT("usage__prompt_tokens"), BigIntegerField())), 0),
    "completion": Coalesce(Sum(Cast(KT("usage__completion_tokens"), BigIntegerField())), 0),
    "n": Count("id"),
}


def member_access(*, user_id: int, workspace_id: uuid.UUID) -> Access:
    """The workspace with the asker's own tier and limits, if the asker is an active member of it."""
    member = (
        WorkspaceMember.objects.select_related("workspace")
        .filter(workspace_id=workspace_id, user_id=user_id, user__is_active=True)
        .first()
    )
    if member is None:
        raise NotFound()
    tier = User.objects.filter(id=user_id).values_list("tier", flat=True).first() or "free"
    return Access(workspace=member.workspace, tier=tier, limits=limits_for(tier))


def _completed(workspace_id: uuid.UUID, span: Range) -> Any:
    return AgentRun.objects.filter(
        conversation__workspace_id=workspace_id,
        status=RunStatus.COMPLETED,
        created_at__gte=span.start,
        created_at__lt=span.end,
    )


def usage_by_requester(*, workspace_id: uuid.UUID, span: Range, limit: int = 5) -> list[dict[str, Any]]:
    """Completed runs per person who asked for them, most runs first: runs, tokens and cost."""
    rows = (
        _completed(workspace_id, span)
        .values("requested_by__username", "model")
        .annotate(**_TOKENS)
        .order_by("requested_by__username", "model")
    )
    people: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["requested_by__username"] or "(deleted user)"
        cell = people.setdefault(name, {"username": name, "runs": 0, "tokens": 0, "cost": 0.0})
        cell["runs"] += row["n"]
        cell["tokens"] += row["prompt"] + row["completion"]
        cell["cost"] += token_cost(row["model"] or "unknown", row["prompt"], row["completion"]) or 0.0
    ranked = sorted(people.values(), key=lambda c: (-c["runs"], -c["cost"], c["username"]))
    for cell in ranked:
        cell["cost"] = round(cell["cost"], 6)
    return ranked[:limit]


def usage_without_tools(*, workspace_id: uuid.UUID, span: Range) -> dict[str, Any]:
    """Completed runs that called no tool, by model (runs, prompt and completion tokens), and how many completed
    runs there were in all: what a cheaper model could have answered."""
    completed = _completed(workspace_id, span)
    total = completed.count()
    rows = (
        completed.filter(~Exists(ToolCall.objects.filter(run_id=OuterRef("pk"))))
        .values("model")
        .annotate(**_TOKENS)
        .order_by("model")
    )
    by_model = {
        (row["model"] or "unknown"): {
            "runs": row["n"],
            "prompt_tokens": row["prompt"],
            "completion_tokens": row["completion"],
        }
        for row in rows
    }
    return {"completed_runs": total, "by_model": by_model}
