"""The model server goes down and comes back, against PostgreSQL, Redis and real HTTP to the fake
model server (tests/support/fake_llm), driven through the socket:

- down: the run ends with agent_failed `llm_unavailable` and a plain message; the user's message
  is kept; after CHAT_BREAKER_FAILURES such runs the "llm" breaker opens;
- open: a new run fails at once without asking the model server (which is already back up, so a
  call would have succeeded); plain chat in another conversation keeps working; /readyz stays 200
  and reports the model as degraded;
- back: once the reset timeout has passed, the next run is the half-open probe, completes, and
  closes the breaker; /readyz is no longer degraded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from agents.runtime import LLM_UNAVAILABLE_MESSAGE
from chat.infra.breakers import breaker, reset_breakers
from chat.services.conversations import user_create
from monitoring.health import publish_breakers, shared_breakers, withdraw_breakers
from tests.support import factories
from tests.support.fake_llm import FakeLLM, hold_port, http_error
from tests.support.waiting import eventually
from tests.support.ws import Client, subscribed_client

pytestmark = [pytest.mark.django_db(transaction=True)]

LLM_TIMEOUT_S = 10.0  # what a run would wait for a silent model server without the breaker
RESET_S = 2.0  # the breaker's reset timeout here: long enough to try a run while it is open
FAILURES = 2


@pytest.fixture
def breaker_settings(settings: Any) -> Iterator[Any]:
    settings.AGENT_BACKEND = "openai"
    settings.AGENT_LLM_MODEL = "fake-model"
    settings.AGENT_LLM_API_KEY = ""
    settings.AGENT_LLM_TIMEOUT_S = LLM_TIMEOUT_S
    settings.CHAT_BREAKER_FAILURES = FAILURES
    settings.CHAT_BREAKER_WINDOW_S = 60.0
    settings.CHAT_BREAKER_RESET_S = RESET_S
    reset_breakers()  # the breakers are per process: start from closed, with these settings
    forget_published_breakers()
    yield settings
    reset_breakers()
    forget_published_breakers()


def forget_published_breakers() -> None:
    """Drop what earlier tests' run supervisors published for /readyz: their event loops are gone,
    but their entries would count as live for a few heartbeats."""
    import redis
    from django.conf import settings

    from monitoring.health import shared_state_key

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.delete(shared_state_key())
    finally:
        client.close()


async def ask(client: Client, conv: str, msg_id: str, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a prompt; return the send reply and the run's terminal event."""
    reply = await client.command("send", conversation=conv, client_msg_id=msg_id, text=text)
    assert reply["ok"] is True, reply
    run_id = reply["run_id"]
    terminal = await client.seen_or_until(
        lambda f: (
            f.get("type") in ("agent_completed", "agent_failed", "agent_cancelled")
            and f["data"].get("run_id") == run_id
        ),
        timeout=15,
    )
    return reply, terminal


def run_event(client: Client, conv: str, run_id: str, type: str) -> dict[str, Any]:
    return next(e for e in client.events(conv) if e["type"] == type and e["data"].get("run_id") == run_id)


def ts(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))


async def readyz() -> tuple[int, dict[str, Any]]:
    """/readyz as staff see it: anonymous callers get the status alone."""
    client = AsyncClient()
    await client.aforce_login(await database_sync_to_async(_staff)())
    response = await client.get("/readyz")
    return response.status_code, response.json()


def _staff() -> Any:
    return user_create(username=f"readyz-staff-{time.monotonic_ns()}", password="pw-readyz-staff", is_staff=True)


