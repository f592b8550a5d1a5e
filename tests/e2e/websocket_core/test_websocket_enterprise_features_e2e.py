"""What an enterprise customer pays for, against the real stack (`manage.py serve`: uvicorn, the agent worker
and the webhooks worker; PostgreSQL, Redis), as clients see it: tokens from `POST /api/auth/token/`, the
`chat.v1` socket, REST. carol (seeded enterprise) and bob (seeded free), with dave (free) as carol's member:

- the priority lane: with a one-slot runner (AGENT_MAX_CONCURRENT_RUNS=1, no reserved slot), carol's run
  queued behind bob's two queued runs starts before them (docs/protocol.md §12);
- a webhook receiver started here verifies every signature with `standardwebhooks`, sees each event once
  (deduplicating on webhook-id) although it answered the first delivery 500 (retried after
  WEBHOOKS_RETRY_SCHEDULE_S) and an owner redelivered one, and accepts the old and the new secret after a
  rotation (docs/operations.md "Webhooks");
- the workspace's analytics, SLA report and audit log show exactly what the test did;
- bob, a free owner, is refused every enterprise-only endpoint (403), sees the analytics section his tier has
  and his own audit log (the docs give both to every tier), and sees nothing of carol's workspace (404).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support.peer import Peer
from tests.support.servers import Stack, login, running_stack
from tests.support.waiting import eventually
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.e2e]

ALL_EVENTS = ["message.created", "run.completed", "run.failed", "approval.requested", "member.added"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = {
        # One run at a time, no slot kept for enterprise: a run waits in the queue, where only its place counts.
        "AGENT_MAX_CONCURRENT_RUNS": "1",
        "AGENT_RESERVED_SLOTS_JSON": "{}",
        # ~150 ms a word: the help answer (~35 words) runs for seconds, until it is cancelled.
        "AGENT_OFFLINE_TOKEN_DELAY_MS": "150",
        "WEBHOOKS_ALLOW_PRIVATE": "1",  # the receiver is on 127.0.0.1
        "WEBHOOKS_RETRY_SCHEDULE_S": "1",
        "WEBHOOKS_POLL_S": "0.1",
        "WEBHOOKS_ENDPOINT_CACHE_S": "0.1",
    }
    with running_stack(env_overrides=env) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()


def api(stack: Stack, username: str) -> httpx.Client:
    """A REST client with the user's access token from the real token endpoint."""
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {login(stack, username)}"})


async def socket(stack: Stack, client: httpx.Client) -> Peer:
    """A socket authenticated with the same access token as `client`."""
    return await Peer.open(stack, client.headers["Authorization"].removeprefix("Bearer "))


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    return response.json() if response.content else None


def conversation(client: httpx.Client, **body: Any) -> str:
    return str(ok(client.post("/api/conversations/", json={"title": "e2e", **body}), 201)["id"])


