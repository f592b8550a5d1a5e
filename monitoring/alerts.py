"""Alerts: stored, deduplicated, and told to every configured sink once.

`raise_alert` keeps one open alert per (kind, subject) (a partial unique index decides between
racing raisers): raising it again while it is open counts it and moves `last_seen`. Raising only
writes rows; `deliver_pending` (run by the sweep, never inside the event log's transaction) tells the
sinks: each sink's claim on an alert is an AlertDelivery row, so every sink gets each alert once,
whichever process delivers. A sink that fails is retried by the next sweeps, up to MAX_ATTEMPTS.

Sinks: "log" (always), "email" (to ALERT_EMAIL, when set), and whatever `register_sink` adds (the
webhook sink, once webhooks exist).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from monitoring.config import option
from monitoring.metrics import metrics
from monitoring.models import SEVERITY_RANK, Alert, AlertDelivery, Severity
from monitoring.performance import PerformanceMonitor, Transition, process_name

logger = logging.getLogger("monitoring.alerts")

# A sink that failed this many times for one alert is given up on (the failure is logged).
MAX_ATTEMPTS = 5
# Deliveries made per sweep; the rest wait for the next one.
DELIVERY_BATCH = 200


@dataclass(frozen=True)
class Sink:
    name: str
    send: Callable[[Alert], None]
    min_severity: str = Severity.INFO
    enabled: Callable[[], bool] = lambda: True


_sinks: dict[str, Sink] = {}


def register_sink(
    name: str,
    send: Callable[[Alert], None],
    *,
    min_severity: str = Severity.INFO,
    enabled: Callable[[], bool] = lambda: True,
) -> None:
    """Add (or replace) a sink. `send` raises on failure; it is retried by later sweeps."""
    if min_severity not in SEVERITY_RANK:
        raise ValueError(f"unknown severity {min_severity!r}; one of {sorted(SEVERITY_RANK)}")
    _sinks[name] = Sink(name, send, min_severity, enabled)


def unregister_sink(name: str) -> None:
    _sinks.pop(name, None)


def sinks() -> dict[str, Sink]:
    return dict(_sinks)


def raise_alert(*, kind: str, subject: str, message: str, severity: str, now: datetime | None = None) -> Alert:
    """Open an alert, or count a repeat of the open one with the same kind and subject."""
    if severity not in SEVERITY_RANK:
        raise ValueError(f"unknown severity {severity!r}; one of {sorted(SEVERITY_RANK)}")
    now = now or timezone.now()
    subject = subject[:200]
    with transaction.atomic():
        if _repeat(kind, subject, message, severity, now):
            return Alert.objects.get(kind=kind, subject=subject, resolved_at=None)
        try:
            with transaction.atomic():  # a savepoint: a concurrent raiser may have opened it meanwhile
                alert = Alert.objects.create(
                    kind=kind, severity=severity, subject=subject, message=message, first_seen=now, last_seen=now
                )
        except IntegrityError:
            _repeat(kind, subject, message, severity, now)
            return Alert.objects.get(kind=kind, subject=subject, resolved_at=None)
    metrics.inc("alerts_raised", kind=kind, severity=severity)
    return alert


def _repeat(kind: str, subject: str, message: str, severity: str, now: datetime) -> bool:
    """Count a repeat of the open alert; a repeat more severe than the alert raises its severity."""
    open_alert = Alert.objects.filter(kind=kind, subject=subject, resolved_at=None)
    if not open_alert.update(last_seen=now, count=F("count") + 1, message=message):
        return False
    lower = [s for s, rank in SEVERITY_RANK.items() if rank < SEVERITY_RANK[Severity(severity)]]
    open_alert.filter(severity__in=lower).update(severity=severity)
    return True


def resolve(*, kind: str, subject: str, now: datetime | None = None) -> int:
    """Resolve the open alert of (kind, subject), if any: the condition is over."""
    return Alert.objects.filter(kind=kind, subject=subject[:200], resolved_at=None).update(
        resolved_at=now or timezone.now()
    )


def resolve_alerts(ids: Iterable[int], now: datetime | None = None) -> int:
    """Staff resolved these (the admin's action); a condition that still holds opens a new one."""
    return Alert.objects.filter(id__in=list(ids), resolved_at=None).update(resolved_at=now or timezone.now())


def open_alerts(limit: int = 100) -> list[Alert]:
    """The open alerts, most severe first, then newest (for the dashboard)."""
    rows = list(Alert.objects.filter(resolved_at=None).order_by("-last_seen")[: max(1, limit)])
    return sorted(rows, key=lambda a: -SEVERITY_RANK.get(a.severity, 0))


def deliver_pending(now: datetime | None = None) -> int:
    """Tell every enabled sink about the open alerts it has not been told yet. Returns how many
    deliveries succeeded. Rows locked by another process's delivery are skipped, not waited for."""
    now = now or timezone.now()
    active = [s for s in _sinks.values() if s.enabled()]
    for sink in active:
        ranks = [sev for sev, rank in SEVERITY_RANK.items() if rank >= SEVERITY_RANK[Severity(sink.min_severity)]]
        fresh = (
            Alert.objects.filter(resolved_at=None, severity__in=ranks)
            .exclude(deliveries__sink=sink.name)
            .values_list("id", flat=True)[:DELIVERY_BATCH]
        )
        AlertDelivery.objects.bulk_create(
            [AlertDelivery(alert_id=alert_id, sink=sink.name) for alert_id in fresh], ignore_conflicts=True
        )
    delivered = 0
    with transaction.atomic():
        pending = (
            AlertDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("alert")
            .filter(delivered_at=None, attempts__lt=MAX_ATTEMPTS, sink__in=[s.name for s in active])
            .order_by("id")[:DELIVERY_BATCH]
        )
        for row in pending:
            try:
                _sinks[row.sink].send(row.alert)
            except Exception as exc:
                row.attempts += 1
                row.last_error = f"{type(exc).__name__}: {exc}"[:500]
                row.save(update_fields=["attempts", "last_error"])
                metrics.inc("alert_delivery_failures", sink=row.sink)
                level = logging.ERROR if row.attempts >= MAX_ATTEMPTS else logging.WARNING
                logger.log(level, "alert %s to %s failed (attempt %d): %s", row.alert_id, row.sink, row.attempts, exc)
                continue
            row.delivered_at = now
            row.attempts += 1
            row.save(update_fields=["delivered_at", "attempts"])
            delivered += 1
    return delivered


def check_performance(monitor: PerformanceMonitor, now: datetime | None = None) -> list[Transition]:
    """Run the process's degradation detection and turn what changed into alerts: a degradation
    opens one (subject: the series and this process), a recovery resolves it."""
    now = now or timezone.now()
    transitions = monitor.check(now.timestamp())
    for t in transitions:
        subject = f"{t.series}@{process_name()}"
        if t.firing:
            raise_alert(kind=t.kind, subject=subject, message=t.message, severity=t.severity, now=now)
        else:
            resolve(kind=t.kind, subject=subject, now=now)
    return transitions


# --- the built-in sinks ---------------------------------------------------------------------------

_LOG_LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.CRITICAL: logging.ERROR}


def _log_sink(alert: Alert) -> None:
    logger.log(
        _LOG_LEVELS.get(Severity(alert.severity), logging.WARNING),
        "ALERT %s %s %s: %s",
        alert.severity,
        alert.kind,
        alert.subject,
        alert.message,
    )


def _email_recipients() -> list[str]:
    return [a for a in getattr(settings, "ALERT_EMAIL", []) or [] if a]


def _email_sink(alert: Alert) -> None:
    send_mail(
        subject=f"[chat alert] {alert.severity}: {alert.kind} {alert.subject}"[:200],
        message=(
            f"{alert.message}\n\nkind: {alert.kind}\nseverity: {alert.severity}\nsubject: {alert.subject}\n"
            f"first seen: {alert.first_seen.isoformat()}\nseen {alert.count} time(s)\n"
            "Resolve it in the admin (Monitoring > Alerts) once it is handled."
        ),
        from_email=None,  # DEFAULT_FROM_EMAIL
        recipient_list=_email_recipients(),
        fail_silently=False,
    )


register_sink("log", _log_sink)
register_sink(
    "email",
    _email_sink,
    min_severity=option("email_min_severity"),
    enabled=lambda: bool(_email_recipients()),
)
