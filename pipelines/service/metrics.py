"""Prometheus metrics of the search service (`GET /metrics`): its requests, as they happen, and the
pipeline's state per collection, read from the database at scrape time (ragpipe.pipeline_metrics).
Labels are bounded: route templates, modes, statuses, collection names; never queries or ids."""

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PipelineCollector(Collector):
    """Gauges per collection and of the service's pool, computed when scraped."""

    def __init__(self, rows: Callable[[], list[tuple]], pool_stats: Callable[[], dict[str, int]],
                 cache_rows: Callable[[], list[tuple]], token_rows: Callable[[], list[tuple]]) -> None:
        self.rows, self.pool_stats, self.cache_rows, self.token_rows = rows, pool_stats, cache_rows, token_rows

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily("ragpipe_api_tokens", "tokens spent at API endpoints: documents and context "
                                     "(every run's, from the database), queries and chat (this service's); source: "
                                     "reported by the endpoint, or estimated where it reported none",
                                     labels=["collection", "model", "kind", "source"])
        for labels, count in self.token_rows():
            tokens.add_metric(list(labels), count)
        yield tokens
        from pipelines.embed.local import LOAD_SECONDS

        loads = GaugeMetricFamily("ragpipe_model_load_seconds", "seconds the service took to load each model",
                                  labels=["model"])
        for model, seconds in sorted(LOAD_SECONDS.items()):
            loads.add_metric([model], seconds)
        yield loads
        cache = GaugeMetricFamily("ragpipe_embedding_cache_rows", "vectors kept in the embedding cache, by model",
                                  labels=["model"])
        for model, count in self.cache_rows():
            cache.add_metric([model], count)
        yield cache
        stats = self.pool_stats()
        yield GaugeMetricFamily("ragpipe_pool_connections", "connections the service's pool holds",
                                value=stats.get("pool_size", 0))
        yield GaugeMetricFamily("ragpipe_pool_connections_idle", "connections of the pool free now",
                                value=stats.get("pool_available", 0))
        yield GaugeMetricFamily("ragpipe_pool_waiting", "requests waiting for a connection now",
                                value=stats.get("requests_waiting", 0))
        yield CounterMetricFamily("ragpipe_pool_waits", "requests that had to wait for a connection",
                                  value=stats.get("requests_queued", 0))
        yield CounterMetricFamily("ragpipe_pool_wait_seconds", "seconds requests spent waiting for a connection",
                                  value=stats.get("requests_wait_ms", 0) / 1000)
        families = {
            "documents": GaugeMetricFamily("ragpipe_documents", "documents of the active version",
                                           labels=["collection"]),
            "chunks": GaugeMetricFamily("ragpipe_chunks", "chunks of the active version", labels=["collection"]),
            "version": GaugeMetricFamily("ragpipe_active_version", "the version searches read",
                                         labels=["collection"]),
            "since": GaugeMetricFamily("ragpipe_seconds_since_last_success",
                                       "seconds since the last successful run ended", labels=["collection"]),
            "seconds": GaugeMetricFamily("ragpipe_last_run_seconds", "how long the last run took",
                                         labels=["collection"]),
            "ok": GaugeMetricFamily("ragpipe_last_run_succeeded", "1 if the last run succeeded, 0 if it failed "
                                    "or runs now", labels=["collection"]),
            "failures": GaugeMetricFamily("ragpipe_last_run_failures", "documents the last run recorded as failed, "
                                          "by stage", labels=["collection", "stage"]),
            "backlog": GaugeMetricFamily("ragpipe_backlog_documents", "documents the last run listed as new or "
                                         "changed and has not indexed yet", labels=["collection"]),
            "lag": GaugeMetricFamily("ragpipe_freshness_lag_seconds", "seconds since the listing of the oldest change "
                                     "not yet searchable (0: none waiting)", labels=["collection"]),
        }
        now = time.time()
        for name, version, documents, chunks, success_at, status, seconds, failures, backlog, since in self.rows():
            families["backlog"].add_metric([name], backlog)
            families["lag"].add_metric([name], now - since.timestamp() if backlog and since else 0)
            families["documents"].add_metric([name], documents)
            families["chunks"].add_metric([name], chunks)
            families["version"].add_metric([name], version)
            if success_at is not None:
                families["since"].add_metric([name], now - success_at.timestamp())
            if seconds is not None:
                families["seconds"].add_metric([name], seconds)
            if status is not None:
                families["ok"].add_metric([name], 1 if status == "succeeded" else 0)
            for stage, count in sorted((failures or {}).items()):
                families["failures"].add_metric([name, stage], count)
        yield from families.values()


