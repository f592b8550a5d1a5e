"""Health, readiness and metrics endpoints against the real database and channel layer."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client as HttpClient

pytestmark = [pytest.mark.django_db(transaction=True)]


def staff_client(make_user: Any) -> HttpClient:
    """/readyz shows its checks to staff only (the test of that is test_health_endpoints_integration)."""
    client = HttpClient()
    client.force_login(make_user(is_staff=True))
    return client


def test_healthz_and_readyz_report_real_dependencies(make_user: Any) -> None:
    client = staff_client(make_user)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is True


def test_readyz_stays_ready_but_degraded_when_the_channel_layer_is_unreachable(settings: Any, make_user: Any) -> None:
    """Without Redis a process still serves from PostgreSQL (docs/operations.md): it must not be
    taken out of the balancer, but it says it is degraded."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.clear()
    try:
        response = staff_client(make_user).get("/readyz")
        assert response.status_code == 200
        assert response.json()["status"] == "degraded"
        assert response.json()["checks"]["channel_layer"]["ok"] is False
        assert response.json()["checks"]["database"]["ok"] is True
        assert "redis" in response.json()["degraded"]
    finally:
        channel_layers.backends.clear()


def test_metrics_are_staff_only_and_count_events(make_user: Any) -> None:
    from chat.services.conversations import conversation_create
    from chat.services.messages import message_send

    staff = make_user(is_staff=True)
    user = make_user()
    conv = conversation_create(creator=user, title="t", agent="").conversation
    message_send(
        conversation_id=str(conv.id),
        author_id=user.id,
        username=user.username,
        client_msg_id="1",
        text="hi",
        can_write=True,
    )
    client = HttpClient()
    client.force_login(user)
    assert client.get("/metrics").status_code == 302  # not staff: sent to the admin login
    client.force_login(staff)
    body = client.get("/metrics").json()
    assert body["events_in_log"]["message"] >= 1
    assert body["process"]["counters"]["events_appended"]["type=message"] >= 1
