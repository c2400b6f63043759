"""Shared rate limits: an API key's requests and tokens per minute, enforced across every process that
calls the endpoint (CLI runs, DAG tasks on several Celery workers, the service, `ragpipe watch`).

PostgreSQL is the one part all of them share (Airflow pools would leave out the service, the CLI and
watch), so each request first takes a slot from ragpipe.take_rate (a GCRA bucket per endpoint and
key, one row). Queries reserve the first free slot and go; a run's embedding takes a slot only when
one is free now, and asks again otherwise, so queries go before bulk work when both wait.
"""

import hashlib
import logging
import random
import threading
import time
from typing import Any

import psycopg

log = logging.getLogger(__name__)
BULK_POLL_S = 0.5
"""The longest a run's request sleeps before it asks for a slot again."""
BULK_WAIT_S = 900.0
"""A run's request that finds no slot in this long fails (a limit far too low for the work)."""


class RateLimited(RuntimeError):
    """No slot in time: a query's deadline, or BULK_WAIT_S, would pass first."""


def bucket_of(url: str, key: str | None) -> str:
    """The bucket of an endpoint and key: the URL and a hash of the key (never the key itself)."""
    digest = hashlib.sha256((key or "").encode()).hexdigest()[:16] if key else "no-key"
    return f"{url}#{digest}"


def acquire(limit: Any, url: str, key: str | None, tokens: int, query: bool, deadline: float | None = None) -> float:
    """Wait for a slot of `limit` (a RateLimit; None: no limit) for one request of `tokens` tokens to
    `url` with `key`; returns the seconds waited. RateLimited when it would not come by `deadline`
    (time.monotonic()) or, for bulk work, within BULK_WAIT_S. Without the database the request goes
    unthrottled (said once in the log): the endpoint's 429s are still retried."""
    if limit is None or (limit.requests_per_minute is None and limit.tokens_per_minute is None):
        return 0.0
    started = time.monotonic()
    bucket = bucket_of(url, key)
    give_up = deadline if deadline is not None else started + BULK_WAIT_S
    while True:
        wait = _take(bucket, limit, tokens, query)
        if wait is None or wait <= 0:
            return time.monotonic() - started
        if time.monotonic() + wait > give_up:
            raise RateLimited(f"the shared rate limit of {url} ({_describe(limit)}) has no slot for "
                              f"{time.monotonic() + wait - started:.1f} s" + (
                                  ": raise rate_limit, or spread the runs" if not query else ""))
        if query:  # the slot is reserved: wait for it, then send
            time.sleep(wait)
            return time.monotonic() - started
        time.sleep(min(wait, BULK_POLL_S) * (0.8 + 0.4 * random.random()))


class _Database:
    """This process's connection for ragpipe.take_rate (one, shared by its threads)."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection | None = None
        self.lock = threading.Lock()
        self.warned = False

    def take(self, bucket: str, limit: Any, tokens: int, query: bool) -> float | None:
        """ragpipe.take_rate's answer (None when the database cannot be reached)."""
        with self.lock:
            for attempt in range(2):
                try:
                    if self.conn is None or self.conn.closed or self.conn.broken:
                        self.conn = _connect()
                    return float(self.conn.execute("SELECT ragpipe.take_rate(%s, %s, %s, %s, %s)", (
                        bucket, limit.requests_per_minute, limit.tokens_per_minute, tokens, query)).fetchone()[0])
                except psycopg.OperationalError as exc:
                    self.conn = None
                    if attempt and not self.warned:
                        from pipelines.store.database import first_line, mask_url

                        log.warning("the shared rate limit cannot reach the database (%s): requests go unthrottled",
                                    mask_url(first_line(exc)))
                        self.warned = True
            return None


_database = _Database()


def _take(bucket: str, limit: Any, tokens: int, query: bool) -> float | None:
    return _database.take(bucket, limit, tokens, query)


def _connect() -> psycopg.Connection:
    from pipelines.store.connection import open_database
    from pipelines.store.database import connect

    conn = connect(open_database(), autocommit=True, vector_types=False)
    conn.execute("SET statement_timeout = '5s'")
    return conn


def _describe(limit: Any) -> str:
    parts = [f"{limit.requests_per_minute:g} requests" if limit.requests_per_minute else "",
             f"{limit.tokens_per_minute:g} tokens" if limit.tokens_per_minute else ""]
    return " and ".join(p for p in parts if p) + " a minute"
