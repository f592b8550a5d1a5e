from __future__ import annotations

from django.db.models import Count

from chat.models import Event


def event_counts() -> dict[str, int]:
    """Durable events in the log by type (compacted agent_delta rows no longer count)."""
    return dict(Event.objects.values_list("type").annotate(n=Count("id")).values_list("type", "n"))
