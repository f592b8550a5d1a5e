"""`manage.py purge_expired_history`: delete (or, with HISTORY_RETENTION_MODE=archive, archive then delete) the
history older than each conversation's retention (chat/services/retention.py, docs/operations.md "Retention").
The agent worker does the same on its own, a pass at most once an hour; this command is for deployments without
a worker (embedded mode: run it daily from cron) and for staff who want it done now. It runs one whole pass."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.services.retention import purge_expired_history


class Command(BaseCommand):
    help = "Purge conversation history older than its tier's history retention."

    def handle(self, *args: Any, **options: Any) -> None:
        purged, _ = purge_expired_history()
        self.stdout.write(f"purged expired history: {purged}")
