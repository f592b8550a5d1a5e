"""Isolation (docs/protocol.md §6.3, §2 `not_found`, §7): no command, reply, event or endpoint ever carries
data of a conversation the user is not a member of, nor lets them change it.

The matrix below takes every socket command in chat/realtime/commands.py HANDLERS and every
route in chatsite/urls.py (listed from the URL resolver) and tries each against another user's
conversation id (also spelled in the other forms a UUID parser accepts), run id, workspace id and
message id, a random uuid and malformed ids. For each attempt:
  (a) "exists but not yours" answers byte for byte what "does not exist" answers;
  (b) no frame or response body the attacker receives carries their title, text, usernames or ids;
  (c) nothing of theirs changed: messages, events, read markers, runs, members, notifications,
      presence;
  (d) the victim's open socket received nothing the attacker caused (typing, read, presence).
A command or route without an entry in the matrix fails `test_every_*_is_covered`, so a new one
cannot ship without its isolation case. Role limits (viewers) are in
test_websocket_authentication_security_integration.py.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import Client as HttpClient
from django.test import override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.views import APIView

from agents.models import AgentRun, ToolCall, ToolCallStatus
from chat.models import (
    Conversation,
    ConversationMember,
    ConversationNotificationLevel,
    Event,
    Message,
    Notification,
    NotificationSettings,
    PushSubscription,
    User,
    Workspace,
    WorkspaceMember,
)
from chat.realtime import ephemeral
from chat.realtime.handlers import HANDLERS
from chat.services.conversations import (
    conversation_create,
    conversation_member_add,
    read_marker_set,
    workspace_create,
    workspace_member_add,
)
from chat.services.messages import message_send
from chat.services.notification_prefs import settings_update
from chat.services.push import subscription_save
from enterprise.models import WebhookDelivery, WebhookEndpoint
from tests.support import factories
from tests.support.push_endpoint import Browser
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


@pytest.fixture(autouse=True)
def _no_runner(settings: Any) -> None:
    # No run executes: the victim's run stays queued, so any change to it can only come from an attack.
    settings.AGENT_RUNNER = "worker"


# --- the victim's world ------------------------------------------------------------------------------------
@dataclass
class World:
    alice: Any  # the victim: owns the conversation and the workspace
    bob: Any  # a member of both (also the victim's barrier: see `victim_barrier`)
    mallory: Any  # the attacker, with a conversation of her own
    conv: str
    run_id: str
    message_id: str
    workspace: str
    own_conv: str
    webhook: str = ""  # the victim workspace's webhook endpoint, and one of its deliveries
    delivery: str = ""
    own_workspace: str = ""  # the attacker's personal workspace
    secrets: list[str] = field(default_factory=list)

    def ids(self) -> dict[str, object]:
        """What the attacker puts where an id goes: theirs in every accepted spelling, then junk."""
        return {
            "their_conversation": self.conv,
            "their_conversation_upper": self.conv.upper(),
            "their_conversation_hex": self.conv.replace("-", ""),
            "their_conversation_braces": "{" + self.conv + "}",
            "their_conversation_urn": "urn:uuid:" + self.conv,
            "their_run": self.run_id,
            "their_workspace": self.workspace,
            "their_message": self.message_id,
            "malformed_text": "not-a-uuid",
            "malformed_empty": "",
            "malformed_int": 12,
            "malformed_null": None,
            "malformed_object": {"id": self.conv},
            "malformed_list": [self.conv],
            "malformed_injection": self.conv + "' OR '1'='1",
        }


def build_world(make_user: Any) -> World:
    mark = uuid.uuid4().hex[:10]
    alice, bob, mallory = make_user(), make_user(), make_user()
    workspace = workspace_create(owner=alice, name=f"victim-workspace-{mark}")
    workspace_member_add(workspace=workspace, actor=alice, username=bob.username, role="member")
    conv = str(
        conversation_create(creator=alice, title=f"victim-title-{mark}", workspace_id=workspace.id).conversation.id
    )
    conversation_member_add(conversation_id=conv, actor_id=alice.id, username=bob.username, role="member")
    sent = message_send(
        conversation_id=conv,
        author_id=alice.id,
        username=alice.username,
        client_msg_id="v1",
        text=f"@assistant victim-text-{mark}",  # two humans in auto mode: the agent answers when addressed
        can_write=True,
    )
    assert sent.run_id is not None  # queued: AGENT_RUNNER=worker and no worker
    read_marker_set(conversation_id=conv, user_id=bob.id, seq=1)
    # The victim's notification preferences and a device subscribed to Web Push.
    settings_update(
        user_id=alice.id,
        body={
            "conversations": {conv: "mentions"},
            "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "UTC"},
        },
    )
    endpoint = f"https://fcm.googleapis.com/fcm/send/victim-{mark}"
    subscription_save(user_id=alice.id, body=push_subscription_json(endpoint), now=timezone.now())
    own = str(conversation_create(creator=mallory, title="mallory's own", agent="").conversation.id)
    world = World(alice, bob, mallory, conv, sent.run_id, sent.message_id, str(workspace.id), own)
    # A webhook of the victim's workspace, written directly: the victim's tier need not allow creating one
    # for the attacker's reach to be tested.
    hook = WebhookEndpoint.objects.create(
        workspace=workspace,
        url=f"https://hooks.example.com/victim-{mark}",
        events=["message.created"],
        secret=f"whsec_victimsecret{mark}",
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=hook, message_id=f"msg_victim{mark}", event_type="message.created", payload={"mark": mark}
    )
    world.webhook, world.delivery = str(hook.id), str(delivery.id)
    # A finished tool call of the victim's run, its whole result behind the REST route of truncated results.
    ToolCall.objects.create(
        run_id=sent.run_id,
        call_id=VICTIM_CALL,
        tool="search_history",
        arguments={},
        started_at=timezone.now(),
        finished_at=timezone.now(),
        status=ToolCallStatus.OK,
        result={"matches": [f"victim-text-{mark}"]},
    )
    world.own_workspace = str(Conversation.objects.get(id=own).workspace_id)
    world.secrets = [
        f"victim-title-{mark}",
        f"victim-text-{mark}",
        f"victim-workspace-{mark}",
        alice.username,
        bob.username,
        conv,
        conv.upper(),
        conv.replace("-", ""),
        sent.run_id,
        sent.message_id,
        str(workspace.id),
        endpoint,
        hook.url,
        hook.secret,
        world.webhook,
        world.delivery,
    ]
    return world


def victim_state(w: World) -> dict[str, list[str]]:
    """Every row of the victim's that an attack could change, and what the attacker belongs to."""
    victims = [w.alice.id, w.bob.id]
    tables: dict[str, Any] = {
        "conversation": Conversation.objects.filter(id=w.conv).values_list(
            "title", "last_seq", "workspace_id", "agent_mode", "visibility", "deleted_at"
        ),
        "members": ConversationMember.objects.filter(conversation_id=w.conv).values_list(
            "user_id", "role", "last_read_seq", "draft", "draft_updated_at", "archived_at"
        ),
        "workspace": Workspace.objects.filter(id=w.workspace).values_list("name"),
        "workspace_members": WorkspaceMember.objects.filter(workspace_id=w.workspace).values_list("user_id", "role"),
        "messages": Message.objects.filter(conversation_id=w.conv).values_list("id", "author_id", "text", "seq"),
        "events": Event.objects.filter(conversation_id=w.conv).values_list("seq", "type", "data"),
        "runs": AgentRun.objects.filter(conversation_id=w.conv).values_list(
            "id", "status", "cancel_requested", "cancelled_by_id"
        ),
        "notifications": Notification.objects.filter(user_id__in=victims).values_list("user_id", "seq", "data"),
        "users": User.objects.filter(id__in=victims).values_list("id", "is_active", "notification_seq", "time_zone"),
        "notification_settings": NotificationSettings.objects.filter(user_id__in=victims).values_list(
            "user_id", "kinds", "quiet_start", "quiet_end", "quiet_timezone", "muted_until", "read_seq"
        ),
        "notification_levels": ConversationNotificationLevel.objects.filter(user_id__in=victims).values_list(
            "user_id", "conversation_id", "level"
        ),
        "push_subscriptions": PushSubscription.objects.filter(user_id__in=victims).values_list(
            "user_id", "endpoint", "p256dh", "auth"
        ),
        "attacker_memberships": ConversationMember.objects.filter(user=w.mallory).values_list(
            "conversation_id", "role", "last_read_seq"
        ),
        "attacker_workspaces": WorkspaceMember.objects.filter(user=w.mallory).values_list("workspace_id", "role"),
        "webhooks": WebhookEndpoint.objects.filter(workspace_id=w.workspace).values_list(
            "id", "url", "events", "secret", "previous_secret", "enabled"
        ),
        "deliveries": WebhookDelivery.objects.filter(endpoint__workspace_id=w.workspace).values_list(
            "id", "status", "attempts", "next_attempt_at"
        ),
    }
    return {name: sorted(map(repr, rows)) for name, rows in tables.items()}


