"""The notifications worker: delivery off the request path (docs/operations.md "Notifications").

Every `worker_poll_s` one pass does, in order:
1. ended runs (RunEndNote): `agent_finished` for a requester none of whose sockets was subscribed to
   the conversation (presence, in Redis), nothing otherwise;
2. Web Push: plan the due notifications into deliveries, then send the due deliveries
   (chat/services/push.py: quiet hours, collapsing, retries with backoff, dead subscriptions);
3. the email digests that are due (chat/services/digest.py).
All state is in PostgreSQL, so several workers may run (rows are claimed with SKIP LOCKED or
leased) and a restarted one picks up where the last stopped. `manage.py notifications_worker`
runs it; `manage.py serve` starts that beside the servers. Every step takes `now`, so tests drive
a pass with a clock of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.utils import timezone

from chat.errors import ErrorClass
from chat.infra.error_recovery import classify
from chat.infra.redis_client import redis_call
from chat.publishing import run_service
from chat.realtime import ephemeral
from chat.services import digest, notifications, push
from chat.services.notification_config import option
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

# A run whose requester's presence cannot be read (Redis down) is decided as "away" after this long:
# better a late agent_finished than none.
PRESENCE_GIVE_UP_S = 300.0


async def run_once(*, now: datetime | None = None) -> dict[str, int]:
    """One pass; returns what it did, for tests and the log."""
    now = now or timezone.now()
    finished = await notify_finished_runs(now=now)
    # Off the shared database thread: a push may wait on a slow push service for its timeout.
    planned = await database_sync_to_async(push.plan_pushes, thread_sensitive=False)(now=now)
    sent = await database_sync_to_async(push.send_pushes, thread_sensitive=False)(now=now)
    mailed = await database_sync_to_async(digest.send_digests, thread_sensitive=False)(now=now)
    return {
        "agent_finished": finished,
        "pushes_planned": planned,
        "pushes_sent": sent.get("sent", 0),
        "digests": mailed,
    }


async def notify_finished_runs(*, now: datetime) -> int:
    notes = await database_sync_to_async(notifications.run_end_notes)(limit=int(option("batch")))
    created = 0
    for note in notes:
        conversation = str(note.conversation_id)
        try:
            online, _ = await redis_call(functools.partial(ephemeral.store().online, conversation, time.time()))
            away = note.user_id not in online
        except Exception:
            if now - note.created_at < timedelta(seconds=PRESENCE_GIVE_UP_S):
                continue  # asked again on the next pass
            away = True
        if await run_service(notifications.run_end_decide, run_id=str(note.run_id), away=away):
            created += 1
    return created


async def run_forever() -> None:
    """Passes until cancelled; a failed pass is logged (one line for a dependency outage) and the
    next one tries again."""
    logger.info("notifications worker started")
    while True:
        try:
            done = await run_once()
            if any(done.values()):
                logger.info("notifications pass: %s", done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.inc("notification_worker_errors")
            if classify(exc) is ErrorClass.TRANSIENT:
                logger.warning("notifications pass failed: a dependency is unavailable (%s)", type(exc).__name__)
            else:
                logger.exception("notifications pass failed")
        await asyncio.sleep(float(option("worker_poll_s")))
