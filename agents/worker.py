"""The agent worker: `python manage.py runworker agent-runs`.

Channels' worker routes messages on the `agent-runs` channel to `RunWorkerConsumer`; our
`runworker` command (agents/management/commands/runworker.py) also starts the run supervisor
when the worker starts, so queued and orphaned runs are handled even before any doorbell rings.

The database is the queue and the supervisor polls it, so the `agent-runs` channel is only a
doorbell: a channel layer that fails (Redis down when the worker starts, or restarting) must not
end the worker, which would take every run it holds down with it. The listener retries with
backoff instead, and meanwhile runs are claimed by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.worker import Worker

from agents.runner import get_supervisor, supervisors
from chat.errors import ErrorClass
from chat.infra.doorbells import AGENT_RUNS_CHANNEL
from chat.infra.error_recovery import backoff_delay, classify
from chat.services.compaction import compact_when_due
from chat.services.conversation_admin import purge_deleted_when_due
from chat.services.retention import purge_expired_when_due
from enterprise.sla import sample_availability
from monitoring.config import option
from monitoring.event_monitor import sweep
from monitoring.metrics import metrics
from monitoring.performance import monitor as performance_monitor
from monitoring.performance import watch_event_loop

__all__ = ["AGENT_RUNS_CHANNEL", "AgentWorker", "RunWorkerConsumer"]

logger = logging.getLogger(__name__)

# Listening again after a channel layer failure: full-jitter backoff from 0.5 s, capped at 5 s. A
# listener that then ran this long without failing starts its backoff afresh.
LISTEN_RETRY_BASE_S = 0.5
LISTEN_RETRY_MAX_S = 5.0
LISTEN_HEALTHY_AFTER_S = 30.0


class RunWorkerConsumer(AsyncConsumer):
    async def run_wake(self, message: dict[str, Any]) -> None:
        get_supervisor().wake()

    async def run_cancel(self, message: dict[str, Any]) -> None:
        run_id = message.get("run_id")
        if isinstance(run_id, str):
            get_supervisor().cancel(run_id)


class AgentWorker(Worker):
    async def arun(self) -> None:
        """channels' worker until SIGTERM or SIGINT; then the run supervisor stops claiming and hands
        off the runs it holds (`RunSupervisor.shutdown`, bounded by SHUTDOWN_BOUND_S) and `run()`
        returns: the process exits 0 (a deploy, or `serve` stopping or restarting it)."""
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, signalled.set)
        serving = asyncio.create_task(super().arun(), name="worker")
        waiting = asyncio.create_task(signalled.wait(), name="worker-signals")
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():  # the worker ended by itself (a bug): as channels would, raise it
            waiting.cancel()
            return serving.result()
        logger.info("agent worker stopping on a signal")
        supervisor = supervisors.current()
        if supervisor is not None:
            await supervisor.shutdown()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        return None

    async def handle(self) -> None:
        if AGENT_RUNS_CHANNEL in self.channels:
            get_supervisor()  # starts claiming, heart-beating and reaping now
            self.monitoring = asyncio.create_task(monitoring_loop(), name="monitoring-sweep")
        await super().handle()

    async def listener(self, channel: str) -> None:
        """channels' listener, restarted after a transient channel layer failure instead of
        ending the process. Anything else (a bug, a message without a type) still ends it."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await super().listener(channel)
                return
            except Exception as exc:
                if classify(exc) is not ErrorClass.TRANSIENT:
                    raise
                if time.monotonic() - started > LISTEN_HEALTHY_AFTER_S:
                    attempt = 0
                metrics.inc("worker_listen_errors")
                logger.warning("listening on %s failed (%s); runs are claimed by polling meanwhile", channel, exc)
                _forget_unsubscribed_channel(self.channel_layer, channel)
                await asyncio.sleep(
                    backoff_delay(
                        attempt, base_delay_s=LISTEN_RETRY_BASE_S, max_delay_s=LISTEN_RETRY_MAX_S, rng=random.random
                    )
                )
                attempt += 1


async def monitoring_loop() -> None:
    """The monitoring sweep (stuck and incomplete runs, slow first events, SLO burn, this process's
    performance, alert delivery; then the purges and the compaction of ended runs' deltas) every
    `sweep_interval_s`, and the event loop's lag sampled meanwhile. Off the shared database thread: a
    sweep must not queue behind the runs' writes, nor they behind it (it may send mail). A failed sweep
    is logged and the next one tries again."""
    lag = asyncio.create_task(watch_event_loop(performance_monitor), name="monitoring-loop-lag")
    try:
        while True:
            await asyncio.sleep(float(option("sweep_interval_s")))
            try:
                # This minute's availability sample for the SLA reports (enterprise/sla.py): first, so that a
                # sweep that fails for another reason does not count the minute as down.
                await database_sync_to_async(sample_availability, thread_sensitive=False)()
                await database_sync_to_async(sweep, thread_sensitive=False)()
                # Deleted conversations past their retention: at most once an hour per worker.
                await database_sync_to_async(purge_deleted_when_due, thread_sensitive=False)()
                # History past its tier's retention: a pass at most once an hour, 20 s of work per sweep.
                await database_sync_to_async(purge_expired_when_due, thread_sensitive=False)()
                # Ended runs' answer chunks, a few minutes after the end: a pass at most once a minute, 5 s of work.
                await database_sync_to_async(compact_when_due, thread_sensitive=False)()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if classify(exc) is ErrorClass.TRANSIENT:
                    logger.warning("monitoring sweep failed: a dependency is unavailable (%s)", type(exc).__name__)
                else:
                    logger.exception("monitoring sweep failed")
    finally:
        lag.cancel()


def _forget_unsubscribed_channel(channel_layer: Any, channel: str) -> None:
    """channels_redis' pub/sub layer registers a channel's queue *before* its SUBSCRIBE; when the
    SUBSCRIBE fails, the queue stays and every later `receive` waits on it without subscribing
    again (deaf forever). Dropping the queue makes the next `receive` subscribe. Only touches a
    channel the layer's shard has not subscribed; other layers are left alone."""
    with contextlib.suppress(Exception):
        layer = channel_layer._get_layer()
        shard = layer._get_shard(channel)
        if channel in layer.channels and channel not in shard._subscribed_to:
            del layer.channels[channel]
