"""One ASGI server process of `manage.py serve`: uvicorn, configured here instead of on its command line.

Two things uvicorn's command line cannot do:

- **One port for every process.** With `serve --ports shared` each server process binds its own listening
  socket to the same port with SO_REUSEPORT, and the kernel spreads new connections over the live sockets (by
  a hash of each connection's addresses), so a browser at the one URL is served by every core. A process that
  exits takes its socket out of the group: the others take its share until serve has restarted it. uvicorn
  binds without SO_REUSEPORT, and its `--fd` adopts a descriptor as AF_UNIX, which would garble every client
  address (per-IP limits, the X-Forwarded-For trust).
- **A restart that loses no queued frame.** On SIGTERM uvicorn closes every WebSocket with 1012 at once,
  dropping what the socket's outbox still held. Here the process first stops accepting, then asks every
  socket to write what is queued and close with 1012 (chat/realtime/shutdown.py), for at most
  CHAT_SHUTDOWN_DRAIN_S, and only then lets uvicorn close what is left. Clients resume on another process from
  the last seq they hold (docs/protocol.md §2).

The protocol classes and options are the ones serve always used: chat/infra/uvicorn_protocols.py (a bounded
request head, one log line for a bad frame), the trusted proxies of settings.TRUSTED_PROXIES, no access log,
no lifespan, frames up to CHAT_MAX_FRAME_BYTES, and no permessage-deflate (chat.v1.deflate compresses once
per broadcast instead: chat/realtime/compression_handler.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import django
import uvicorn
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django.setup()  # before the imports below, which define or use models

# isort: split
from chat.infra import client_address  # noqa: E402
from chat.infra.log_redaction import install_log_redaction  # noqa: E402
from chat.realtime.shutdown import drain_sockets  # noqa: E402
from chatsite.asgi import application  # noqa: E402

logger = logging.getLogger(__name__)

UVICORN_HTTP = "chat.infra.uvicorn_protocols:GuardedHttpToolsProtocol"
UVICORN_WS = "chat.infra.uvicorn_protocols:QuietWebSocketsSansIOProtocol"


def uvicorn_config(host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        http=UVICORN_HTTP,
        ws=UVICORN_WS,
        access_log=False,
        lifespan="off",
        log_level=log_level,
        ws_max_size=settings.CHAT_MAX_FRAME_BYTES + 1024,
        ws_per_message_deflate=False,
        **client_address.uvicorn_proxy_options(),
    )
    # The Config has just set up uvicorn's own loggers, after the application (imported above) put the
    # token-redacting filter on every handler there was: it goes on uvicorn's new handlers too.
    install_log_redaction()
    return config


def shared_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on (host, port) that the other server processes bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first (uvicorn does it again, harmlessly): a socket opened now would only be closed.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        left = await drain_sockets(code=1012, timeout_s=settings.CHAT_SHUTDOWN_DRAIN_S)
        if left:
            logger.warning(
                "%d socket(s) had not written their queued frames after %ss", left, settings.CHAT_SHUTDOWN_DRAIN_S
            )
        await super().shutdown(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other processes")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = uvicorn_config(args.host, args.port, args.log_level)
    server = DrainingServer(config)
    if args.reuse_port:
        server.run(sockets=[shared_listener(args.host, args.port, config.backlog)])
    else:
        server.run()


if __name__ == "__main__":
    main()
