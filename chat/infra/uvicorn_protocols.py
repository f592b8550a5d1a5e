"""The uvicorn protocol classes `manage.py serve` runs (`--http` and `--ws` take import strings).

`GuardedHttpToolsProtocol` bounds the HTTP request head, which uvicorn does not: its keep-alive
timeout starts only after a first response, so a connection that dribbles its request line and
headers a byte at a time (slowloris) stays open for as long as the client likes. Here every
connection must complete its head within settings.CHAT_HANDSHAKE_TIMEOUT_S of opening (or of the
previous response, for a keep-alive connection's next request), else it is answered 408 and
closed; and one client address may have at most CHAT_INCOMPLETE_HANDSHAKES_PER_IP connections
waiting for their head at once, a further one is closed at once. A WebSocket upgrade is an HTTP
request like any other until its head is complete, so both bounds cover the WebSocket handshake.

`QuietWebSocketsSansIOProtocol` is uvicorn's websockets-sansio protocol with one change: a text
frame that is not valid UTF-8 closes the socket with 1007 and logs one INFO line, where uvicorn
logs a traceback at ERROR for every such frame (a client can produce those at will).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from chat.infra import client_address, handshake_guard
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _head_timer: asyncio.TimerHandle | None = None
    _head_address: str | None = None  # counted in handshake_guard.incomplete_heads while the head is due

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = self.client[0] if self.client else ""
        if peer and not client_address.is_trusted_proxy(peer):
            if not handshake_guard.incomplete_heads.try_add(peer, settings.CHAT_INCOMPLETE_HANDSHAKES_PER_IP):
                handshake_guard.refused(
                    "incomplete_per_ip", "closed a connection from %s: too many incomplete request heads", peer
                )
                self.transport.close()
                return
            self._head_address = peer
        self._head_timer = self.loop.call_later(settings.CHAT_HANDSHAKE_TIMEOUT_S, self._head_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None and not self.transport.is_closing():
            # The next request on a keep-alive connection: its head is due as the first one was. (Not
            # counted per address: this connection already passed that check when it opened.)
            self._head_timer = self.loop.call_later(settings.CHAT_HANDSHAKE_TIMEOUT_S, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._head_address is not None:
            handshake_guard.incomplete_heads.remove(self._head_address)
            self._head_address = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._head_arrived()
        peer = self.client[0] if self.client else "?"
        handshake_guard.refused("head_timeout", "closed a connection from %s: request head not complete in time", peer)
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


class QuietWebSocketsSansIOProtocol(WebSocketsSansIOProtocol):
    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            # Checked here, before uvicorn decodes the same bytes, because uvicorn's own handling
            # of a bad frame logs a traceback. (Inbound frames only: the fan-out never comes here.)
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                self.frames = []
                metrics.inc("invalid_utf8_frames")
                peer = self.client[0] if self.client else "?"
                logger.info("closed a WebSocket from %s with 1007: a text frame was not valid UTF-8", peer)
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()