class ServiceMetrics:
    """The service's own registry (several apps in one process never share counters)."""

    def __init__(self, rows: Callable[[], list[tuple]], pool_stats: Callable[[], dict[str, int]],
                 cache_rows: Callable[[], list[tuple]], token_rows: Callable[[], list[tuple]]) -> None:
        self.registry = CollectorRegistry()
        self._tokens: dict[tuple[str, str, str, str], int] = {}
        self._tokens_lock = threading.Lock()
        self._token_rows = token_rows
        self.requests = Counter("ragpipe_http_requests", "requests answered, by route, mode and status",
                                ["route", "mode", "status"], registry=self.registry)
        self.latency = Histogram("ragpipe_http_request_seconds", "seconds to answer, by route", ["route"],
                                 buckets=SECONDS, registry=self.registry)
        self.embed = Histogram("ragpipe_embed_seconds", "seconds to embed a query", buckets=SECONDS,
                               registry=self.registry)
        self.sql = Histogram("ragpipe_sql_seconds", "seconds in the search SQL, by mode", ["mode"],
                             buckets=SECONDS, registry=self.registry)
        self.hybrid_halves = Counter("ragpipe_hybrid_searches", "hybrid searches by how their two halves ran: "
                                     "concurrent (two connections) or sequential (no second one free)", ["halves"],
                                     registry=self.registry)
        self.errors = Counter("ragpipe_http_errors", "requests that failed, by kind", ["kind"],
                              registry=self.registry)
        self.shed = Counter("ragpipe_http_shed", "requests answered 503 at once, without running (over capacity)",
                            registry=self.registry)
        self.cancelled_halves = Counter("ragpipe_hybrid_halves_cancelled", "keyword halves of hybrid searches "
                                        "cancelled because their request failed", registry=self.registry)
        self.rerank = Histogram("ragpipe_rerank_seconds", "seconds to re-rank a search's candidates (failures "
                                "included)", buckets=SECONDS, registry=self.registry)
        self.rerank_failures = Counter("ragpipe_rerank_failures", "searches whose reranker failed or timed out "
                                       "(the first-stage order was returned), by collection", ["collection"],
                                       registry=self.registry)
        self.collections = CollectorRegistry()
        self.collections.register(PipelineCollector(rows, pool_stats, cache_rows, self.token_series))

    def add_tokens(self, collection: str, model: str, kind: str, tokens: Any) -> None:
        """Count what one of this service's API calls spent (a Tokens), by `kind` (queries, chat)."""
        with self._tokens_lock:
            for source, count in (("reported", tokens.reported), ("estimated", tokens.estimated)):
                if count:
                    key = (collection, model, kind, source)
                    self._tokens[key] = self._tokens.get(key, 0) + count

    def token_series(self) -> list[tuple[tuple[str, ...], int]]:
        """ragpipe_api_tokens_total's series: the runs' (from the database) and this service's own."""
        rows = [((collection, model, kind, source), count)
                for collection, model, kind, reported, estimated in self._token_rows()
                for source, count in (("reported", reported), ("estimated", estimated)) if count]
        with self._tokens_lock:
            return rows + sorted(self._tokens.items())

    def observe(self, route: str, mode: str, status: int, seconds: float) -> None:
        self.requests.labels(route, mode, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self, collections: bool = True) -> bytes:
        """The service's series, and with `collections` every collection's (and the pool's)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry) + (generate_latest(self.collections) if collections else b"")


def route_of(scope: dict[str, Any]) -> str:
    """The route's template (`/api/similar/{collection}/{source_id:path}`), or `other` for no route."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"
