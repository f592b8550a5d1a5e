"""`manage.py notifications_worker`: Web Push, email digests and agent_finished off the request path
(chat/realtime/notification_worker.py). `manage.py serve` starts one beside the servers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from django.core.management.base import BaseCommand

from chat.realtime.notification_worker import run_forever
from chat.services.notification_config import push_configured, unknown_options


class Command(BaseCommand):
    help = "Deliver notifications: Web Push, email digests, agent_finished."

    def handle(self, *args: Any, **options: Any) -> None:
        unknown = unknown_options()
        if unknown:
            self.stderr.write(f"NOTIFICATIONS_JSON: unknown key(s) ignored: {', '.join(unknown)}")
        if not push_configured():
            self.stdout.write("Web Push is off (no VAPID_PRIVATE_KEY); email digests and in-app only")
        asyncio.run(self._run())

    async def _run(self) -> None:
        task = asyncio.create_task(run_forever())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
