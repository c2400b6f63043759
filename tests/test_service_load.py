"""The service under load (#42.7-10): one deadline per request, fast 503s with Retry-After past capacity,
/healthz and /metrics answering throughout, expensive searches in a lane of their own, a failed hybrid
request's keyword half cancelled, and the page's work bounded. Keyword search is made to block by an
owner's transaction that locks ragpipe.posting_segments (bounded loopback load of a few seconds)."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psycopg
import pytest

from tests.test_service import serving

CHEAP = "coffee blood pressure"
HEAVY = "coffee blood pressure walnuts sperm quality milk eggs"


def wait_for(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.05)


@contextmanager
def keyword_search_blocked(db_url: str) -> Iterator[psycopg.Connection]:
    """Every keyword search waits for a lock on ragpipe.posting_segments until the block ends."""
    with psycopg.connect(db_url) as owner:
        owner.execute("LOCK TABLE ragpipe.posting_segments IN ACCESS EXCLUSIVE MODE")
        try:
            yield owner
        finally:
            owner.rollback()


def lock_waiters(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%keyword_search%'").fetchone()[0]


@contextmanager
def service(monkeypatch, **env: str) -> Iterator[str]:
    from pipelines.service import create_app

    for key, value in env.items():
        monkeypatch.setenv(f"RAGPIPE_SERVE_{key.upper()}", value)
    with serving(create_app()) as base:
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        yield base


def timed_get(url: str, **params) -> tuple[int, float, httpx.Headers, str]:
    started = time.monotonic()
    got = httpx.get(url, params=params, timeout=60)
    return got.status_code, time.monotonic() - started, got.headers, got.text


def test_overload_is_a_fast_503_and_health_and_metrics_keep_answering(sample, db_url, conn, monkeypatch):
    """Defect (#42.7): 100 clients waited up to 56 s, and /healthz and /metrics timed out for 30 s."""
    with service(monkeypatch, pool_size="4", deadline="2", max_in_flight="6", heavy_concurrency="4") as base, \
            keyword_search_blocked(db_url), ThreadPoolExecutor(40) as clients:
        calls = [clients.submit(timed_get, f"{base}/api/search", collection=sample, q=CHEAP, mode="keyword")
                 for _ in range(30)]
        wait_for("searches blocked on the lock", lambda: lock_waiters(conn) >= 1, 30)
        for _ in range(3):
            for route in ("/healthz", "/metrics"):
                status, took, _, text = timed_get(f"{base}{route}")
                assert status == 200 and took < 1.5, (route, status, took, text[:300])
        answers = [c.result() for c in calls]
    assert all(status in (503, 504) for status, *_ in answers), [a[0] for a in answers]
    assert max(took for _, took, *_ in answers) < 2 + 1.5, "every request answered by its deadline"
    shed = [a for a in answers if a[0] == 503 and a[1] < 1.0 and "MAX_IN_FLIGHT" in a[3]]
    assert len(shed) >= 20, f"over capacity answered at once ({len(shed)} of 30)"
    assert all(h.get("retry-after") == "1" for status, _, h, _ in answers if status == 503)
    assert "RAGPIPE_SERVE_MAX_IN_FLIGHT" in shed[0][3]


def test_expensive_searches_cannot_starve_cheap_ones(sample, db_url, conn, monkeypatch):
    """Defect (#42.8): 20 clients of a 32-word keyword query made a semantic query take 5.5 s."""
    with service(monkeypatch, pool_size="4", deadline="4", heavy_concurrency="1", heavy_words="5") as base, \
            keyword_search_blocked(db_url), ThreadPoolExecutor(12) as clients:
        heavy = [clients.submit(timed_get, f"{base}/api/search", collection=sample, q=HEAVY, mode="keyword")
                 for _ in range(10)]
        wait_for("an expensive search blocked on the lock", lambda: lock_waiters(conn) >= 1, 30)
        for _ in range(3):
            status, took, _, text = timed_get(f"{base}/api/search", collection=sample, q=CHEAP, mode="semantic")
            assert status == 200 and took < 2, (status, took, text[:300])
        answers = [h.result() for h in heavy]
    assert lock_waiters(conn) == 0
    statuses = [a[0] for a in answers]
    assert statuses.count(503) >= 8 and all(s in (503, 504) for s in statuses), statuses
    assert "RAGPIPE_SERVE_HEAVY_CONCURRENCY" in next(a[3] for a in answers if a[0] == 503)


def test_a_hybrid_request_that_fails_cancels_its_keyword_half(sample, db_url, conn, monkeypatch):
    """Defect (#42.9): the keyword half, started on the spare connection, ran on after its request's 503."""
    with service(monkeypatch, pool_size="1", pool_wait="1", statement_timeout="30") as base, \
            keyword_search_blocked(db_url):
        status, took, headers, text = timed_get(f"{base}/api/search", collection=sample, q=CHEAP, mode="hybrid")
        assert status == 503 and "no database connection became free" in text, text
        wait_for("the keyword half to be cancelled", lambda: lock_waiters(conn) == 0, 5)
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert "ragpipe_hybrid_halves_cancelled_total 1.0" in metrics


def test_the_page_bounds_its_marking_and_answers_errors_with_their_status(sample, monkeypatch):
    """Defect (#42.10): k=1000 marked 1,000 texts (4 s), and a failed page answered 200."""
    from pipelines.service.page import MARKED_HITS

    with service(monkeypatch) as base:
        page = httpx.get(f"{base}/", params=dict(collection=sample, q="coffee", mode="semantic", k=1000),
                         timeout=60)
        assert page.status_code == 200
        texts = page.text.split('class="text"')[1:]
        assert len(texts) > MARKED_HITS, f"the query finds more than {MARKED_HITS} hits ({len(texts)})"
        assert 0 < sum("<mark>" in t for t in texts) <= MARKED_HITS
        for params, status in ((dict(collection="no_such_collection", q="coffee"), 404),
                               (dict(collection=sample, q="coffee", k="x"), 400)):
            failed = httpx.get(f"{base}/", params=params, timeout=60)
            assert failed.status_code == status and "status error" in failed.text, (params, failed.status_code)
        assert 'ragpipe_http_requests_total{mode="other",route="/",status="404"}' in \
            httpx.get(f"{base}/metrics", timeout=30).text


@pytest.mark.unit
def test_what_counts_as_an_expensive_search():
    from pipelines.service.admission import is_heavy

    assert is_heavy("/api/search", b"q=a+b+c&mode=keyword", 2)
    assert not is_heavy("/api/search", b"q=a+b+c&mode=semantic", 2)
    assert is_heavy("/", b"q=a&k=500", 8) and not is_heavy("/api/collections", b"", 0)
