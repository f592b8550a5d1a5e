"""The agent worker: `python manage.py runworker agent-runs`.

Channels' worker routes messages on the `agent-runs` channel to `RunWorkerConsumer`; our
`runworker` command (agents/management/commands/runworker.py) also starts the run supervisor
when the worker starts, so queued and orphaned runs are handled even before any doorbell rings.
"""

from __future__ import annotations

from typing import Any

from channels.consumer import AsyncConsumer
from channels.worker import Worker

from agents.runner import AGENT_RUNS_CHANNEL, get_supervisor

__all__ = ["AGENT_RUNS_CHANNEL", "AgentWorker", "RunWorkerConsumer"]


class RunWorkerConsumer(AsyncConsumer):
    async def run_wake(self, message: dict[str, Any]) -> None:
        get_supervisor().wake()

    async def run_cancel(self, message: dict[str, Any]) -> None:
        run_id = message.get("run_id")
        if isinstance(run_id, str):
            get_supervisor().cancel(run_id)


class AgentWorker(Worker):
    async def handle(self) -> None:
        if AGENT_RUNS_CHANNEL in self.channels:
            get_supervisor()  # starts claiming, heart-beating and reaping now
        await super().handle()
