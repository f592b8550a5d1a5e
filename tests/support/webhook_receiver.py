"""A webhook receiver for tests, on 127.0.0.1 and a free port: it verifies every delivery's signature with
standardwebhooks, as a customer's receiver would, and answers with the statuses the test scripts.

    receiver = WebhookReceiver.start()
    receiver.secrets = [secret]                 # what Webhook(secret).verify must accept
    receiver.answers = [500]                    # the next answers, in order; then 204
    ... the worker sends ...
    [hit] = receiver.hits                       # headers, body, parsed payload, status answered
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: Any
    # Each configured secret whose Webhook(secret).verify accepted the request.
    verified_by: list[str]
    status: int


@dataclass
class WebhookReceiver:
    server: ThreadingHTTPServer
    secrets: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls) -> WebhookReceiver:
        holder: dict[str, WebhookReceiver] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                holder["receiver"].handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        receiver = cls(server=server)
        holder["receiver"] = receiver
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return receiver

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = []
        for secret in list(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(secret)
            except WebhookVerificationError:
                pass
        with self.lock:
            status = self.answers.pop(0) if self.answers else 204
            self.hits.append(Hit(request.path, headers, body, json.loads(body), verified, status))
        request.send_response(status)
        request.send_header("content-length", "0")
        request.end_headers()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