def at(frame: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(frame["ts"].replace("Z", "+00:00"))


# --- the priority lane -------------------------------------------------------------------------------------------


async def test_an_enterprise_run_overtakes_the_queued_free_runs(stack: Stack) -> None:
    carol_api, bob_api = api(stack, "carol"), api(stack, "bob")
    carol = await socket(stack, carol_api)
    bob = await socket(stack, bob_api)
    assert (carol.welcome["user"]["tier"], bob.welcome["user"]["tier"]) == ("enterprise", "free")
    busy, first, second = (conversation(bob_api) for _ in range(3))
    mine = conversation(carol_api)
    for conv in (busy, first, second):
        await bob.ok("subscribe", conversation=conv)
    await carol.ok("subscribe", conversation=mine)

    # bob's first run takes the only slot (the help answer streams for seconds); his next two and then
    # carol's queue behind it, in that order.
    blocker = (await bob.send(busy, "hello there"))["run_id"]
    await bob.event("agent_started", blocker)
    free_runs = [(await bob.send(conv, f"what is {n} * 3?"))["run_id"] for n, conv in ((2, first), (4, second))]
    enterprise_run = (await carol.send(mine, "what is 6 * 7?"))["run_id"]
    cancelled = await bob.ok("cancel", run_id=blocker)
    assert cancelled["status"] in ("cancelling", "cancelled"), cancelled
    assert (await bob.ended(blocker))["type"] == "agent_cancelled"

    ends = [await bob.ended(run) for run in free_runs] + [await carol.ended(enterprise_run)]
    assert [e["type"] for e in ends] == ["agent_completed"] * 3, ends
    started = {run: await bob.event("agent_started", run) for run in free_runs}
    started[enterprise_run] = await carol.event("agent_started", enterprise_run)
    blocker_end = await bob.ended(blocker)
    by_start = sorted(started, key=lambda run: at(started[run]))
    assert by_start == [enterprise_run, *free_runs], {run: f["ts"] for run, f in started.items()}
    # Nothing started while the blocker held the slot, and the free runs waited longest although queued first.
    assert all(at(frame) >= at(blocker_end) for frame in started.values())
    waits = [started[run]["data"]["queued_ms"] for run in (enterprise_run, *free_runs)]
    assert waits[0] < waits[1] < waits[2], waits
    assert at(started[free_runs[0]]) >= at(await carol.ended(enterprise_run))  # one slot: one run at a time
    for peer in (carol, bob):
        await peer.ws.close()


# --- webhooks, analytics, SLA and audit of one enterprise workspace ------------------------------------------------


def unique_events(receiver: WebhookReceiver) -> dict[str, dict[str, Any]]:
    """What the receiver acted on: the first payload of each webhook-id (retries and redeliveries repeat it)."""
    seen: dict[str, dict[str, Any]] = {}
    for hit in list(receiver.hits):
        seen.setdefault(hit.headers["webhook-id"], hit.payload)
    return seen


def event_keys(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    keys = []
    for payload in unique_events(receiver).values():
        data = payload["data"]
        key = {"message.created": "text", "run.completed": "run_id"}.get(payload["type"])
        keys.append((payload["type"], data[key] if key else data["user"]["username"]))
    return sorted(keys)


def all_delivered(client: httpx.Client, hook_url: str) -> list[dict[str, Any]] | None:
    log: list[dict[str, Any]] = ok(client.get(f"{hook_url}deliveries/"))
    return log if all(d["status"] == "succeeded" for d in log) else None


async def test_webhooks_analytics_sla_and_audit_of_an_enterprise_workspace(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    carol_api, dave_api = api(stack, "carol"), api(stack, "dave")
    workspace = ok(carol_api.post("/api/workspaces/", json={"name": "Acme"}), 201)["id"]
    w = f"/api/workspaces/{workspace}"
    ok(carol_api.post(f"{w}/members/", json={"username": "dave", "role": "member"}), 201)

    # An endpoint for two event types, widened to all of them by a PATCH; the receiver answers the first delivery 500.
    hook = ok(carol_api.post(f"{w}/webhooks/", json={"url": receiver.url, "events": ALL_EVENTS[:2]}), 201)
    receiver.secrets, receiver.answers = [hook["secret"]], [500]
    hook_url = f"{w}/webhooks/{hook['id']}/"
    assert ok(carol_api.patch(hook_url, json={"events": ALL_EVENTS}))["events"] == ALL_EVENTS

    room = conversation(carol_api, workspace=workspace)
    ok(carol_api.post(f"/api/conversations/{room}/members/", json={"username": "dave", "role": "member"}), 201)
    carol = await socket(stack, carol_api)
    dave = await socket(stack, dave_api)
    for peer in (carol, dave):
        await peer.ok("subscribe", conversation=room)

    # Two people: the assistant answers only when addressed (agent_mode auto).
    assert "run_id" not in await dave.send(room, "@carol morning")
    answered = (await carol.send(room, "@assistant what is 6 * 7?"))["run_id"]
    assert (await carol.ended(answered))["type"] == "agent_completed"
    broken = (await carol.send(room, "@assistant what is 1 / 0?"))["run_id"]
    assert (await carol.ended(broken))["type"] == "agent_completed"
    stopped = (await carol.send(room, "@assistant hello"))["run_id"]
    await carol.event("agent_started", stopped)
    await carol.ok("cancel", run_id=stopped)
    assert (await carol.ended(stopped))["type"] == "agent_cancelled"
    texts = ["@carol morning", "@assistant what is 6 * 7?", "@assistant what is 1 / 0?", "@assistant hello"]
    expected = sorted(
        [("member.added", "dave"), *(("message.created", t) for t in texts)]
        + [("run.completed", answered), ("run.completed", broken)]
    )
    await eventually(lambda: event_keys(receiver) == expected, 15, lambda: f"{event_keys(receiver)} != {expected}")

    # Every request was signed with the endpoint's secret; the 500 was retried with the same webhook-id.
    assert all(hit.verified_by == [hook["secret"]] for hit in receiver.hits)
    [refused] = [hit for hit in receiver.hits if hit.status == 500]
    retried = refused.headers["webhook-id"]
    await eventually(lambda: [h.status for h in receiver.hits if h.headers["webhook-id"] == retried] == [500, 204])
    # The worker records an answer after the receiver has sent it: wait for the log to say so.
    log = await eventually(lambda: all_delivered(carol_api, hook_url), 10, "every delivery recorded as succeeded")
    assert sorted(d["webhook_id"] for d in log) == sorted(unique_events(receiver))
    [twice] = [d for d in log if d["webhook_id"] == retried]
    assert ([a["status_code"] for a in twice["attempt_log"]], twice["attempts"]) == ([500, 204], 2)

    # An owner's redelivery comes again under the same webhook-id: a deduplicating receiver acts once.
    again = next(d for d in log if d["webhook_id"] != retried)
    ok(carol_api.post(f"{hook_url}deliveries/{again['id']}/redeliver/"), 202)
    await eventually(lambda: sum(h.headers["webhook-id"] == again["webhook_id"] for h in receiver.hits) == 2)
    assert event_keys(receiver) == expected

    # After a rotation both secrets verify, for the receivers still switching.
    rotated = ok(carol_api.post(f"{hook_url}rotate-secret/"))
    receiver.secrets = [hook["secret"], rotated["secret"]]
    await dave.send(room, "after the rotation")
    last = await eventually(lambda: [h for h in receiver.hits if h.payload["data"].get("text") == "after the rotation"])
    assert last[0].verified_by == [hook["secret"], rotated["secret"]]
    await eventually(lambda: all_delivered(carol_api, hook_url), 10, "the last delivery recorded")
    assert ok(carol_api.delete(hook_url), 204) is None
    texts.append("after the rotation")

    # Analytics: exactly what happened here (runs by status, tokens of the completed runs, the failed tool call).
    frames = [f for f in carol.frames if f.get("conversation") == room]
    completed = [f["data"] for f in frames if f["type"] == "agent_completed"]
    tool_errors = [f["data"]["tool"] for f in frames if f["type"] == "tool_completed" and not f["data"]["ok"]]
    assert tool_errors == ["calculator"]
    report = ok(carol_api.get(f"{w}/analytics/"))
    totals = report["totals"]
    assert (report["tier"], report["sections"]) == ("enterprise", ["counts", "usage", "latency", "tool_errors", "csv"])
    assert (totals["messages"], totals["active_users"]) == (len(texts), 2)
    assert totals["runs"] == {
        "queued": 0, "running": 0, "waiting_approval": 0, "completed": 2, "failed": 0, "cancelled": 1
    }  # fmt: skip
    assert totals["tokens"] == {
        "prompt": sum(c["usage"]["prompt_tokens"] for c in completed),
        "completion": sum(c["usage"]["completion_tokens"] for c in completed),
    }
    assert totals["by_model"]["offline"]["runs"] == 2
    assert totals["time_to_first_token_ms"]["samples"] >= 2
    assert totals["tool_errors"] == {"calculator": 1}, totals
    assert report["series"][-1]["messages"] == len(texts)  # today's bucket, UTC

    # SLA: both completed runs count (a cancel is a person's choice); first_event against their queue time.
    month = datetime.now(UTC).strftime("%Y-%m")
    sla = ok(carol_api.get(f"{w}/sla/", params={"month": month}))
    objectives = {o["objective"]: o for o in sla["objectives"]}
    assert (sla["tier"], sla["month"]) == ("enterprise", month)
    assert (objectives["run_success"]["good"], objectives["run_success"]["sample_size"]) == (2, 2)
    waits = [(await carol.event("agent_started", run))["data"]["queued_ms"] for run in (answered, broken)]
    assert objectives["first_event"]["sample_size"] == 2
    assert objectives["first_event"]["good"] == sum(ms <= 2000 for ms in waits), waits
    assert objectives["availability"]["target"] == 0.999

    # The audit log, oldest first: memberships and every webhook change, by carol, with no secret in it.
    entries = ok(carol_api.get(f"{w}/audit/", params={"limit": 200}))["entries"][::-1]
    assert [(e["action"], e["actor"]["username"], e["target"]) for e in entries] == [
        ("workspace.member_set", "carol", "dave"),
        ("webhook.created", "carol", receiver.url),
        ("webhook.updated", "carol", receiver.url),
        ("conversation.member_set", "carol", "dave"),
        ("webhook.secret_rotated", "carol", receiver.url),
        ("webhook.deleted", "carol", receiver.url),
    ]
    assert entries[2]["data"]["changed"] == {"events": ALL_EVENTS}
    assert not [e for e in entries if hook["secret"] in json.dumps(e) or rotated["secret"] in json.dumps(e)]

    # dave, a member but no owner, reads none of it.
    for path in ("webhooks/", "analytics/", "sla/", "audit/"):
        assert dave_api.get(f"{w}/{path}").status_code == 403, path
    for peer in (carol, dave):
        await peer.ws.close()


# --- what the free tier gets ------------------------------------------------------------------------------------


def test_a_free_owner_is_refused_the_enterprise_features_and_sees_nothing_of_others(stack: Stack) -> None:
    bob_api, carol_api = api(stack, "bob"), api(stack, "carol")
    mine = ok(bob_api.post("/api/workspaces/", json={"name": "Bob's shop"}), 201)["id"]
    theirs = ok(carol_api.post("/api/workspaces/", json={"name": "Carol's"}), 201)["id"]
    hook = {"url": "https://93.184.215.14/in", "events": ["message.created"]}
    random_id = uuid.uuid4()
    enterprise_only = [
        ("get", "webhooks/", None),
        ("post", "webhooks/", hook),
        ("get", f"webhooks/{random_id}/", None),
        ("patch", f"webhooks/{random_id}/", {"enabled": False}),
        ("delete", f"webhooks/{random_id}/", None),
        ("post", f"webhooks/{random_id}/rotate-secret/", None),
        ("get", f"webhooks/{random_id}/deliveries/", None),
        ("post", f"webhooks/{random_id}/deliveries/{random_id}/redeliver/", None),
        ("get", "sla/", None),
        ("get", "analytics/?format=csv", None),
        ("get", "export/", None),  # pro and enterprise
    ]
    for method, path, body in enterprise_only:
        kwargs = {"json": body} if body is not None else {}
        refused = bob_api.request(method.upper(), f"/api/workspaces/{mine}/{path}", **kwargs)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["error"]["code"] == "forbidden"
        hidden = bob_api.request(method.upper(), f"/api/workspaces/{theirs}/{path}", **kwargs)
        assert hidden.status_code == 404, (method, path, hidden.text)
    # What the docs give every tier: analytics' counts section (docs/protocol.md §12) and the audit log.
    counts = ok(bob_api.get(f"/api/workspaces/{mine}/analytics/"))
    assert (counts["tier"], counts["sections"]) == ("free", ["counts"])
    assert set(counts["totals"]) == {"messages", "active_users", "runs"}
    assert ok(bob_api.get(f"/api/workspaces/{mine}/audit/"))["entries"] == []
    for path in ("analytics/", "audit/"):
        assert bob_api.get(f"/api/workspaces/{theirs}/{path}").status_code == 404
    assert ok(carol_api.get(f"/api/workspaces/{theirs}/webhooks/")) == []
