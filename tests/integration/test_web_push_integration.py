"""Web Push delivery (chat/services/push.py) against a local push service that checks VAPID and
decrypts (tests/support/push_endpoint.py): subscriptions per device, dead ones removed, failures
retried with backoff, and endpoints the server must never be pointed at refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from chat.models import Notification, PushDelivery, PushSubscription
from chat.services import digest, push
from chat.services.notification_config import generate_vapid_private_key, vapid_public_key
from chat.services.notification_inbox import push_test
from chat.services.notifications import notify_mentions
from tests.support import factories
from tests.support.push_endpoint import Browser, PushEndpoint
from tests.support.ws import access_token

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


@pytest.fixture
def endpoint(settings: Any) -> Iterator[PushEndpoint]:
    server = PushEndpoint.start()
    settings.VAPID_PRIVATE_KEY = generate_vapid_private_key()
    settings.NOTIFICATIONS = {"push_insecure_hosts": [server.host]}
    yield server
    server.stop()


def api_for(user: Any) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(user)}")
    return api


def deliver(now: Any) -> dict[str, int]:
    push.plan_pushes(now=now)
    return push.send_pushes(now=now)


def test_each_device_gets_the_push_and_a_dead_one_is_removed(make_user: Any, endpoint: PushEndpoint) -> None:
    user = make_user()
    api = api_for(user)
    laptop, phone = Browser(), Browser()
    for browser, name in ((laptop, "laptop"), (phone, "phone")):
        assert (
            api.post("/api/me/push-subscriptions/", browser.subscription(endpoint.url(name)), format="json").status_code
            == 201
        )
    endpoint.answers["phone"] = 410  # the phone's browser unsubscribed
    assert api.post("/api/me/notifications/test/").status_code == 202

    assert deliver(timezone.now()) == {"sent": 1, "dead": 1}
    assert laptop.decrypt(endpoint.received("laptop")[0].body)["kind"] == "test"
    assert list(PushSubscription.objects.filter(user=user).values_list("endpoint", flat=True)) == [
        endpoint.url("laptop")
    ]
    assert PushDelivery.objects.count() == 0


def test_a_failing_push_service_is_retried_with_backoff_until_it_answers(
    make_user: Any, endpoint: PushEndpoint
) -> None:
    user = make_user()
    laptop = Browser()
    push.subscription_save(user_id=user.id, body=laptop.subscription(endpoint.url("laptop")), now=timezone.now())
    push_test(user_id=user.id)
    endpoint.answers["laptop"] = 503
    now = timezone.now()
    assert deliver(now) == {"retry": 1}
    [waiting] = PushDelivery.objects.all()
    assert waiting.attempts == 1
    assert now + timedelta(seconds=2.5) <= waiting.due_at <= now + timedelta(seconds=10)  # base 5 s × 2, jittered
    assert push.send_pushes(now=now + timedelta(seconds=1)) == {}  # not yet due
    del endpoint.answers["laptop"]
    assert push.send_pushes(now=waiting.due_at) == {"sent": 1}
    assert [laptop.decrypt(p.body)["kind"] for p in endpoint.received("laptop")] == ["test", "test"]
    assert PushDelivery.objects.count() == 0


def test_attempts_run_out_and_the_delivery_is_dropped(make_user: Any, endpoint: PushEndpoint, settings: Any) -> None:
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "push_max_attempts": 2}
    user = make_user()
    push.subscription_save(user_id=user.id, body=Browser().subscription(endpoint.url("x")), now=timezone.now())
    push_test(user_id=user.id)
    endpoint.answers["x"] = 500
    now = timezone.now()
    assert deliver(now) == {"retry": 1}
    assert push.send_pushes(now=now + timedelta(hours=1)) == {"failed": 1}
    assert PushDelivery.objects.count() == 0
    assert PushSubscription.objects.filter(user=user).count() == 1  # a failing service is not a dead subscription


def test_a_read_notification_is_not_pushed(make_user: Any, endpoint: PushEndpoint) -> None:
    user = make_user()
    push.subscription_save(user_id=user.id, body=Browser().subscription(endpoint.url("x")), now=timezone.now())
    note = push_test(user_id=user.id)
    assert api_for(user).post("/api/me/notifications/read/", {"up_to_seq": note.seq}, format="json").status_code == 200
    assert deliver(timezone.now()) == {}
    assert Notification.objects.get(id=note.id).push_state == "skipped"


@pytest.mark.parametrize(
    ("endpoint_url", "why"),
    [
        ("http://127.0.0.1:6379/", "plain http to a host not listed for tests"),
        ("https://127.0.0.1/push", "an internal address"),
        ("https://fcm.googleapis.com.evil.example/x", "a look-alike host"),
        ("https://evil.example/fcm.googleapis.com", "the push host in the path only"),
        ("https://fcm.googleapis.com:8443/x", "another port"),
        ("https://user:pw@fcm.googleapis.com/x", "credentials in the URL"),
        ("ftp://fcm.googleapis.com/x", "another scheme"),
        ("https://fcm.googleapis.com/" + "x" * 2100, "too long"),
    ],
)
def test_endpoints_the_server_must_not_post_to_are_refused(
    make_user: Any, endpoint: PushEndpoint, endpoint_url: str, why: str
) -> None:
    user = make_user()
    answer = api_for(user).post("/api/me/push-subscriptions/", Browser().subscription(endpoint_url), format="json")
    assert answer.status_code == 400, why
    assert answer.json()["error"]["message"].startswith("endpoint:"), why
    assert PushSubscription.objects.count() == 0


def test_a_real_push_service_endpoint_is_taken_and_bad_keys_are_not(make_user: Any, endpoint: PushEndpoint) -> None:
    api = api_for(make_user())
    good = Browser().subscription("https://fcm.googleapis.com/fcm/send/abc")
    assert api.post("/api/me/push-subscriptions/", good, format="json").status_code == 201
    assert api.post("/api/me/push-subscriptions/", good, format="json").status_code == 201  # same device again
    assert PushSubscription.objects.count() == 1
    for keys, field in (
        ({"p256dh": "AAAA", "auth": good["keys"]["auth"]}, "keys.p256dh"),
        ({"p256dh": good["keys"]["p256dh"], "auth": "!!"}, "keys.auth"),
    ):
        answer = api.post("/api/me/push-subscriptions/", {**good, "keys": keys}, format="json")
        assert answer.status_code == 400
        assert answer.json()["error"]["message"].startswith(field)
    assert api.delete("/api/me/push-subscriptions/", {"endpoint": good["endpoint"]}, format="json").status_code == 204
    assert api.delete("/api/me/push-subscriptions/", {"endpoint": good["endpoint"]}, format="json").status_code == 404
    assert PushSubscription.objects.count() == 0


def test_the_vapid_keys_command_makes_a_pair_push_services_accept(
    make_user: Any, endpoint: PushEndpoint, settings: Any
) -> None:
    out = StringIO()
    call_command("vapid_keys", stdout=out)
    private_line, public_line = out.getvalue().splitlines()
    settings.VAPID_PRIVATE_KEY = private_line.removeprefix("VAPID_PRIVATE_KEY=")
    public = vapid_public_key()
    assert public is not None
    assert public_line.endswith(public)
    user = make_user()
    push.subscription_save(user_id=user.id, body=Browser().subscription(endpoint.url("x")), now=timezone.now())
    push_test(user_id=user.id)
    assert deliver(timezone.now()) == {"sent": 1}
    [received] = endpoint.received("x")
    assert f"k={public}" in received.headers["authorization"]  # signed with the key browsers subscribe to


def test_one_pass_mails_as_many_users_as_its_batch_however_many_notifications_each_has(
    make_user: Any, settings: Any, mailoutbox: list[Any]
) -> None:
    """Users are picked once each: with two notifications per user, a batch of two is two users."""
    settings.NOTIFICATIONS = {"batch": 2, "digest_grace_s": 0}
    owner = make_user()
    readers = [make_user(email=f"reader{i}@example.com") for i in range(2)]
    conv = factories.conversation_sync(owner, agent="", members=tuple((r, "member") for r in readers))
    for _ in range(2):
        notify_mentions(
            conversation_id=conv,
            seq=1,
            author_id=owner.id,
            author_username=owner.username,
            mentioned_ids=[r.id for r in readers],
            text="standup in 5",
        )
    assert digest.send_digests(now=timezone.now()) == 2
    assert sorted(m.to[0] for m in mailoutbox) == ["reader0@example.com", "reader1@example.com"]
    assert "standup in 5" in mailoutbox[0].body


def test_the_service_worker_is_served_from_the_root_as_javascript(client: Any) -> None:
    """Its scope is its script's directory: /sw.js covers every page, /static/chat/sw.js none."""
    answer = client.get("/sw.js")
    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/javascript; charset=utf-8"
    assert answer["Service-Worker-Allowed"] == "/"
    assert answer["Cache-Control"] == "no-cache"
    assert b"showNotification" in answer.content
