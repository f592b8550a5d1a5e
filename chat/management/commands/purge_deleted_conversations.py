"""`manage.py purge_deleted_conversations`: hard-delete the conversations soft-deleted more than
CONVERSATION_DELETE_RETENTION_DAYS ago, with their events, messages and runs. The agent worker does
the same once an hour on its own; this command is for deployments without a worker (embedded mode,
run it from cron) and for staff who want it done now."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from chat.services.conversation_admin import conversations_purge_deleted


class Command(BaseCommand):
    help = "Purge conversations deleted longer ago than CONVERSATION_DELETE_RETENTION_DAYS."

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        while True:  # batch after batch, each conversation in its own short transaction
            purged = conversations_purge_deleted()
            total += purged
            if not purged:
                break
        days = settings.CONVERSATION_DELETE_RETENTION_DAYS
        self.stdout.write(f"purged {total} conversation(s) deleted more than {days} day(s) ago")
