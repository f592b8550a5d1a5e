"""The chat.v1 client: one socket kept up, every conversation's events kept in seq order.

It reconnects with exponential backoff and full jitter (capped), resubscribes to every conversation
with the last seq it saw, ignores anything already seen, pages `history` when the server answers
`recovered: false`, and resends unacknowledged messages with the *same* client_msg_id (the server
makes that idempotent). `stale` is true while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

from chatclient.backoff import Backoff

# Refusals a send retries after the server's retry_after_ms (capped): waiting helps for these.
RETRYABLE = ("rate_limited", "unavailable")
MAX_RETRY_WAIT_S = 30.0
# The protocol version the server speaks; it refuses a socket that does not offer it.
SUBPROTOCOL = "chat.v1"

logger = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]
TokenSource = str | Callable[[], Awaitable[str]]


class ConnectionLost(Exception):
    """The socket dropped before the command's reply arrived; the client reconnects by itself."""


@dataclass
class Stream:
    """What the client knows of one conversation: the last seq and every event, in order."""

    last_seq: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


class ChatClient:
    def __init__(
        self,
        url: str,
        *,
        token: TokenSource,
        backoff: Backoff | None = None,
        on_event: EventCallback | None = None,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._token = token
        self.backoff = backoff or Backoff()
        self.on_event = on_event
        self.open_timeout_s = open_timeout_s
        self.streams: dict[str, Stream] = {}
        self.stale = True
        self.connects = 0
        self.duplicates_ignored = 0
        self.replays: dict[str, int] = {"recovered": 0, "not_recovered": 0}
        self.frames: list[dict[str, Any]] = []  # everything else (notifications, ephemeral, errors)
        self._ws: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chat-client")
        await self.wait_connected()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def drop(self) -> bool:
        """Cut the socket abruptly, without a close handshake, as a lost network does (chaos and
        reliability tests): the client reconnects and resumes by itself. False if not connected."""
        ws = self._ws
        if ws is None:
            return False
        transport = getattr(ws, "transport", None)
        if transport is None:
            return False
        transport.abort()
        return True

    async def _token_value(self) -> str:
        return self._token if isinstance(self._token, str) else await self._token()

    async def _run(self) -> None:
        while not self._closing:
            try:
                token = await self._token_value()
                async with websockets.connect(
                    self.url,
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=self.open_timeout_s,
                    max_size=None,
                ) as ws:
                    self._ws = ws
                    welcome = json.loads(await ws.recv())
                    if welcome.get("type") != "welcome":
                        raise ConnectionError(f"expected welcome, got {welcome.get('type')}")
                    self.connects += 1
                    self.backoff.reset()
                    reader = asyncio.create_task(self._read(ws))
                    try:
                        await self._resubscribe()  # raises ConnectionLost if the socket drops meanwhile
                        self.stale = False
                        self._connected.set()
                        await reader
                    finally:
                        reader.cancel()
                        with contextlib.suppress(BaseException):
                            await reader
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # closed, refused, timed out: all mean "try again later"
                logger.debug("chat client connection ended: %r", exc)
            finally:
                self._ws = None
                self.stale = True
                self._connected.clear()
                self._fail_pending()
            if not self._closing:
                await asyncio.sleep(self.backoff.next_delay())

    async def _read(self, ws: Any) -> None:
        try:
            async for raw in ws:
                self.handle_frame(json.loads(raw))
        finally:
            # The socket is gone: mark the client disconnected first (so a retrying send waits for
            # the reconnect instead of spinning on the dead socket), then fail every command still
            # waiting for a reply on it (a resubscribe in progress, a send): the loop starts over.
            self._ws = None
            self.stale = True
            self._connected.clear()
            self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost())

    async def _resubscribe(self) -> None:
        for conversation_id in list(self.streams):
            await self._subscribe_once(conversation_id)

    # --- frames --------------------------------------------------------------------------------------
    def handle_frame(self, frame: dict[str, Any]) -> None:
        """Route one server frame. Durable events are kept in seq order with duplicates dropped."""
        if frame.get("type") == "reply":
            future = self._pending.pop(str(frame.get("id")), None)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        conversation_id, seq = frame.get("conversation"), frame.get("seq")
        if isinstance(conversation_id, str) and isinstance(seq, int):
            stream = self.streams.setdefault(conversation_id, Stream())
            if stream.last_seq is not None and seq <= stream.last_seq:
                self.duplicates_ignored += 1
                return
            stream.last_seq = seq
            stream.events.append(frame)
            if self.on_event is not None:
                self.on_event(frame)
            return
        self.frames.append(frame)

    # --- commands ------------------------------------------------------------------------------------
    async def command(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return its reply. Raises ConnectionLost if the socket drops first."""
        ws = self._ws
        if ws is None:
            raise ConnectionLost()
        command_id = f"k{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            await ws.send(json.dumps({"type": type, "id": command_id, **fields}))
        except Exception as exc:
            self._pending.pop(command_id, None)
            raise ConnectionLost() from exc
        return await future

    async def _subscribe_once(self, conversation_id: str) -> dict[str, Any]:
        stream = self.streams.setdefault(conversation_id, Stream())
        fields: dict[str, Any] = {"conversation": conversation_id}
        resuming = stream.last_seq is not None
        if resuming:
            fields["since_seq"] = stream.last_seq
        reply = await self.command("subscribe", **fields)
        if not reply.get("ok"):
            return reply
        if not resuming:
            if stream.last_seq is None:  # (live events may already have been read after the reply)
                stream.last_seq = int(reply["head_seq"])
        elif reply.get("recovered") is False:
            self.replays["not_recovered"] += 1
            await self._page_history(conversation_id, stream, int(reply["head_seq"]))
        else:
            self.replays["recovered"] += 1
        return reply

    async def _page_history(self, conversation_id: str, stream: Stream, head_seq: int) -> None:
        """Too far behind for a replay: page back from the head to what we have, then apply in order."""
        known = stream.last_seq or 0
        pages: list[dict[str, Any]] = []
        before: int | None = head_seq + 1
        while before is not None and before > known + 1:
            page = await self.command("history", conversation=conversation_id, before_seq=before, limit=100)
            events = [e for e in page.get("events", []) if e["seq"] > known]
            pages = events + pages
            before = page["events"][0]["seq"] if page.get("has_more") and page.get("events") else None
        for event in pages:
            self.handle_frame(event)

    async def subscribe(self, conversation_id: str, *, since_seq: int | None = None) -> dict[str, Any]:
        if since_seq is not None:
            self.streams.setdefault(conversation_id, Stream()).last_seq = since_seq
        while True:
            await self.wait_connected()
            try:
                return await self._subscribe_once(conversation_id)
            except ConnectionLost:
                continue  # resubscribed on reconnect anyway; wait and ask again for the reply

    async def send(
        self, conversation_id: str, text: str, *, client_msg_id: str | None = None, attempts: int = 20
    ) -> dict[str, Any]:
        """Send until acknowledged, with one client_msg_id across retries (so at most one message).
        `rate_limited` and `unavailable` are retried after the server's `retry_after_ms`; other
        refusals (forbidden, not_found, bad_request, ...) are returned as they are."""
        key = client_msg_id or uuid.uuid4().hex
        for _ in range(attempts):
            await self.wait_connected()
            try:
                reply = await self.command("send", conversation=conversation_id, client_msg_id=key, text=text)
            except ConnectionLost:
                continue
            error = reply.get("error") or {}
            if reply.get("ok") or error.get("code") not in RETRYABLE:
                return reply
            await asyncio.sleep(min(MAX_RETRY_WAIT_S, max(0.05, error.get("retry_after_ms", 1000) / 1000)))
        raise ConnectionLost(f"send {key} not acknowledged after {attempts} attempts")

    def events(self, conversation_id: str) -> list[dict[str, Any]]:
        return list(self.streams.get(conversation_id, Stream()).events)
