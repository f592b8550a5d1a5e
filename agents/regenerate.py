"""Regenerate: answer an ended run's question again, in a new run (docs/protocol.md §3, extension).

The new run is queued like any other (agents.services.run_enqueue) on the same trigger message, so
the runner gives the agent the question as it reads now (after an edit too) and the conversation
before it; the old run and its answer stay. Its `agent_started` names the run it answers again
(`regenerates`: the newest earlier run on the same question, agents.services._append_started).

Check, then do, like `send`: `regenerate_check` refuses what can be refused before the caller spends
agent-run quota, `run_regenerate` checks again under the conversation's lock and queues the run.
The caller has checked membership and that the caller's role may start runs.
"""

from __future__ import annotations

import uuid

from django.db import transaction

from agents.models import TERMINAL_STATUSES, AgentRun
from agents.services import run_enqueue
from chat.errors import NotFound, ServiceError
from chat.models import AgentMode, Conversation
from chat.selectors import parse_uuid


def _question(conversation_id: str, run_id: object) -> tuple[AgentRun, str]:
    """The ended run of this conversation and the agent that answers there now; NotFound for an id
    that is not a run of it, ServiceError for a run that cannot be answered again."""
    run = (
        AgentRun.objects.select_related("trigger_message")
        .filter(conversation_id=conversation_id, id=parse_uuid(run_id))
        .first()
    )
    if run is None:
        raise NotFound()
    if run.status not in TERMINAL_STATUSES:
        raise ServiceError("conflict", f"run is {run.status}: only an ended run can be regenerated")
    question = run.trigger_message
    if question is None or question.deleted_at is not None:
        raise ServiceError("conflict", "the question of this run was deleted")
    agent, mode = Conversation.objects.filter(id=conversation_id).values_list("agent", "agent_mode").get()
    if not agent or mode == AgentMode.OFF:
        raise ServiceError("conflict", "the assistant is off in this conversation")
    return run, agent


def regenerate_check(*, conversation_id: str, run_id: object) -> None:
    """Raise what `run_regenerate` would refuse, without writing anything."""
    _question(conversation_id, run_id)


@transaction.atomic
def run_regenerate(*, conversation_id: str, run_id: object, user_id: int) -> uuid.UUID:
    """Queue a new run on the ended run's question, started by `user_id`; its id."""
    # The conversation's lock, as the claim takes it: two regenerates of one run both queue, in order.
    Conversation.objects.select_for_update().filter(id=conversation_id).first()
    run, agent = _question(conversation_id, run_id)
    assert run.trigger_message_id is not None  # _question refused a run without its question
    return run_enqueue(
        conversation_id=conversation_id,
        trigger_message_id=run.trigger_message_id,
        requested_by_id=user_id,
        agent=agent,
    )
