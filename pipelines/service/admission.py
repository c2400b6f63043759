"""Load shedding: every API request gets one deadline from its arrival, at most `max_in_flight` are
admitted at once (the rest get a fast 503 with Retry-After), and expensive searches (keyword or hybrid
with many words, or a large k) take turns in a lane of their own, so cheap queries keep their latency.
/healthz, /metrics and the docs are never held back."""

import asyncio
import json
import time
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

DEADLINE: ContextVar[float | None] = ContextVar("ragpipe_request_deadline", default=None)
"""time.monotonic() by which the current request must be answered (None outside a request)."""
RETRY_AFTER_S = 1
HEAVY_K = 100
"""A search for more results than this is expensive whatever its words."""
OPEN_PATHS = ("/healthz", "/metrics", "/docs", "/openapi.json", "/favicon.ico")


def time_left(default: float) -> float:
    """Seconds left before the current request's deadline (`default` outside a request), never negative."""
    deadline = DEADLINE.get()
    return default if deadline is None else max(0.0, min(default, deadline - time.monotonic()))


@dataclass
class Limits:
    deadline_s: float
    max_in_flight: int
    heavy_concurrency: int
    heavy_words: int


def is_heavy(path: str, query_string: bytes, heavy_words: int) -> bool:
    """A keyword or hybrid search (API or page) of more than `heavy_words` words or more than HEAVY_K results."""
    if path not in ("/api/search", "/"):
        return False
    params = parse_qs(query_string.decode("latin-1"))
    mode = (params.get("mode") or ["hybrid"])[0]
    words = len((params.get("q") or [""])[0].split())
    k = (params.get("k") or ["10"])[0]
    return mode != "semantic" and (words > heavy_words or (k.isdigit() and int(k) > HEAVY_K))


class Admission:
    """ASGI middleware applying `Limits` to every route but OPEN_PATHS."""

    def __init__(self, app: ASGIApp, limits: Limits, on_shed=None) -> None:
        self.app, self.limits, self.on_shed = app, limits, on_shed
        self.in_flight = 0
        self.heavy_waiting = 0
        self._heavy: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        arrived = time.monotonic()
        if self.in_flight >= self.limits.max_in_flight:
            return await self._shed(send, f"the service is at capacity ({self.in_flight} requests in flight, "
                                          "RAGPIPE_SERVE_MAX_IN_FLIGHT)")
        self.in_flight += 1
        token = DEADLINE.set(arrived + self.limits.deadline_s)
        try:
            if is_heavy(scope["path"], scope.get("query_string", b""), self.limits.heavy_words):
                return await self._heavy_turn(scope, receive, send, arrived)
            await self.app(scope, receive, send)
        finally:
            DEADLINE.reset(token)
            self.in_flight -= 1

    async def _heavy_turn(self, scope: Scope, receive: Receive, send: Send, arrived: float) -> None:
        """Run an expensive search when the heavy lane has room; as many as it holds may wait for it
        until the deadline, the others are shed at once."""
        if self._heavy is None:
            self._heavy = asyncio.Semaphore(self.limits.heavy_concurrency)
        busy = "expensive searches (keyword or hybrid with many words, or a large k) are at their limit " \
               "(RAGPIPE_SERVE_HEAVY_CONCURRENCY)"
        if self._heavy.locked() and self.heavy_waiting >= self.limits.heavy_concurrency:
            return await self._shed(send, busy)
        self.heavy_waiting += 1
        try:
            await asyncio.wait_for(self._heavy.acquire(), max(0.0, arrived + self.limits.deadline_s - time.monotonic()))
        except TimeoutError:
            return await self._shed(send, busy)
        finally:
            self.heavy_waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._heavy.release()

    async def _shed(self, send: Send, why: str) -> None:
        if self.on_shed:
            self.on_shed()
        body = json.dumps({"detail": f"{why}: retry in {RETRY_AFTER_S} s"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(RETRY_AFTER_S).encode())]})
        await send({"type": "http.response.body", "body": body})