def assert_nothing_of_theirs(w: World, text: str, allowed: str = "") -> None:
    """(b): none of the victim's strings in what the attacker got (except the id they sent)."""
    for secret in w.secrets:
        if secret and secret != allowed and secret not in allowed:
            assert secret not in text, f"leaked {secret!r}: {text[:500]}"


# --- sockets ----------------------------------------------------------------------------------------------
@dataclass
class Sockets:
    world: World
    victim: Client  # alice, subscribed to her conversation
    attacker: Client  # mallory
    raw: list[str] = field(default_factory=list)  # every text frame the attacker received


@pytest.fixture
async def sockets(make_user: Any) -> Sockets:
    world = await database_sync_to_async(build_world)(make_user)
    victim, _, _ = await Client.connect(world.alice)
    assert (await victim.recv())["type"] == "welcome"
    assert (await victim.command("subscribe", conversation=world.conv))["ok"] is True
    attacker, _, _ = await Client.connect(world.mallory)
    welcome, _ = await recv_raw(attacker)
    assert welcome["type"] == "welcome"
    return Sockets(world, victim, attacker)


async def recv_raw(client: Client) -> tuple[dict[str, Any], str]:
    out = await client.comm.receive_output(5)
    if out["type"] == "websocket.close":
        raise AssertionError(f"the socket was closed with {out.get('code')}")
    frame = json.loads(out["text"])
    client.frames.append(frame)
    return frame, out["text"]


async def probe_client(client: Client, raw: list[str], frame: dict[str, Any]) -> str:
    """Send one command with the id "probe" and return its reply exactly as it went over the wire
    (the same id every time, so two replies compare byte for byte). Every frame received on the
    way is kept in `raw`."""
    await client.send_raw(json.dumps({**frame, "id": "probe"}))
    while True:
        parsed, text = await recv_raw(client)
        raw.append(text)
        if parsed.get("id") == "probe":
            return text


async def probe(s: Sockets, frame: dict[str, Any]) -> str:
    return await probe_client(s.attacker, s.raw, frame)


async def victim_barrier(s: Sockets) -> None:
    """Wait until everything sent to the victim's conversation so far has reached the victim: bob (a
    member) types, and the victim sees it. Typing and read frames travel the same way, in order."""
    bob, _, _ = await Client.connect(s.world.bob)
    await bob.recv()
    assert (await bob.command("typing", conversation=s.world.conv, state="start"))["ok"] is True
    await s.victim.until(lambda f: f.get("type") == "typing" and f["data"]["user"]["id"] == s.world.bob.id)
    await bob.close()


async def assert_attack_left_no_trace(s: Sockets, before: dict[str, list[str]]) -> None:
    w = s.world
    # (b) flush the attacker's queue (a reply is queued behind anything a command pushed), then scan.
    await probe(s, {"type": "ping"})
    await victim_barrier(s)
    await probe(s, {"type": "ping"})  # anything the barrier's typing caused for the attacker is here now
    for text in s.raw:
        assert_nothing_of_theirs(w, text)
    # (c) the database, and presence (shared in Redis, and this process's pending announcements)
    assert await database_sync_to_async(victim_state)(w) == before
    online, seen = await ephemeral.store().online(w.conv, time.time())
    assert w.mallory.id not in online
    assert str(w.mallory.id) not in seen
    assert w.mallory.id not in ephemeral.batcher().changes.get(w.conv, {})
    # (d) the victim saw nothing of the attacker's
    seen_by_victim = json.dumps(s.victim.frames)
    assert w.mallory.username not in seen_by_victim
    assert f'"id": {w.mallory.id},' not in seen_by_victim


# Every command that takes an id: the field it goes in and the other fields (valid, so that only
# the id decides the answer).
ID_COMMANDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "subscribe": ("conversation", [{}, {"since_seq": 0}]),
    "unsubscribe": ("conversation", [{}]),
    "send": ("conversation", [{"client_msg_id": "attack", "text": "let me in"}]),
    "history": ("conversation", [{}, {"before_seq": 2, "limit": 100}]),
    "typing": ("conversation", [{"state": "start"}]),
    "read": ("conversation", [{"seq": 1_000_000}]),
    "draft": ("conversation", [{"text": "let me in"}, {"text": ""}]),
    "presence": ("conversation", [{}]),
    "cancel": ("run_id", [{}]),
    # (The victim's message and run ids are tried with the attacker's own conversation in
    # tests/integration/test_message_actions_integration.py.)
    "edit": ("conversation", [{"message_id": str(uuid.uuid4()), "text": "pwned"}]),
    "delete": ("conversation", [{"message_id": str(uuid.uuid4())}]),
    "feedback": ("conversation", [{"message_id": str(uuid.uuid4()), "rating": "down"}]),
    "regenerate": ("conversation", [{"run_id": str(uuid.uuid4())}]),
    "approve": ("run_id", [{"call_id": "call-1", "decision": "approve"}, {"call_id": "c", "decision": "reject"}]),
}
# Commands that take no id of anyone's: tested for what they return and change instead.
NO_ID_COMMANDS = {"sync_notifications", "auth", "ping"}


def test_every_socket_command_is_covered() -> None:
    assert set(HANDLERS) == set(ID_COMMANDS) | NO_ID_COMMANDS, "a command without an isolation case"


