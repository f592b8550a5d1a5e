"""`manage.py webhooks_worker`: sends the webhook deliveries (enterprise/delivery.py) every WEBHOOKS_POLL_S.

`manage.py serve` starts one beside the servers (`--no-webhooks` leaves it out). A process of its own: a
receiver that answers slowly holds this worker's sender threads, never a chat server or the notifications
worker. All of its state is in the database (deliveries claimed with SKIP LOCKED and leased), so several
may run and a restarted one carries on; in embedded mode (SQLite, which has no row locks) run one.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from enterprise.delivery import deliver_due

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Send webhook deliveries (signed, retried on a schedule) to workspaces' endpoints."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        # SIGTERM (serve stopping) ends the loop between passes; the caller's handlers come back on return.
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.loop(stop, once=options["once"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def loop(self, stop: threading.Event, *, once: bool) -> None:
        logger.info("webhooks worker started")
        while not stop.is_set():
            done: dict[str, int] = {}
            try:
                done = deliver_due()
                if any(done.values()):
                    logger.info("webhooks pass: %s", done)
            except Exception:  # a database outage: logged, and the next pass tries again
                logger.exception("webhooks pass failed")
            finally:
                close_old_connections()  # a connection broken by an outage is replaced, not reused
            if once:
                return
            # A full batch may mean more are due: go again at once.
            stop.wait(0 if sum(done.values()) >= settings.WEBHOOKS_BATCH else settings.WEBHOOKS_POLL_S)
