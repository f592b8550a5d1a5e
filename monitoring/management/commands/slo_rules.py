"""`manage.py slo_rules`: print the Prometheus rules for the configured SLO targets (the shipped
monitoring/prometheus/rules.yml is this output for the defaults)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from monitoring.prometheus.rules import prometheus_rules


class Command(BaseCommand):
    help = "Print Prometheus recording and alerting rules for the SLO burn rates."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(prometheus_rules(), ending="")
