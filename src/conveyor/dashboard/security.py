"""What keeps the dashboard safe: who may look (authentication), that an action comes from the
dashboard's own page and only once (signed, single-use form tokens), and what a page may load
(security headers with a strict Content-Security-Policy: no inline script, nothing from other
origins)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import ConfigurationError
from ..kv import KeyValue

#: Every page and answer carries these.
SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
SESSION_COOKIE = "conveyor_session"
#: How long a form token stays usable (a page left open longer is reloaded first).
TOKEN_TTL = 3600.0
#: How far the clocks of dashboard processes sharing a secret may differ (seconds).
CLOCK_SKEW = 60.0


@dataclass(frozen=True)
class DashboardAuth:
    """Credentials of a standalone dashboard: HTTP basic auth with ``username``/``password``,
    and/or a ``token`` accepted as ``Authorization: Bearer <token>`` or as the basic-auth
    password (any user name), so a browser can use it too."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def parse(cls, basic: str | None = None, token: str | None = None) -> DashboardAuth | None:
        """From ``--basic-auth user:password`` and ``--token``; None when neither is given."""
        if basic is not None:
            user, colon, password = basic.partition(":")
            if not colon or not user or not password:
                raise ConfigurationError("basic auth is given as user:password")
            return cls(user, password, token or None)
        return cls(token=token) if token else None

    def identify(self, headers: Headers) -> str | None:
        """Who the request's credentials name (the audit log's "who"), or None if they are
        missing or wrong."""
        header = headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return "token" if _same(value.strip(), self.token) else None
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        if self.token and _same(password, self.token):
            return f"{user or 'token'} (token)"
        if self.username and self.password:
            user_ok = _same(user, self.username)
            password_ok = _same(password, self.password)  # compared even if the user is wrong
            if user_ok and password_ok:
                return user
        return None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: DashboardAuth | None) -> None:
    """Refuse to serve a non-loopback address without authentication."""
    if auth is None and not is_loopback(host):
        raise ConfigurationError(
            f"the dashboard would be reachable on {host} without authentication; give "
            "--basic-auth user:password or --token (or $CONVEYOR_DASHBOARD_TOKEN), or bind "
            "to 127.0.0.1"
        )


class FormTokens:
    """Single-use tokens for actions: ``nonce.issued.signature``, the signature binding the
    nonce and its issue time to the browser's session cookie. A token is accepted once (the
    nonce is claimed in the broker's key/value store, so several dashboard processes sharing
    ``secret`` agree), within :data:`TOKEN_TTL` of being issued, and only with the cookie it
    was made for: a forged, replayed, stale or cross-site request changes nothing. The claim
    outlives the token, so a used token never works again."""

    def __init__(
        self,
        kv: Callable[[], KeyValue],
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def issue(self, session: str) -> str:
        nonce, issued = secrets.token_urlsafe(16), str(int(self._clock()))
        return f"{nonce}.{issued}.{self._sign(session, nonce, issued)}"

    def redeem(self, session: str, token: str) -> bool:
        nonce, _, rest = token.partition(".")
        issued, _, signature = rest.partition(".")
        if not session or not nonce or not issued.isdigit() or len(issued) > 12:
            return False
        if not _same(signature, self._sign(session, nonce, issued)):
            return False
        age = self._clock() - int(issued)
        if not -CLOCK_SKEW <= age <= TOKEN_TTL:
            return False
        return self._kv().claim(f"dashboard:token:{nonce}", ttl=TOKEN_TTL + 2 * CLOCK_SKEW)

    def _sign(self, session: str, nonce: str, issued: str) -> str:
        digest = hmac.new(self._secret, f"{session}\0{nonce}\0{issued}".encode(), hashlib.sha256)
        return digest.hexdigest()


class Guard:
    """ASGI middleware: authentication (when configured), a session cookie for form tokens,
    and :data:`SECURITY_HEADERS` on every answer."""

    def __init__(self, app: ASGIApp, auth: DashboardAuth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        user = "local"
        if self.auth is not None:
            found = self.auth.identify(headers)
            if found is None:
                await _refuse(send)
                return
            user = found
        state = scope.setdefault("state", {})
        state["user"] = user
        session = _cookie(headers, SESSION_COOKIE)
        new_session = None
        if not session or len(session) != 43:
            new_session = session = secrets.token_urlsafe(32)
        state["session"] = session

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                raw += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if new_session is not None:
                    cookie = f"{SESSION_COOKIE}={new_session}; Path=/; HttpOnly; SameSite=Strict"
                    raw.append((b"set-cookie", cookie.encode()))
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cookie(headers: Headers, name: str) -> str:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


async def _refuse(send: Send) -> None:
    body = b"authentication required\n"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", b'Basic realm="conveyor", charset="UTF-8"'),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