@pytest.mark.parametrize("command", sorted(ID_COMMANDS))
async def test_a_foreign_id_answers_exactly_like_a_missing_one(sockets: Sockets, command: str) -> None:
    s, w = sockets, sockets.world
    id_field, variants = ID_COMMANDS[command]
    before = await database_sync_to_async(victim_state)(w)
    for extra in variants:
        missing = await probe(s, {"type": command, **extra, id_field: str(uuid.uuid4())})
        assert json.loads(missing)["ok"] is False
        assert json.loads(missing)["error"]["code"] == "not_found"
        for name, target in w.ids().items():
            answer = await probe(s, {"type": command, **extra, id_field: target})
            if isinstance(target, str):
                assert answer == missing, f"{command} {extra} with {name}: {answer} != {missing}"
            else:
                # An id of the wrong JSON type fails the command's wire schema before anything is
                # looked up: `bad_request`, the same for every value of that type, naming nothing.
                error = json.loads(answer)["error"]
                assert error["code"] == "bad_request", f"{command} with {name}: {answer}"
                assert error["message"].startswith(f"{id_field}: expected `str`"), error
                assert w.conv not in answer
                assert w.run_id not in answer
    await assert_attack_left_no_trace(s, before)


async def test_sync_notifications_returns_only_the_callers_own(sockets: Sockets) -> None:
    s, w = sockets, sockets.world
    before = await database_sync_to_async(victim_state)(w)
    bobs_head = await database_sync_to_async(User.objects.values_list("notification_seq", flat=True).get)(id=w.bob.id)
    assert bobs_head >= 1  # bob has notifications (being added) that must stay his
    for since in (0, bobs_head - 1, 10**9):
        reply = json.loads(await probe(s, {"type": "sync_notifications", "since_seq": since}))
        assert reply["ok"] is True
        assert reply["head_seq"] == 0  # mallory's own head
    await assert_attack_left_no_trace(s, before)
    assert not [f for f in s.attacker.frames if f.get("type") == "notification"]


async def test_auth_with_someone_elses_token_keeps_the_attackers_identity(sockets: Sockets) -> None:
    s, w = sockets, sockets.world
    before = await database_sync_to_async(victim_state)(w)
    for victim in (w.alice, w.bob):
        token = await database_sync_to_async(access_token)(victim)
        reply = json.loads(await probe(s, {"type": "auth", "token": token}))
        assert (reply["ok"], reply["error"]["code"]) == (False, "forbidden")
    # Still mallory: the victim's conversation is as unknown as a missing one.
    missing = await probe(s, {"type": "history", "conversation": str(uuid.uuid4())})
    assert await probe(s, {"type": "history", "conversation": w.conv}) == missing
    await assert_attack_left_no_trace(s, before)


async def test_ping_carries_nothing_but_the_time(sockets: Sockets) -> None:
    s = sockets
    before = await database_sync_to_async(victim_state)(s.world)
    reply = json.loads(await probe(s, {"type": "ping"}))
    assert set(reply) == {"type", "id", "ok", "server_time"}
    await assert_attack_left_no_trace(s, before)


async def test_own_conversation_answers_carry_nothing_of_others(sockets: Sockets) -> None:
    """The attacker's legitimate reads of her own conversation (head, active runs, members,
    history) do not mix in the victim's queued run or anything else of theirs."""
    s, w = sockets, sockets.world
    before = await database_sync_to_async(victim_state)(w)
    for frame in (
        {"type": "subscribe", "conversation": w.own_conv, "since_seq": 0},
        {"type": "history", "conversation": w.own_conv},
        {"type": "presence", "conversation": w.own_conv},
        {"type": "unsubscribe", "conversation": w.own_conv},
    ):
        reply = json.loads(await probe(s, frame))
        assert reply["ok"] is True, reply
        if frame["type"] == "subscribe":
            assert reply["active_runs"] == []
    await assert_attack_left_no_trace(s, before)


# --- REST and pages --------------------------------------------------------------------------------------
def discovered_routes() -> set[tuple[str, str]]:
    """Every route of chatsite/urls.py: (pattern, METHOD) for each handler of a DRF view, (pattern,
    "*") for a Django view or an included app (the admin)."""
    found: set[tuple[str, str]] = set()
    for entry in get_resolver().url_patterns:
        route = str(entry.pattern)
        view_class = getattr(entry.callback, "view_class", None) if isinstance(entry, URLPattern) else None
        if isinstance(entry, URLResolver) or view_class is None or not issubclass(view_class, APIView):
            found.add((route, "*"))
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                found.add((route, method.upper()))
    return found


@dataclass
class Rest:
    world: World
    api: APIClient  # mallory, with a real access token
    pages: HttpClient  # mallory's browser session

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, str]:
        client: Any = self.api if path.startswith("/api/") else self.pages
        kwargs: dict[str, Any] = {"format": "json"} if client is self.api else {}
        response = getattr(client, method.lower())(path, body or {}, **kwargs)
        return response.status_code, response.content, response.get("Location", "")


@pytest.fixture
def rest(make_user: Any) -> Rest:
    world = build_world(make_user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(world.mallory)}")
    pages = HttpClient()
    pages.force_login(world.mallory)
    return Rest(world, api, pages)


CSRF_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


def same_as_missing(r: Rest, method: str, template: str, body: dict[str, Any] | None = None) -> None:
    """(a) and (b) for a route with an id in its path: every foreign or malformed id answers what a
    random uuid answers (status, body and redirect, with the id the caller sent put back as <id>)."""
    w = r.world

    def answer(target: str) -> tuple[int, str, str]:
        status, content, location = r.call(method, template.format(id=target), body)
        assert_nothing_of_theirs(w, content.decode(errors="replace"), allowed=target)
        location = unquote(unquote(location))  # the admin's ?next= quotes the already quoted path
        assert_nothing_of_theirs(w, location, allowed=target)
        location = location.replace(target, "<id>")
        return status, CSRF_TOKEN.sub("", content.decode(errors="replace")).replace(target, "<id>"), location

    missing = answer(str(uuid.uuid4()))
    assert missing[0] in (302, 404), missing
    targets = {name: t for name, t in w.ids().items() if isinstance(t, str) and t and "/" not in t and "'" not in t}
    targets |= {"malformed_dotdot": "..", "malformed_long": "f" * 300, "malformed_zero_uuid": str(uuid.UUID(int=0))}
    for name, target in targets.items():
        assert answer(target) == missing, f"{method} {template} with {name}"


