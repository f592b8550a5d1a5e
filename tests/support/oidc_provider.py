"""A small OpenID Connect provider for the SSO tests: a real HTTP server on a free local port, in a thread.

It serves the discovery document, an authorize endpoint that answers at once with a redirect back to the
client carrying a one-time code (the person is "logged in" as `provider.identity`), a token endpoint that
checks the code, client and PKCE verifier and issues an RS256-signed id_token, the JWKS, and userinfo.
Tests shape what it asserts through `identity` (the person's claims) and `id_token_overrides` (aud, iss,
exp... as a misbehaving or hostile provider would send them). No outside network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

CLIENT_ID = "chat-test-client"
CLIENT_SECRET = "chat-test-secret"
KEY_ID = "test-key-1"


@dataclass
class Grant:
    redirect_uri: str
    nonce: str | None
    code_challenge: str | None
    claims: dict[str, Any]


@dataclass
class OidcProvider:
    """Start with `start()`, stop with `stop()`; `settings()` are the Django settings that point at it."""

    identity: dict[str, Any] = field(default_factory=dict)
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    token_requests: int = 0
    _key: Any = None
    _server: ThreadingHTTPServer | None = None
    _grants: dict[str, Grant] = field(default_factory=dict)
    _access: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OidcProvider:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                provider._get(self)

            def do_POST(self) -> None:  # noqa: N802
                provider._post(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def settings(self) -> dict[str, Any]:
        return {
            "OIDC_ENABLED": True,
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.issuer}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.issuer}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.issuer}/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": f"{self.issuer}/jwks",
            "OIDC_OP_ISSUER": self.issuer,
        }

    # --- endpoints ------------------------------------------------------------------------------------------
    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            self._json(h, 200, self._discovery())
        elif url.path == "/jwks":
            jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
            self._json(h, 200, {"keys": [jwk | {"kid": KEY_ID, "alg": "RS256", "use": "sig"}]})
        elif url.path == "/authorize":
            self._authorize(h, query)
        elif url.path == "/userinfo":
            token = h.headers.get("Authorization", "").removeprefix("Bearer ")
            with self._lock:
                claims = self._access.get(token)
            self._json(h, 200, claims) if claims is not None else self._json(h, 401, {"error": "invalid_token"})
        else:
            self._json(h, 404, {"error": "not_found"})

    def _authorize(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        if (
            query.get("client_id") != CLIENT_ID
            or query.get("response_type") != "code"
            or "openid" not in query.get("scope", "").split()
        ):
            self._json(h, 400, {"error": "invalid_request"})
            return
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._grants[code] = Grant(
                query["redirect_uri"], query.get("nonce"), query.get("code_challenge"), dict(self.identity)
            )
        back = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
        h.send_response(302)
        h.send_header("Location", back)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        if urlsplit(h.path).path != "/token":
            self._json(h, 404, {"error": "not_found"})
            return
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        with self._lock:
            self.token_requests += 1
            grant = self._grants.pop(form.get("code", ""), None)  # one use only
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("client_id") != CLIENT_ID
            or form.get("client_secret") != CLIENT_SECRET
            or form.get("redirect_uri") != grant.redirect_uri
            or not _pkce_ok(grant.code_challenge, form.get("code_verifier"))
        ):
            self._json(h, 400, {"error": "invalid_grant"})
            return
        access = secrets.token_urlsafe(24)
        with self._lock:
            self._access[access] = grant.claims
        now = int(time.time())
        id_claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": grant.nonce}
        id_claims |= grant.claims | self.id_token_overrides
        id_claims = {k: v for k, v in id_claims.items() if v is not None}
        id_token = jwt.encode(id_claims, self._key, algorithm="RS256", headers={"kid": KEY_ID})
        self._json(h, 200, {"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": id_token})

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)


def _pkce_ok(challenge: str | None, verifier: str | None) -> bool:
    """S256 (RFC 7636): the token request's verifier must hash to the authorize request's challenge."""
    if challenge is None:
        return True
    if not verifier:
        return False
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return digest == challenge
