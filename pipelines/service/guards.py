"""What every response of the service passes through: the Host check (no DNS rebinding), the
request body cap, and the security headers (a Content-Security-Policy that allows the page's own
inline script and style by hash, nosniff, framing by the same origin only, no referrer)."""

import base64
import hashlib
import json
import re
from functools import cache
from importlib.resources import files

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
"""Host names a tokenless local service answers to by default."""


def allowed_hosts(extra: str = "", bind: str | None = None) -> list[str]:
    """The Host header values the service accepts: the localhost names, the bind address (unless it
    is every interface), and RAGPIPE_SERVE_ALLOWED_HOSTS (comma-separated; `*.example.com` and `*` allowed)."""
    hosts = [*LOCAL_HOSTS, *([bind] if bind and bind not in ("0.0.0.0", "::", "") else [])]
    return list(dict.fromkeys(hosts + [h.strip().lower() for h in extra.split(",") if h.strip()]))


def host_allowed(host_header: str, allowed: list[str]) -> bool:
    host = host_header.strip().lower()
    host = host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return any(a == "*" or a == host or (a.startswith("*.") and host.endswith(a[1:])) for a in allowed)


@cache
def content_security_policy() -> str:
    """The page's CSP: nothing but its own inline script and style (by hash), forms to itself."""
    template = files("pipelines.service").joinpath("templates", "search.html").read_text()

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", template, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self' data:; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'self'")


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"),
                    (b"referrer-policy", b"no-referrer")]
"""Sent with every response; SAMEORIGIN lets the Airflow UI (same origin as its API server) embed the page."""


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class Guards:
    """ASGI middleware: refuse unknown hosts (400) and bodies over `max_body_bytes` (413) before any
    route runs, and add the security headers to every response."""

    def __init__(self, app: ASGIApp, hosts: list[str], max_body_bytes: int) -> None:
        self.app, self.hosts, self.max_body_bytes = app, hosts, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.hosts):
            return await _reply(send, 400, f"host {host!r} is not served here: add it to RAGPIPE_SERVE_ALLOWED_HOSTS "
                                           "(comma-separated) if this service should answer to it")
        length = headers.get(b"content-length", b"0")
        too_large = (f"the request body is larger than {self.max_body_bytes // 1024} kB: send a shorter "
                     "question or filter")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await _reply(send, 413, too_large)
        received, exceeded, replaced = 0, False, False

        async def limited() -> Message:  # a chunked body without a length is counted as it arrives
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                exceeded = True
                return {"type": "http.disconnect"}  # the app stops reading; its answer is replaced below
            return message

        async def with_headers(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if exceeded and message["type"] == "http.response.start":
                replaced = True
                return await _reply(send, 413, too_large)
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if any(k == b"content-type" and v.startswith(b"text/html") for k, v in message.get("headers", [])):
                    extra.append((b"content-security-policy", content_security_policy().encode()))
                message = dict(message, headers=[*message.get("headers", []), *extra])
            await send(message)

        await self.app(scope, limited, with_headers)
