"""A local Web Push service for tests, on 127.0.0.1 and a free port, and a "browser" that subscribes
to it: the server under test encrypts and signs real pushes, and this endpoint checks the VAPID
signature and decrypts the aes128gcm body with http_ece, as a push service and a browser would
between them. No outside network.

    endpoint = PushEndpoint.start()
    browser = Browser()
    subscription = browser.subscription(endpoint.url("bob-laptop"))   # the PushSubscription JSON
    ... the server pushes ...
    [push] = endpoint.received("bob-laptop")
    browser.decrypt(push.body)  -> the payload dict
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Browser:
    """The receiving side of one subscription: its P-256 key pair and auth secret."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    @property
    def p256dh(self) -> str:
        return b64url(self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))

    def subscription(self, endpoint: str) -> dict[str, Any]:
        return {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)},
        }

    def decrypt(self, body: bytes) -> dict[str, Any]:
        plain = http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm")
        return json.loads(plain)  # type: ignore[no-any-return]


@dataclass
class Push:
    name: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    vapid_claims: dict[str, Any]


@dataclass
class PushEndpoint:
    server: ThreadingHTTPServer
    pushes: list[Push] = field(default_factory=list)
    # name → HTTP status to answer instead of 201 (404/410: gone; 503: try later).
    answers: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls) -> PushEndpoint:
        endpoint: PushEndpoint

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                claims = verify_vapid(self.headers.get("Authorization", ""), f"http://{self.headers['Host']}")
                with endpoint.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    endpoint.pushes.append(Push(name, headers, body, claims))
                    status = endpoint.answers.get(name, 201)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        endpoint = cls(server)
        threading.Thread(target=server.serve_forever, name="push-endpoint", daemon=True).start()
        return endpoint

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def url(self, name: str) -> str:
        return f"http://{self.host}/push/{name}"

    def received(self, name: str) -> list[Push]:
        with self.lock:
            return [p for p in self.pushes if p.name == name]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify_vapid(authorization: str, origin: str) -> dict[str, Any]:
    """RFC 8292: `vapid t=<ES256 JWT>, k=<public key>`; the signature must verify with k and the
    token's audience must be this push service's origin. Returns the claims."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid", f"no VAPID authorization: {authorization!r}"
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    header, payload, signature = parts["t"].split(".")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(parts["k"]))
    raw = unb64url(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))  # raises when forged
    claims: dict[str, Any] = json.loads(unb64url(payload))
    assert claims["aud"] == origin, claims
    return claims
