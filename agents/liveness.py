"""Whether a run's runner is still there: its heartbeats, the reaper of runs whose runner died
(agent_failed `worker_lost`), and the hand-off of the runs a stopping runner holds (SIGTERM).

A stopping runner (agents/runner.py `RunSupervisor.shutdown`) hands each run it holds to
`run_stop_for_shutdown`, which decides under the run's locks (conversation, then run: the order of
every run service, `services._lock_run`):

- a run nobody saw anything of but its `agent_started` (no other event of the run in the log: no
  agent_thinking, agent_delta, tool or approval event) goes back to the queue, `agent_started` and
  `started_at` kept. The next claim (any runner's) runs it from the start without a second
  `agent_started`, so docs/protocol.md §4 holds: one `agent_started` first, one terminal event last.
- any other run ends with agent_failed `worker_shutdown`: what members saw cannot be taken back, and
  starting over would show a second answer to one question in one run.
- a run someone asked to cancel ends as they asked, with agent_cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from django.db import transaction
from django.utils import timezone

from agents import services
from agents.models import AgentRun, RunStatus
from chat.models import Event
from chat.publishing import RunnerRung, after_commit
from chat.wire.frames import StoredEvent

WORKER_SHUTDOWN_MESSAGE = "the agent worker was restarted; ask again"


def runs_heartbeat(*, run_ids: list[str]) -> list[str]:
    """Refresh the heartbeat of the runs this runner holds; return those asked to cancel."""
    if not run_ids:
        return []
    AgentRun.objects.filter(id__in=run_ids, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
    return [str(i) for i in AgentRun.objects.filter(id__in=run_ids, cancel_requested=True).values_list("id", flat=True)]


def runs_reap_lost(*, lost_after_s: float) -> list[StoredEvent]:
    """Fail every running run whose runner stopped heart-beating: agent_failed(worker_lost)."""
    cutoff = timezone.now() - timedelta(seconds=lost_after_s)
    lost = list(
        AgentRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).values_list("id", "conversation_id")
    )
    events = []
    for run_id, conversation_id in lost:
        event = services.run_fail(
            run_id=str(run_id),
            conversation_id=str(conversation_id),
            code="worker_lost",
            message="the worker running this agent stopped responding",
            only_if_stale_before=cutoff,
        )
        if event is not None:
            events.append(event)
    if events:
        after_commit(RunnerRung())  # the failed runs' conversations may start their next run
    return events


def runs_held(*, worker_id: str) -> list[str]:
    """The running runs the runner `worker_id` holds (by the database, not by its tasks)."""
    return [
        str(i)
        for i in AgentRun.objects.filter(status=RunStatus.RUNNING, worker_id=worker_id).values_list("id", flat=True)
    ]


@dataclass(frozen=True)
class ShutdownOutcome:
    # handed_back: queued again; failed: agent_failed worker_shutdown; cancelled: as a member asked;
    # gone: no longer this runner's (ended meanwhile, or reaped and claimed by another runner).
    how: Literal["handed_back", "failed", "cancelled", "gone"]
    event: StoredEvent | None = None


@transaction.atomic
def run_stop_for_shutdown(*, run_id: str, worker_id: str) -> ShutdownOutcome:
    """The runner `worker_id` is stopping and no longer runs `run_id`: hand it back to the queue or
    end it (module docstring). Never agent_cancelled unless a member asked for it."""
    conversation_id = AgentRun.objects.filter(id=run_id).values_list("conversation_id", flat=True).first()
    if conversation_id is None:
        return ShutdownOutcome("gone")
    run = services._lock_run(run_id, str(conversation_id))
    if run.status != RunStatus.RUNNING or run.worker_id != worker_id:
        return ShutdownOutcome("gone")
    after_commit(RunnerRung())  # a runner still up takes it (or the conversation's next run) now
    if run.cancel_requested:
        return ShutdownOutcome(
            "cancelled", services.run_finish_cancelled(run_id=run_id, conversation_id=str(conversation_id))
        )
    if not Event.objects.filter(run_id=run.id).exclude(type="agent_started").exists():
        run.status = RunStatus.QUEUED
        run.worker_id = ""
        run.heartbeat_at = None
        run.save(update_fields=["status", "worker_id", "heartbeat_at"])
        return ShutdownOutcome("handed_back")
    event = services.run_fail(
        run_id=run_id, conversation_id=str(conversation_id), code="worker_shutdown", message=WORKER_SHUTDOWN_MESSAGE
    )
    return ShutdownOutcome("failed", event)