def rest_conversation_get(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/conversations/{id}/")


def rest_conversation_patch(r: Rest) -> None:
    # Mallory tries to make their assistant answer everything (or nothing).
    same_as_missing(r, "PATCH", "/api/conversations/{id}/", {"agent_mode": "always"})
    same_as_missing(r, "PATCH", "/api/conversations/{id}/", {"agent_mode": "off"})


def rest_conversation_manage(r: Rest) -> None:
    # Mallory tries to rename, open, archive or delete their conversation.
    for body in ({"title": "mallory was here"}, {"visibility": "open"}, {"archived": True}):
        same_as_missing(r, "PATCH", "/api/conversations/{id}/", body)
    same_as_missing(r, "DELETE", "/api/conversations/{id}/")


def rest_conversation_member_patch(r: Rest) -> None:
    # Mallory tries to demote the owner, and to make herself owner.
    for user in (r.world.alice, r.world.mallory):
        same_as_missing(r, "PATCH", f"/api/conversations/{{id}}/members/{user.id}/", {"role": "owner"})


def rest_conversation_member_delete(r: Rest) -> None:
    for user in (r.world.bob, r.world.mallory):
        same_as_missing(r, "DELETE", f"/api/conversations/{{id}}/members/{user.id}/")


def rest_conversation_join(r: Rest) -> None:
    same_as_missing(r, "POST", "/api/conversations/{id}/join/")


def rest_workspace_conversations_get(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/workspaces/{id}/conversations/")


def rest_conversation_members_get(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/conversations/{id}/members/")


def rest_conversation_members_post(r: Rest) -> None:
    # Mallory tries to add herself (and, as a viewer, to be let in quietly).
    same_as_missing(r, "POST", "/api/conversations/{id}/members/", {"username": r.world.mallory.username})
    same_as_missing(
        r, "POST", "/api/conversations/{id}/members/", {"username": r.world.mallory.username, "role": "viewer"}
    )


def rest_conversation_events_get(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/conversations/{id}/events/?limit=100")


def rest_search(r: Rest) -> None:
    """Full-text search across every conversation the caller reads finds the caller's own words and none of
    the victim's; naming the victim's conversation answers like a missing one."""
    w = r.world
    message_send(
        conversation_id=w.own_conv,
        author_id=w.mallory.id,
        username=w.mallory.username,
        client_msg_id="own-search",
        text="victim text of my own",
        can_write=True,
    )
    victim_words = w.secrets[1]  # victim-text-<mark>: the victim's message holds it
    for query in ("victim", "text", victim_words, f'"{victim_words}"', "assistant"):
        status, content, _ = r.call("GET", "/api/search/?" + urlencode({"q": query}))
        assert status == 200, content
        assert all(h["conversation_id"] == w.own_conv for h in json.loads(content)["results"]), query
        assert_nothing_of_theirs(w, content.decode())
    status, content, _ = r.call("GET", "/api/search/?q=victim")
    assert [h["snippet"] for h in json.loads(content)["results"]] == ["«victim» text of my own"]
    same_as_missing(r, "GET", "/api/search/?q=victim&conversation={id}")


def rest_conversation_feedback_get(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/conversations/{id}/feedback/")


def rest_message_patch(r: Rest) -> None:
    same_as_missing(r, "PATCH", f"/api/conversations/{{id}}/messages/{r.world.message_id}/", {"text": "pwned"})


def rest_message_delete(r: Rest) -> None:
    same_as_missing(r, "DELETE", f"/api/conversations/{{id}}/messages/{r.world.message_id}/")


def rest_message_feedback_put(r: Rest) -> None:
    same_as_missing(r, "PUT", f"/api/conversations/{{id}}/messages/{r.world.message_id}/feedback/", {"rating": "down"})


VICTIM_CALL = "call_victim"


def rest_tool_call_result_get(r: Rest) -> None:
    w = r.world
    # Their run's call through any spelling of their conversation, and through the attacker's own.
    same_as_missing(r, "GET", f"/api/conversations/{{id}}/runs/{w.run_id}/tool-calls/{VICTIM_CALL}/result/")
    same_as_missing(r, "GET", f"/api/conversations/{w.own_conv}/runs/{{id}}/tool-calls/{VICTIM_CALL}/result/")


def rest_workspace_members_get(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/workspaces/{id}/members/")


def rest_workspace_members_post(r: Rest) -> None:
    same_as_missing(
        r, "POST", "/api/workspaces/{id}/members/", {"username": r.world.mallory.username, "role": "member"}
    )


def as_enterprise(r: Rest) -> Any:
    """The attacker on the tier that has webhooks, so that a refusal cannot come from her tier alone."""
    User.objects.filter(id=r.world.mallory.id).update(tier="enterprise")
    return r


def webhook_routes(r: Rest, method: str, tail: str, body: dict[str, Any] | None = None) -> None:
    """The victim's webhook (and delivery) under the victim's workspace answer like a random workspace; and
    under the attacker's own workspace, on the enterprise tier, the victim's ids answer like random ones."""
    w = r.world
    hook_tail = tail.replace("<hook>", w.webhook).replace("<delivery>", w.delivery)
    same_as_missing(r, method, "/api/workspaces/{id}/webhooks/" + hook_tail, body)
    as_enterprise(r)
    if "<hook>" in tail:
        own = "/api/workspaces/" + w.own_workspace + "/webhooks/"
        same_as_missing(r, method, own + tail.replace("<hook>", "{id}").replace("<delivery>", w.delivery), body)
    if "<delivery>" in tail:
        own = "/api/workspaces/" + w.own_workspace + "/webhooks/"
        # Her own endpoint, with the victim's delivery id.
        mine = WebhookEndpoint.objects.create(
            workspace_id=w.own_workspace,
            url="https://hooks.example.com/mine",
            events=["message.created"],
            secret="whsec_x",
        )
        same_as_missing(r, method, own + tail.replace("<hook>", str(mine.id)).replace("<delivery>", "{id}"), body)


def rest_webhooks_get(r: Rest) -> None:
    webhook_routes(r, "GET", "")


def rest_webhooks_post(r: Rest) -> None:
    webhook_routes(r, "POST", "", {"url": "https://hooks.example.com/attacker", "events": ["message.created"]})


def rest_webhook_get(r: Rest) -> None:
    webhook_routes(r, "GET", "<hook>/")


def rest_webhook_patch(r: Rest) -> None:
    webhook_routes(r, "PATCH", "<hook>/", {"url": "https://hooks.example.com/attacker"})


def rest_webhook_delete(r: Rest) -> None:
    webhook_routes(r, "DELETE", "<hook>/")


def rest_webhook_rotate(r: Rest) -> None:
    webhook_routes(r, "POST", "<hook>/rotate-secret/")


def rest_webhook_deliveries(r: Rest) -> None:
    webhook_routes(r, "GET", "<hook>/deliveries/")


def rest_webhook_redeliver(r: Rest) -> None:
    webhook_routes(r, "POST", "<hook>/deliveries/<delivery>/redeliver/")


def rest_workspace_audit(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/workspaces/{id}/audit/")
    status, content, _ = r.call("GET", f"/api/workspaces/{r.world.own_workspace}/audit/")
    assert status == 200  # her own workspace's log: nothing of the victims' in it
    assert_nothing_of_theirs(r.world, content.decode())


def owner_report(r: Rest, template: str) -> None:
    """A workspace report (analytics, SLA, the analytics page): the victim's workspace answers like a random
    one, on the attacker's tier and on the enterprise tier (every section and report), and her own workspace's
    report has nothing of theirs, as JSON and as CSV."""
    same_as_missing(r, "GET", template)
    as_enterprise(r)
    same_as_missing(r, "GET", template)
    own = template.format(id=r.world.own_workspace)
    for path in (own, own + "?format=csv") if own.startswith("/api/") and "analytics" in own else (own,):
        status, content, _ = r.call("GET", path)
        assert status == 200, (path, content)
        assert_nothing_of_theirs(r.world, content.decode())


def rest_workspace_analytics(r: Rest) -> None:
    owner_report(r, "/api/workspaces/{id}/analytics/")


def rest_workspace_sla(r: Rest) -> None:
    owner_report(r, "/api/workspaces/{id}/sla/")


def rest_workspace_analytics_page(r: Rest) -> None:
    owner_report(r, "/w/{id}/analytics/")


async def _drain(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


def rest_workspace_export(r: Rest) -> None:
    """The victim's workspace answers like a random one on the attacker's tier and on the tier that has export;
    her own workspace's archive (streamed) carries nothing of theirs."""
    same_as_missing(r, "GET", "/api/workspaces/{id}/export/")
    as_enterprise(r)
    same_as_missing(r, "GET", "/api/workspaces/{id}/export/")
    response = r.api.get(f"/api/workspaces/{r.world.own_workspace}/export/")
    assert response.status_code == 200
    assert_nothing_of_theirs(r.world, async_to_sync(_drain)(response).decode())


def rest_agui_run(r: Rest) -> None:
    """An AG-UI run (POST /api/ag-ui/) whose threadId is theirs, in any spelling, answers exactly like a
    random id and sends nothing; a threadId that is not a string is a 400 that names nothing of theirs."""
    w = r.world

    def answer(thread_id: Any) -> tuple[int, str]:
        body = {"threadId": thread_id, "runId": "r1", "messages": [{"id": "m1", "role": "user", "content": "hi"}]}
        status, content, _ = r.call("POST", "/api/ag-ui/", body)
        assert_nothing_of_theirs(w, content.decode(), allowed=thread_id if isinstance(thread_id, str) else "")
        return status, content.decode().replace(str(thread_id), "<id>") if thread_id else content.decode()

    missing = answer(str(uuid.uuid4()))
    assert missing[0] == 404, missing
    for name, target in w.ids().items():
        if isinstance(target, str):
            assert answer(target) == missing, name
        else:
            assert answer(target)[0] == 400, name

    def resume(thread_id: str, interrupt_id: str) -> tuple[int, str]:
        body = {
            "threadId": thread_id,
            "runId": "r1",
            "messages": [],
            "resume": [{"interruptId": interrupt_id, "status": "resolved"}],
        }
        status, content, _ = r.call("POST", "/api/ag-ui/", body)
        assert_nothing_of_theirs(w, content.decode(), allowed=interrupt_id)
        return status, content.decode()

    # Answering an interrupt of their run (as AG-UI's resume) answers like one that does not exist.
    no_such = resume(w.own_conv, f"{uuid.uuid4()}.call_1")
    assert no_such[0] == 404, no_such
    for thread in (w.own_conv, w.conv):
        assert resume(thread, f"{w.run_id}.call_1") == no_such


def rest_run_agui_export(r: Rest) -> None:
    same_as_missing(r, "GET", "/api/runs/{id}/ag-ui/")


def rest_conversation_page(r: Rest) -> None:
    same_as_missing(r, "GET", "/c/{id}/")


def rest_conversation_list(r: Rest) -> None:
    status, content, _ = r.call("GET", "/api/conversations/")
    assert status == 200
    assert [c["id"] for c in json.loads(content)] == [r.world.own_conv]
    assert_nothing_of_theirs(r.world, content.decode())


def rest_conversation_create(r: Rest) -> None:
    """Creating a conversation in their workspace answers like a missing workspace; nothing is made."""
    w = r.world
    missing = r.call("POST", "/api/conversations/", {"title": "in", "workspace": str(uuid.uuid4())})
    assert missing[0] == 404
    for target in (w.workspace, w.workspace.upper(), "urn:uuid:" + w.workspace, w.conv, w.run_id):
        assert r.call("POST", "/api/conversations/", {"title": "in", "workspace": target}) == missing, target
    for junk in ("not-a-uuid", 12, {"id": w.workspace}, [w.workspace]):  # (null: the own workspace)
        answer = r.call("POST", "/api/conversations/", {"title": "in", "workspace": junk})
        # Refused as malformed, or (12 is UUID(int=12) to DRF) exactly like any missing workspace.
        assert answer[0] == 400 or answer == missing, junk
        assert_nothing_of_theirs(w, answer[1].decode())
    assert Conversation.objects.filter(title="in").count() == 0


def rest_workspace_list(r: Rest) -> None:
    status, content, _ = r.call("GET", "/api/workspaces/")
    assert status == 200
    assert len(json.loads(content)) == 1  # her personal workspace only
    assert_nothing_of_theirs(r.world, content.decode())


def rest_workspace_create(r: Rest) -> None:
    """Creating a workspace (even under the victim's workspace's name) makes only the caller's."""
    w = r.world
    name = w.secrets[2]
    status, content, _ = r.call("POST", "/api/workspaces/", {"name": name})
    assert status == 201
    created = json.loads(content)
    assert created["id"] != w.workspace
    assert (
        WorkspaceMember.objects.filter(workspace_id=created["id"]).values_list("user_id", flat=True).get()
        == w.mallory.id
    )
    assert WorkspaceMember.objects.filter(workspace_id=w.workspace, user=w.mallory).count() == 0


def rest_index_page(r: Rest) -> None:
    status, content, _ = r.call("GET", "/")
    assert status == 200
    assert "mallory&#x27;s own" in content.decode() or "mallory's own" in content.decode()
    assert_nothing_of_theirs(r.world, content.decode())


def rest_login(r: Rest) -> None:
    """A wrong password for the victim answers like an unknown user (no account probing) and logs
    nobody in."""
    w = r.world
    anonymous = HttpClient()
    wrong = anonymous.post("/login/", {"username": w.alice.username, "password": "wrong-password"})
    unknown = anonymous.post("/login/", {"username": "no-such-user-x", "password": "wrong-password"})
    assert wrong.status_code == unknown.status_code == 200
    assert CSRF_TOKEN.sub("", wrong.content.decode()).replace(w.alice.username, "<u>") == CSRF_TOKEN.sub(
        "", unknown.content.decode()
    ).replace("no-such-user-x", "<u>")
    assert "_auth_user_id" not in anonymous.session


# SSO on against a provider that is not there (nothing listens on port 9): every exchange with it fails.
SSO_ON = {
    "OIDC_ENABLED": True,
    "OIDC_RP_CLIENT_ID": "isolation-client",
    "OIDC_RP_CLIENT_SECRET": "isolation-secret",
    **{
        f"OIDC_OP_{name}": f"http://127.0.0.1:9/{name.lower()}"
        for name in ("AUTHORIZATION_ENDPOINT", "TOKEN_ENDPOINT", "USER_ENDPOINT", "JWKS_ENDPOINT", "ISSUER")
    },
}


def rest_sso(r: Rest) -> None:
    """SSO off: both routes are missing. On: the start names nothing of anyone's, and a callback the attacker
    makes up (her own state with a forged code, or a state she never got) logs nobody in as anyone else."""
    w = r.world
    anonymous = HttpClient()
    for client in (r.pages, anonymous):
        assert client.get("/oidc/authenticate/").status_code == 404
        assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    backends = ["chat.services.login_guard.GuardedModelBackend", "enterprise.sso.SsoBackend"]
    with override_settings(**SSO_ON, AUTHENTICATION_BACKENDS=backends):
        for client in (r.pages, anonymous):
            start = client.get("/oidc/authenticate/")
            assert start.status_code == 302
            assert start["Location"].startswith("http://127.0.0.1:9/")
            assert_nothing_of_theirs(w, unquote(start["Location"]))
            state = re.search(r"state=([^&]+)", start["Location"])
            assert state is not None
            forged = client.get(f"/oidc/callback/?code=forged&state={state.group(1)}")
            assert forged.status_code == 302
            assert forged["Location"] == "/login/?sso=refused"
            unknown = client.get("/oidc/callback/?code=forged&state=never-issued")
            assert unknown.status_code in (302, 400)
        assert r.pages.get("/").wsgi_request.user == w.mallory
        assert "_auth_user_id" not in anonymous.session


def rest_logout(r: Rest) -> None:
    """The attacker logging out ends her session only: the victim's browser session still works."""
    w = r.world
    victim = HttpClient()
    victim.force_login(w.alice)
    assert r.pages.post("/logout/").status_code in (200, 302)
    assert r.pages.get("/").status_code == 302  # mallory is logged out...
    assert victim.get("/").status_code == 200  # ...alice is not


def rest_admin(r: Rest) -> None:
    """A non-staff user gets the admin's login redirect whether the object exists or not."""
    same_as_missing(r, "GET", "/admin/chat/conversation/{id}/change/")
    same_as_missing(r, "GET", "/admin/chat/workspace/{id}/change/")
    same_as_missing(r, "GET", "/admin/agents/agentrun/{id}/change/")
    status, content, location = r.call("GET", "/admin/chat/message/?q=" + r.world.secrets[1])
    assert status == 302
    assert "/admin/login/" in location
    assert_nothing_of_theirs(r.world, content.decode(), allowed=r.world.secrets[1])


def rest_token(r: Rest) -> None:
    """The victim's username with a wrong password answers exactly like an unknown username."""
    anonymous = APIClient()
    wrong = anonymous.post("/api/auth/token/", {"username": r.world.alice.username, "password": "x"}, format="json")
    unknown = anonymous.post("/api/auth/token/", {"username": "no-such-user-x", "password": "x"}, format="json")
    assert (wrong.status_code, wrong.content) == (unknown.status_code, unknown.content) == (401, unknown.content)


def rest_token_refresh(r: Rest) -> None:
    """The victim's access token is no refresh token: no new token comes back."""
    anonymous = APIClient()
    for token in (access_token(r.world.alice), "garbage"):
        response = anonymous.post("/api/auth/token/refresh/", {"refresh": token}, format="json")
        assert response.status_code == 401
        assert "access" not in response.json()


def rest_admin_login(r: Rest) -> None:
    """The admin's login page: the victim's username with a wrong password answers like an unknown
    username (no account probing) and logs nobody in."""
    w = r.world
    anonymous = HttpClient()
    wrong = anonymous.post("/admin/login/", {"username": w.alice.username, "password": "wrong-password"})
    unknown = anonymous.post("/admin/login/", {"username": "no-such-user-x", "password": "wrong-password"})
    assert wrong.status_code == unknown.status_code == 200
    assert CSRF_TOKEN.sub("", wrong.content.decode()).replace(w.alice.username, "<u>") == CSRF_TOKEN.sub(
        "", unknown.content.decode()
    ).replace("no-such-user-x", "<u>")
    assert "_auth_user_id" not in anonymous.session


def rest_logout_all(r: Rest) -> None:
    """The attacker logging out everywhere ends her own tokens and session only."""
    victim = APIClient()
    victim.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(r.world.alice)}")
    status, _, _ = r.call("POST", "/api/auth/logout-all/")
    assert status == 204
    assert r.api.get("/api/conversations/").status_code == 401  # mallory's token is revoked...
    assert r.pages.get("/").status_code == 302  # ...and her session
    assert victim.get("/api/conversations/").status_code == 200  # ...alice's are not


def rest_favicon(r: Rest) -> None:
    status, _, location = r.call("GET", "/favicon.ico")
    assert status == 301
    assert location.endswith("chat/favicon.svg")


def rest_health(r: Rest) -> None:
    for path in ("/livez", "/healthz", "/readyz"):
        status, content, _ = r.call("GET", path)
        assert status == 200
        assert_nothing_of_theirs(r.world, content.decode())


def rest_metrics(r: Rest) -> None:
    status, content, _ = r.call("GET", "/metrics")
    assert status == 403  # staff or the scraper's token only
    assert_nothing_of_theirs(r.world, content.decode())


def rest_dashboard(r: Rest) -> None:
    status, content, location = r.call("GET", "/staff/dashboard/")
    assert status == 302  # staff only: sent to the admin login
    assert "/admin/login/" in location
    assert_nothing_of_theirs(r.world, content.decode())


def rest_dashboard_data(r: Rest) -> None:
    status, content, _ = r.call("GET", "/staff/dashboard/data")
    assert status == 403
    assert_nothing_of_theirs(r.world, content.decode())


def push_subscription_json(endpoint: str) -> dict[str, Any]:
    """A browser's PushSubscription JSON with valid keys (a P-256 point and a 16-byte secret)."""
    return Browser().subscription(endpoint)


def victim_endpoint(w: World) -> str:
    return next(s for s in w.secrets if s.startswith("https://fcm.googleapis.com/"))


def rest_me_settings_get(r: Rest) -> None:
    status, content, _ = r.call("GET", "/api/me/notification-settings/")
    assert status == 200
    assert json.loads(content)["conversations"] == {}  # hers: none set
    assert_nothing_of_theirs(r.world, content.decode())


def rest_me_settings_patch(r: Rest) -> None:
    """Setting a level on their conversation (in every spelling) answers exactly like a conversation
    that does not exist, and changes nothing; her own conversation takes it."""
    w = r.world
    missing = r.call("PATCH", "/api/me/notification-settings/", {"conversations": {str(uuid.uuid4()): "none"}})
    assert missing[0] == 400
    for name, target in w.ids().items():
        if isinstance(target, str) and target:
            answer = r.call("PATCH", "/api/me/notification-settings/", {"conversations": {target: "none"}})
            assert answer == missing, name
    ok = r.call("PATCH", "/api/me/notification-settings/", {"conversations": {w.own_conv: "none"}})
    assert ok[0] == 200
    assert_nothing_of_theirs(w, ok[1].decode())


def rest_me_get(r: Rest) -> None:
    status, content, _ = r.call("GET", "/api/me/")
    assert status == 200
    assert json.loads(content)["username"] == r.world.mallory.username  # only ever the caller
    assert_nothing_of_theirs(r.world, content.decode())


def rest_me_patch(r: Rest) -> None:
    """The body names no user: whatever it carries, only the caller's own zone can change."""
    w = r.world
    for body in (
        {"time_zone": "Asia/Tokyo", "id": w.alice.id},
        {"time_zone": "Asia/Tokyo", "username": w.alice.username},
    ):
        status, content, _ = r.call("PATCH", "/api/me/", body)
        assert status in (200, 400), content
    status, _, _ = r.call("PATCH", "/api/me/", {"time_zone": "Europe/Paris"})
    assert status == 200
    assert User.objects.get(id=w.mallory.id).time_zone == "Europe/Paris"


def rest_me_notifications_get(r: Rest) -> None:
    for query in ("", "?unread=1", "?before=2&limit=100"):
        status, content, _ = r.call("GET", "/api/me/notifications/" + query)
        assert status == 200
        assert json.loads(content)["notifications"] == []  # she has none; theirs are not hers
        assert_nothing_of_theirs(r.world, content.decode())


def rest_me_notifications_read(r: Rest) -> None:
    status, content, _ = r.call("POST", "/api/me/notifications/read/", {"up_to_seq": 10**9})
    assert status == 200
    assert json.loads(content) == {"read_up_to_seq": 0, "unread": 0}  # her head is 0: the victims' stay unread


def rest_me_notifications_test(r: Rest) -> None:
    status, content, _ = r.call("POST", "/api/me/notifications/test/")
    assert status == 409  # no Web Push configured here; with it, the test push is hers only
    assert_nothing_of_theirs(r.world, content.decode())


def rest_me_push_post(r: Rest) -> None:
    """Even the victim's own endpoint only ever becomes a subscription of the caller's."""
    status, content, _ = r.call("POST", "/api/me/push-subscriptions/", push_subscription_json(victim_endpoint(r.world)))
    assert status == 201
    assert PushSubscription.objects.filter(user=r.world.mallory).count() == 1
    assert_nothing_of_theirs(r.world, content.decode(), allowed=victim_endpoint(r.world))


def rest_me_push_delete(r: Rest) -> None:
    missing = r.call("DELETE", "/api/me/push-subscriptions/", {"endpoint": "https://fcm.googleapis.com/fcm/send/x"})
    assert missing[0] == 404
    assert r.call("DELETE", "/api/me/push-subscriptions/", {"endpoint": victim_endpoint(r.world)}) == missing


def rest_notification_settings_page(r: Rest) -> None:
    status, content, _ = r.call("GET", "/settings/notifications/")
    assert status == 200
    assert "mallory&#x27;s own" in content.decode() or "mallory's own" in content.decode()
    assert_nothing_of_theirs(r.world, content.decode())


def rest_service_worker(r: Rest) -> None:
    status, content, _ = r.call("GET", "/sw.js")
    assert status == 200
    assert b"addEventListener('push'" in content
    assert_nothing_of_theirs(r.world, content.decode())


def rest_api_schema(r: Rest) -> None:
    """The schema describes the API, never anyone's data: the same document for every signed-in caller;
    nothing at all for an anonymous one."""
    status, content, _ = r.call("GET", "/api/schema/")
    assert status == 200
    assert b"/api/conversations/{conversation_id}/" in content
    assert_nothing_of_theirs(r.world, content.decode())
    assert APIClient().get("/api/schema/").status_code == 401


def rest_api_docs(r: Rest) -> None:
    for client in (r.api, r.pages):  # a Bearer token or the browser's session
        page = client.get("/api/docs/")
        assert page.status_code == 200
        script = client.get("/api/docs/?script=")
        assert script.status_code == 200
        assert_nothing_of_theirs(r.world, page.content.decode() + script.content.decode())
    assert APIClient().get("/api/docs/").status_code in (401, 403)


REST_CASES: dict[tuple[str, str], Callable[[Rest], None]] = {
    ("api/schema/", "GET"): rest_api_schema,
    ("api/docs/", "GET"): rest_api_docs,
    ("", "*"): rest_index_page,
    ("c/<str:conversation_id>/", "*"): rest_conversation_page,
    ("login/", "*"): rest_login,
    ("favicon.ico", "*"): rest_favicon,
    ("logout/", "*"): rest_logout,
    ("oidc/authenticate/", "*"): rest_sso,
    ("oidc/callback/", "*"): rest_sso,
    ("admin/login/", "*"): rest_admin_login,
    ("admin/", "*"): rest_admin,
    ("api/auth/token/", "POST"): rest_token,
    ("api/auth/token/refresh/", "POST"): rest_token_refresh,
    ("api/auth/logout-all/", "POST"): rest_logout_all,
    ("api/conversations/", "GET"): rest_conversation_list,
    ("api/conversations/", "POST"): rest_conversation_create,
    ("api/conversations/<str:conversation_id>/", "GET"): rest_conversation_get,
    ("api/conversations/<str:conversation_id>/", "PATCH"): rest_conversation_patch,
    ("api/conversations/<str:conversation_id>/", "DELETE"): rest_conversation_manage,
    ("api/conversations/<str:conversation_id>/members/<str:user_id>/", "PATCH"): rest_conversation_member_patch,
    ("api/conversations/<str:conversation_id>/members/<str:user_id>/", "DELETE"): rest_conversation_member_delete,
    ("api/conversations/<str:conversation_id>/join/", "POST"): rest_conversation_join,
    ("api/workspaces/<str:workspace_id>/conversations/", "GET"): rest_workspace_conversations_get,
    ("api/conversations/<str:conversation_id>/members/", "GET"): rest_conversation_members_get,
    ("api/conversations/<str:conversation_id>/members/", "POST"): rest_conversation_members_post,
    ("api/conversations/<str:conversation_id>/events/", "GET"): rest_conversation_events_get,
    ("api/conversations/<str:conversation_id>/feedback/", "GET"): rest_conversation_feedback_get,
    (
        "api/conversations/<str:conversation_id>/runs/<str:run_id>/tool-calls/<str:call_id>/result/",
        "GET",
    ): rest_tool_call_result_get,
    ("api/conversations/<str:conversation_id>/messages/<str:message_id>/", "PATCH"): rest_message_patch,
    ("api/conversations/<str:conversation_id>/messages/<str:message_id>/", "DELETE"): rest_message_delete,
    ("api/conversations/<str:conversation_id>/messages/<str:message_id>/feedback/", "PUT"): rest_message_feedback_put,
    ("api/search/", "GET"): rest_search,
    ("api/ag-ui/", "POST"): rest_agui_run,
    ("api/runs/<str:run_id>/ag-ui/", "GET"): rest_run_agui_export,
    ("api/workspaces/", "GET"): rest_workspace_list,
    ("api/workspaces/", "POST"): rest_workspace_create,
    ("api/workspaces/<str:workspace_id>/members/", "GET"): rest_workspace_members_get,
    ("api/workspaces/<str:workspace_id>/members/", "POST"): rest_workspace_members_post,
    ("api/workspaces/<str:workspace_id>/audit/", "GET"): rest_workspace_audit,
    ("api/workspaces/<str:workspace_id>/webhooks/", "GET"): rest_webhooks_get,
    ("api/workspaces/<str:workspace_id>/webhooks/", "POST"): rest_webhooks_post,
    ("api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/", "GET"): rest_webhook_get,
    ("api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/", "PATCH"): rest_webhook_patch,
    ("api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/", "DELETE"): rest_webhook_delete,
    ("api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/rotate-secret/", "POST"): rest_webhook_rotate,
    ("api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/deliveries/", "GET"): rest_webhook_deliveries,
    (
        "api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/deliveries/<str:delivery_id>/redeliver/",
        "POST",
    ): rest_webhook_redeliver,
    ("livez", "*"): rest_health,
    ("healthz", "*"): rest_health,
    ("readyz", "*"): rest_health,
    ("metrics", "*"): rest_metrics,
    ("api/me/", "GET"): rest_me_get,
    ("api/me/", "PATCH"): rest_me_patch,
    ("api/me/notification-settings/", "GET"): rest_me_settings_get,
    ("api/me/notification-settings/", "PATCH"): rest_me_settings_patch,
    ("api/me/notifications/", "GET"): rest_me_notifications_get,
    ("api/me/notifications/read/", "POST"): rest_me_notifications_read,
    ("api/me/notifications/test/", "POST"): rest_me_notifications_test,
    ("api/me/push-subscriptions/", "POST"): rest_me_push_post,
    ("api/me/push-subscriptions/", "DELETE"): rest_me_push_delete,
    ("settings/notifications/", "*"): rest_notification_settings_page,
    ("sw.js", "*"): rest_service_worker,
    ("api/workspaces/<str:workspace_id>/analytics/", "GET"): rest_workspace_analytics,
    ("api/workspaces/<str:workspace_id>/sla/", "GET"): rest_workspace_sla,
    ("api/workspaces/<str:workspace_id>/export/", "GET"): rest_workspace_export,
    ("w/<str:workspace_id>/analytics/", "*"): rest_workspace_analytics_page,
    ("staff/dashboard/", "*"): rest_dashboard,
    ("staff/dashboard/data", "*"): rest_dashboard_data,
}


def test_every_route_is_covered() -> None:
    assert discovered_routes() == set(REST_CASES), "a route without an isolation case (or a stale case)"


@pytest.mark.parametrize("route", sorted(REST_CASES), ids=lambda r: f"{r[1]} /{r[0]}")
def test_rest_route_isolation(rest: Rest, route: tuple[str, str]) -> None:
    before = victim_state(rest.world)
    REST_CASES[route](rest)
    after = victim_state(rest.world)
    if route == ("api/workspaces/", "POST"):  # her own new workspace is the one legitimate change
        after["attacker_workspaces"] = before["attacker_workspaces"]
    assert after == before


# --- membership revoked and other membership changes ---------------------------------------------------
async def test_events_reach_members_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    eve = await database_sync_to_async(make_user)()
    conv_ab = await factories.conversation(alice, agent="", members=((bob, "member"),))
    conv_e = await factories.conversation(eve, agent="")
    clients = {}
    for name, user, conv in (("alice", alice, conv_ab), ("bob", bob, conv_ab), ("eve", eve, conv_e)):
        client, _, _ = await Client.connect(user)
        await client.recv()
        await client.command("subscribe", conversation=conv, since_seq=0)
        clients[name] = client
    await clients["alice"].command("send", conversation=conv_ab, client_msg_id="1", text="secret for bob")
    await clients["eve"].command("send", conversation=conv_e, client_msg_id="1", text="eve alone")
    await clients["bob"].seen_or_until(lambda f: f.get("type") == "message")
    await clients["eve"].seen_or_until(lambda f: f.get("type") == "message")
    assert [e["data"]["text"] for e in clients["bob"].events(conv_ab)] == ["secret for bob"]
    assert [e["data"]["text"] for e in clients["eve"].events(conv_e)] == ["eve alone"]
    assert "secret for bob" not in str(clients["eve"].frames)
    assert "eve alone" not in str(clients["bob"].frames) + str(clients["alice"].frames)
    for client in clients.values():
        await client.close()


async def test_membership_removed_means_not_found_from_then_on(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent="", members=((member, "member"),))
    client, _, _ = await Client.connect(member)
    await client.recv()
    assert (await client.command("history", conversation=conv))["ok"] is True
    await database_sync_to_async(ConversationMember.objects.filter(conversation_id=conv, user=member).delete)()
    assert (await client.command("history", conversation=conv))["error"]["code"] == "not_found"
    reply = await client.command("send", conversation=conv, client_msg_id="late", text="still here?")
    assert reply["error"]["code"] == "not_found"
    await client.close()


async def test_a_removed_member_stops_receiving_at_once_and_then_finds_nothing(make_user: Any) -> None:
    """Removed mid-session (the service the API and admin use): both of the member's sockets get the
    revocation notice, then nothing of the conversation — not its next message, typing or read,
    sent right after the removal without waiting — and every command on it, and on its run,
    answers exactly like a conversation or run that does not exist."""
    from chat.services.conversations import conversation_member_remove

    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    # `always`: the owner's message starts a run, whose id the removed member then probes.
    conv = await factories.conversation(owner, members=((member, "member"),), agent_mode="always")
    owner_client, _, _ = await Client.connect(owner)
    await owner_client.recv()
    await owner_client.command("subscribe", conversation=conv)
    tabs = [(await Client.connect(member))[0] for _ in range(2)]
    for tab in tabs:
        await tab.recv()
        assert (await tab.command("subscribe", conversation=conv))["ok"] is True
    sent = await owner_client.command("send", conversation=conv, client_msg_id="1", text="still visible")
    for tab in tabs:
        await tab.seen_or_until(lambda f: f.get("type") == "message")

    await database_sync_to_async(conversation_member_remove)(conversation_id=conv, actor_id=owner.id, user_id=member.id)
    await owner_client.command("send", conversation=conv, client_msg_id="2", text="after removal")
    await owner_client.command("typing", conversation=conv, state="start")
    await owner_client.command("read", conversation=conv, seq=2)
    for tab in tabs:
        notice = await tab.seen_or_until(lambda f: f.get("type") == "error")
        assert notice["error"]["code"] == "not_found"
        assert (await tab.command("ping"))["ok"] is True  # a round trip: anything queued has arrived
        assert "after removal" not in json.dumps(tab.frames)
        assert not [f for f in tab.frames if f.get("type") in ("typing", "read")]

    tab = tabs[0]
    raw: list[str] = []
    for command, (id_field, variants) in ID_COMMANDS.items():
        for extra in variants:
            target = sent["run_id"] if id_field == "run_id" else conv
            missing = await probe_client(tab, raw, {"type": command, **extra, id_field: str(uuid.uuid4())})
            answer = await probe_client(tab, raw, {"type": command, **extra, id_field: target})
            assert answer == missing, f"{command} {extra}: {answer} != {missing}"
    assert "after removal" not in "".join(raw)
    stored = await database_sync_to_async(list)(
        Message.objects.filter(conversation_id=conv).order_by("seq").values_list("text", flat=True)
    )
    assert stored == ["still visible", "after removal"]  # the member's attempts stored nothing


async def test_the_agents_history_search_never_reaches_into_another_conversation(make_user: Any, settings: Any) -> None:
    """The search_history tool runs as the requester, who may be in conversations the other members
    are not: its result (an event all members read) must come from this conversation only."""
    settings.AGENT_RUNNER = "inprocess"
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    shared = await factories.conversation(alice, members=((bob, "member"),), agent_mode="always")
    private = await factories.conversation(alice, agent="")
    mark = uuid.uuid4().hex[:8]
    await database_sync_to_async(message_send)(
        conversation_id=private,
        author_id=alice.id,
        username=alice.username,
        client_msg_id="p",
        text=f"zebra{mark} is alice's private note",
        can_write=True,
    )
    bob_client, _, _ = await Client.connect(bob)
    await bob_client.recv()
    await bob_client.command("subscribe", conversation=shared)
    alice_client, _, _ = await Client.connect(alice)
    await alice_client.recv()
    sent = await alice_client.command("send", conversation=shared, client_msg_id="q", text=f"search for zebra{mark}")
    assert sent["ok"] is True
    tool = await bob_client.seen_or_until(lambda f: f.get("type") == "tool_completed", timeout=15)
    assert tool["data"]["tool"] == "search_history"
    await bob_client.seen_or_until(lambda f: f.get("type") == "agent_completed", timeout=15)
    assert "private note" not in json.dumps(bob_client.frames)
    stored = await database_sync_to_async(list)(Event.objects.filter(conversation_id=shared).values_list("data"))
    assert "private note" not in json.dumps(stored, default=str)
