"""The run supervisor: claims queued runs, executes them as tasks, heart-beats them, stops them on
cancel, and fails runs whose runner died (worker_lost). On SIGTERM (`shutdown`) it stops claiming
and hands the runs it holds back to the queue or ends them (agents/liveness.py), within
SHUTDOWN_BOUND_S.

It lives in the agent worker process (`manage.py runworker agent-runs`) or, in embedded mode and
tests, in the server process itself (AGENT_RUNNER=inprocess). Either way the database is the
queue; the doorbells the services ring after commit (`chat.publishing`) only say
"look now", and every loop also polls, so a lost doorbell costs at most a poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import uuid

from channels.db import database_sync_to_async
from django.conf import settings

from agents import approvals, liveness, priority, services
from agents.backends import get_backend
from agents.runtime import execute_run
from agents.tools import default_registry
from chat.errors import ErrorClass
from chat.infra.breakers import all_breakers
from chat.infra.error_recovery import classify
from chat.infra.per_loop import PerLoop
from chat.publishing import run_service
from chat.realtime import telemetry
from monitoring import tracing
from monitoring.health import publish_breakers, shared_state_max_age_s, withdraw_breakers
from monitoring.metrics.families import OTHER, preinitialise_known
from monitoring.metrics.runs import run_ended

logger = logging.getLogger(__name__)

# Queued runs are also looked for this often, in case a wake-up doorbell was lost.
POLL_INTERVAL_S = 1.0
# Approvals past their expiry are resolved this often (one indexed query when none are due).
APPROVAL_SWEEP_S = 1.0
# shutdown(): the runs' tasks get this long to stop, then the hand-offs this long (one transaction
# each); with withdrawing the breakers (1 s) it stays well under serve's 10 s before SIGKILL.
SHUTDOWN_TASKS_S = 2.0
SHUTDOWN_HAND_OFF_S = 3.0
SHUTDOWN_BOUND_S = SHUTDOWN_TASKS_S + SHUTDOWN_HAND_OFF_S + 1.0


class RunSupervisor:
    def __init__(self) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.backend = get_backend()
        self.tools = default_registry()
        self._breakers_changed = asyncio.Event()
        self._published: dict[str, str] = {}
        # Set by shutdown(): the runs' tasks, cancelled, then write nothing (the hand-off does).
        self.stopping = asyncio.Event()

    @property
    def started(self) -> bool:
        return bool(self._loops)

    def start(self) -> None:
        if self._loops or self.stopping.is_set():  # a doorbell must not restart a stopping runner
            return
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="runs-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="runs-heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="runs-reaper"),
            asyncio.create_task(self._breaker_loop(), name="runs-breakers"),
            asyncio.create_task(self._approval_loop(), name="runs-approvals"),
        ]
        telemetry.ensure_started("worker")  # loop lag, breaker states and process_* of this process
        tracing.enabled()  # reads OTEL_*: the SDK's import (~60 ms) is not the first run's to wait on
        preinitialise_known(tools=self.tools.names())
        logger.info("run supervisor %s started", self.worker_id)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the loops and the runs (each run writes agent_cancelled, unless `shutdown` stops
        them). Bounded in time."""
        tasks = [*self._loops, *self.tasks.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        if self._loops:
            # A stopped runner's view of the model must not keep /readyz degraded until it ages out.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await withdraw_breakers(self.worker_id)
        self._loops = []

    async def shutdown(self) -> dict[str, str]:
        """SIGTERM: stop claiming now, stop the runs' tasks without a terminal event of theirs, then
        hand each run back to the queue or end it (agents/liveness.py); never agent_cancelled unless
        a member asked. Within SHUTDOWN_BOUND_S; a run whose hand-off did not fit in it is left to
        the reaper (worker_lost). Returns each run's outcome."""
        self.stopping.set()
        held = set(self.tasks)
        await self.stop(timeout_s=SHUTDOWN_TASKS_S)
        outcomes: dict[str, str] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_HAND_OFF_S):
                # Also a claim that committed as its loop was cancelled: its run has no task here.
                with contextlib.suppress(Exception):
                    held |= set(await run_service(liveness.runs_held, worker_id=self.worker_id))
                for run_id in sorted(held):
                    try:
                        outcome = await run_service(
                            liveness.run_stop_for_shutdown, run_id=run_id, worker_id=self.worker_id
                        )
                    except Exception:
                        _log_loop_failure(f"handing off run {run_id} failed; the reaper ends it")
                        continue
                    outcomes[run_id] = outcome.how
                    if outcome.how == "failed":
                        run_ended("worker_shutdown", OTHER)
        logger.info("run supervisor %s stopped: %s", self.worker_id, outcomes or "no runs held")
        return outcomes

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, run_id: str) -> bool:
        task = self.tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def _claim_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel() that lands just
            # as the wake event fires, and stop() would then wait on this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.claim_available()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log_loop_failure("claiming runs failed; retrying")
                await asyncio.sleep(POLL_INTERVAL_S)

    async def claim_available(self) -> int:
        claimed_count = 0
        # settings.AGENT_MAX_CONCURRENT_RUNS: runs this runner executes at once; more wait in the queue.
        while len(self.tasks) < settings.AGENT_MAX_CONCURRENT_RUNS:
            # The last free slots may be reserved for the higher tiers (agents/priority.py).
            tiers = priority.claimable_tiers(settings.AGENT_MAX_CONCURRENT_RUNS - len(self.tasks))
            claimed = None
            if tiers is None:  # runs whose approval was decided first: people are waiting on them already
                claimed = await run_service(approvals.run_resume_next, worker_id=self.worker_id)
            if claimed is None:
                claimed = await run_service(services.run_claim_next, worker_id=self.worker_id, tiers=tiers)
            if claimed is None:
                break
            claimed_count += 1
            task = asyncio.create_task(
                execute_run(claimed, backend=self.backend, tools=self.tools, stopping=self.stopping),
                name=f"run-{claimed.run_id}",
            )
            self.tasks[claimed.run_id] = task
            task.add_done_callback(functools.partial(self._finished, claimed.run_id))
        return claimed_count

    def _finished(self, run_id: str, _task: asyncio.Task[None]) -> None:
        self.tasks.pop(run_id, None)
        self._wake.set()  # the conversation's next queued run may start
        if _breaker_states() != self._published:
            self._breakers_changed.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.AGENT_HEARTBEAT_S)
            try:
                # Not on the shared DB thread: queued behind many delta writes, a heartbeat could
                # arrive too late and the reaper would fail live runs.
                to_cancel = await database_sync_to_async(liveness.runs_heartbeat, thread_sensitive=False)(
                    run_ids=list(self.tasks)
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                _log_loop_failure("heartbeat failed")
                continue
            for run_id in to_cancel:  # a cancel doorbell we missed
                self.cancel(run_id)

    async def _breaker_loop(self) -> None:
        """Tell /readyz (answered by the web processes) whether this runner can reach the model:
        publish the breakers every heartbeat, and at once when a finished run changed one."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.AGENT_HEARTBEAT_S):
                    await self._breakers_changed.wait()
            self._breakers_changed.clear()
            states = _breaker_states()
            try:
                await publish_breakers(self.worker_id, max_age_s=shared_state_max_age_s())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: /readyz reports that through its own check
                logger.debug("could not publish breaker state: %s", type(exc).__name__)
                continue
            self._published = states

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, settings.AGENT_LOST_AFTER_S / 2))
            try:
                events = await run_service(liveness.runs_reap_lost, lost_after_s=settings.AGENT_LOST_AFTER_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log_loop_failure("reaping lost runs failed")
                continue
            if events:
                logger.warning("failed %d run(s) whose worker was lost", len(events))
                for _ in events:  # their requester's tier died with the runner that knew it
                    run_ended("worker_lost", OTHER)

    async def _approval_loop(self) -> None:
        """Expire approvals nobody decided in time; each expiry rings the runners, which resume
        the run (on whichever runner claims it first)."""
        while True:
            await asyncio.sleep(APPROVAL_SWEEP_S)
            try:
                await run_service(approvals.approvals_expire)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log_loop_failure("expiring approvals failed")


def _breaker_states() -> dict[str, str]:
    return {name: b.state for name, b in all_breakers().items()}


supervisors: PerLoop[RunSupervisor] = PerLoop(lambda: RunSupervisor())


def get_supervisor() -> RunSupervisor:
    supervisor = supervisors.get()
    supervisor.start()
    return supervisor


def _log_loop_failure(what: str) -> None:
    """A loop iteration failed: a dependency outage (transient) is one line per iteration, not a
    traceback a second; anything else is a bug and keeps its traceback."""

    exc = sys.exc_info()[1]
    if exc is not None and classify(exc) is ErrorClass.TRANSIENT:
        logger.warning("%s: a dependency is unavailable (%s)", what, type(exc).__name__)
    else:
        logger.exception(what)