async def test_llm_outage_fails_runs_fast_keeps_chat_working_and_recovers(
    make_user: Any, breaker_settings: Any
) -> None:
    fake = FakeLLM().start()
    port = fake.port
    breaker_settings.AGENT_LLM_BASE_URL = fake.base_url
    # Enterprise: the per-tier agent-run rate limit is not what this test is about.
    alice = await database_sync_to_async(make_user)(tier="enterprise")
    bob = await database_sync_to_async(make_user)()
    agent_conv = await factories.conversation(alice, agent="assistant")
    plain_conv = await factories.conversation(bob, agent="")
    try:
        async with subscribed_client(alice, agent_conv) as a, subscribed_client(bob, plain_conv) as b:
            # Healthy: the model answers.
            _, done = await ask(a, agent_conv, "m0", "hello")
            assert done["type"] == "agent_completed", done
            assert breaker("llm").state == "closed"

            # Down: the server is stopped and its port refuses connections.
            fake.close()
            with hold_port(port):
                for n in range(1, FAILURES + 1):
                    reply, failed = await ask(a, agent_conv, f"m{n}", "are you there?")
                    assert reply["message"]["seq"] > 0  # the message itself was stored and sent
                    assert failed["type"] == "agent_failed", failed
                    assert failed["data"]["error"]["code"] == "llm_unavailable"
                    assert failed["data"]["error"]["message"] == LLM_UNAVAILABLE_MESSAGE
                assert breaker("llm").state == "open"
                # The failure that opened it tells clients when to try again.
                assert 0 < failed["data"]["error"]["retry_after_ms"] <= RESET_S * 1000

            # The server is back on the same port, but the breaker has not let a probe through:
            # the run fails at once and the server is never asked.
            fake = FakeLLM(port=port).start()
            started = time.monotonic()
            reply, failed = await ask(a, agent_conv, "m3", "still down?")
            elapsed = time.monotonic() - started
            assert failed["type"] == "agent_failed", failed
            assert failed["data"]["error"]["code"] == "llm_unavailable"
            assert failed["data"]["error"]["message"] == LLM_UNAVAILABLE_MESSAGE
            assert 0 < failed["data"]["error"]["retry_after_ms"] <= RESET_S * 1000
            assert fake.requests == []
            assert elapsed < LLM_TIMEOUT_S / 5, elapsed
            run_started = run_event(a, agent_conv, reply["run_id"], "agent_started")
            assert (ts(failed) - ts(run_started)).total_seconds() < 1.0
            assert breaker("llm").state == "open"

            # Chat does not need the model: another conversation's messages flow meanwhile.
            sent = await b.command("send", conversation=plain_conv, client_msg_id="p1", text="chat still works")
            assert sent["ok"] is True
            assert "run_id" not in sent or sent["run_id"] is None
            message = await b.seen_or_until(lambda f: f.get("type") == "message" and f["conversation"] == plain_conv)
            assert message["data"]["text"] == "chat still works"

            # The process still serves chat: ready, but the model is reported degraded.
            status, body = await readyz()
            assert status == 200
            assert body["status"] == "degraded"
            assert body["degraded"] == ["llm"]
            assert body["breakers"]["llm"]["state"] == "open"

            # Staff see the breaker and its transition in /metrics.
            staff = AsyncClient()
            await staff.aforce_login(await database_sync_to_async(make_user)(is_staff=True))
            scraped = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families((await staff.get("/metrics")).content.decode())
                for s in f.samples
            }
            assert scraped[("chat_breaker_state", (("dependency", "llm"),))] == 2  # open
            assert scraped[("chat_breaker_transitions_total", (("name", "llm"), ("state", "open")))] >= 1

            # Back: once the reset timeout has passed the next run is the probe, and completes.
            await eventually(
                lambda: breaker("llm").retry_after_ms() == 0, RESET_S + 5, "the llm breaker's reset timeout to pass"
            )
            _, done = await ask(a, agent_conv, "m4", "and now?")
            assert done["type"] == "agent_completed", done
            assert done["data"]["text"] == "You said: and now?"
            assert len(fake.requests) == 1
            assert breaker("llm").state == "closed"

            # The runner publishes its closed breaker at once; /readyz stops reporting degraded.
            async def not_degraded() -> bool:
                code, body = await readyz()
                return code == 200 and body["degraded"] == []

            await eventually(not_degraded, 5, "/readyz to stop reporting degraded")

            # Every prompt was kept, including those whose runs failed.
            history = await a.command("history", conversation=agent_conv)
            texts = [e["data"]["text"] for e in history["events"] if e["type"] == "message"]
            assert texts == ["hello", "are you there?", "are you there?", "still down?", "and now?"]
    finally:
        fake.close()


async def test_a_refusing_model_fails_runs_without_tripping_the_breaker_but_a_503_does(
    make_user: Any, breaker_settings: Any
) -> None:
    """PERMANENT (a 4xx: bad key, unknown model) fails the run with the server's reason and is not
    the server being down; TRANSIENT (503: overloaded, loading) counts toward opening it."""
    with FakeLLM() as fake:
        breaker_settings.AGENT_LLM_BASE_URL = fake.base_url
        user = await database_sync_to_async(make_user)(tier="enterprise")
        conv = await factories.conversation(user, agent="assistant")
        fake.script(*[http_error(401, "invalid api key") for _ in range(FAILURES + 1)])
        fake.script(*[http_error(503, "model is loading") for _ in range(FAILURES)])
        async with subscribed_client(user, conv) as client:
            for n in range(FAILURES + 1):
                _, failed = await ask(client, conv, f"k{n}", "hi")
                assert failed["data"]["error"]["code"] == "llm_error"
                assert "401" in failed["data"]["error"]["message"]
                assert "retry_after_ms" not in failed["data"]["error"]
            assert breaker("llm").state == "closed"
            assert breaker("llm").snapshot()["failures"] == 0
            for n in range(FAILURES):
                _, failed = await ask(client, conv, f"s{n}", "hi")
                assert failed["data"]["error"]["code"] == "llm_error"
                assert "503" in failed["data"]["error"]["message"]
            assert breaker("llm").state == "open"
            assert len(fake.requests) == 2 * FAILURES + 1
            _, failed = await ask(client, conv, "after", "hi")
            assert failed["data"]["error"]["code"] == "llm_unavailable"
            assert len(fake.requests) == 2 * FAILURES + 1  # not asked while open


async def test_readyz_sees_a_breaker_another_process_published_until_it_is_withdrawn_or_stale(
    breaker_settings: Any,
) -> None:
    """In production runs execute in the agent worker: its "llm" breaker reaches /readyz (served
    by the web processes) through Redis. Here another process is played by a published entry."""
    from chat.infra.breakers import CircuitBreaker, _registry, _registry_lock

    source = f"worker-test-{time.monotonic_ns()}"
    remote = CircuitBreaker("llm", failure_threshold=1, reset_timeout_s=30.0)
    remote.record_failure(ConnectionRefusedError())
    with _registry_lock:  # publish as if it were that process's breaker
        _registry["llm"] = remote
    try:
        await publish_breakers(source, max_age_s=60.0)
    finally:
        reset_breakers()  # this process's own breakers: none, all closed
    try:
        merged = await shared_breakers(max_age_s=60.0)
        assert merged["llm"]["state"] == "open"
        assert merged["llm"]["source"] == source
        status, body = await readyz()
        assert status == 200
        assert body["degraded"] == ["llm"]
        assert body["breakers"]["llm"]["source"] == source
        # An entry older than the max age is a process that is gone: ignored.
        assert "llm" not in await shared_breakers(max_age_s=-1.0)
    finally:
        await withdraw_breakers(source)
    status, body = await readyz()
    assert status == 200
    assert "llm" not in body["degraded"]
