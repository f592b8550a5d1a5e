"""`manage.py purge_audit_log`: delete the audit entries older than AUDIT_RETENTION_DAYS (the only
deletion the append-only log allows; docs/operations.md "Audit log"). Run it daily, from cron or the
scheduler of the deployment."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from enterprise.audit import audit_purge


class Command(BaseCommand):
    help = "Delete audit log entries older than AUDIT_RETENTION_DAYS."

    def handle(self, *args: Any, **options: Any) -> None:
        purged = audit_purge()
        self.stdout.write(f"purged {purged} audit entr(y/ies) older than {settings.AUDIT_RETENTION_DAYS} day(s)")
