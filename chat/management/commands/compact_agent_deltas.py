"""`manage.py compact_agent_deltas [--older-than S] [--batch N]`: delete the agent_delta events of runs that
completed or were cancelled more than S seconds ago (default AGENT_DELTA_COMPACT_AFTER_S), N rows per transaction
(default AGENT_DELTA_COMPACT_BATCH); chat/services/compaction.py, docs/operations.md "Compaction". The agent worker
does the same on its own every minute; this command is for deployments without a worker (embedded mode: run it
from cron) and for staff who want it done now. It runs one whole pass."""

from __future__ import annotations

import argparse
import math
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.services.compaction import MAX_BATCH, compact_finished_runs


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: seconds must be 0 or more")
    return value


def batch_size(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{raw!r}: the batch must be from 1 to {MAX_BATCH} rows")
    return value


class Command(BaseCommand):
    help = "Delete the agent_delta events of runs that completed or were cancelled (their terminal event has the text)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=seconds,
            default=None,
            metavar="S",
            help="only runs that ended more than S seconds ago (default: AGENT_DELTA_COMPACT_AFTER_S)",
        )
        parser.add_argument(
            "--batch",
            type=batch_size,
            default=None,
            metavar="N",
            help=f"rows deleted per transaction, 1 to {MAX_BATCH} (default: AGENT_DELTA_COMPACT_BATCH)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            done = compact_finished_runs(older_than_s=options["older_than"], batch=options["batch"])
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"compacted agent deltas: {done}")
