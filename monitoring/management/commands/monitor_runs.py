"""`manage.py monitor_runs`: the monitoring sweep (monitoring.event_monitor.sweep) once, or every N
seconds with --every N. The agent worker runs the same sweep on its own; this command is for
deployments without a worker (embedded mode) and for staff who want a pass now."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitoring.event_monitor import sweep


class Command(BaseCommand):
    help = "Check runs (first event, completeness, order, stuck), SLO burn rates, and deliver alerts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=0, help="repeat every N seconds (default: once)")

    def handle(self, *args: Any, every: float = 0, **options: Any) -> None:
        if every < 0:
            raise CommandError("--every must be a positive number of seconds")
        while True:
            started = time.monotonic()
            report = sweep()
            self.stdout.write(
                f"first events checked {report.first_events_checked}, runs audited {report.audited}, "
                f"stuck {report.stuck}, alerts raised {len(report.raised)}, delivered {report.delivered}"
            )
            for line in report.raised:
                self.stdout.write(f"  alert: {line}")
            if not every:
                return
            time.sleep(max(0.0, every - (time.monotonic() - started)))
