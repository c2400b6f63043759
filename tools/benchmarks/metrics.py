"""Section `metrics`: the cost of a /metrics scrape at many collections."""

import time

import numpy as np

from pipelines.settings import DEFAULT_MODEL
from tools.benchmarks.report import record


def bench_metrics(conn, collections: int = 1000, docs: int = 100, runs: int = 10) -> None:
    """The pipeline's part of a `GET /metrics` scrape (ragpipe.pipeline_metrics and the text the
    service renders) at 10 and at `collections` collections of synthetic rows (`docs` documents,
    `runs` runs and 2 failures of the last run each)."""
    from pipelines.service.metrics import ServiceMetrics

    def fill(n: int) -> None:
        for first in range(1, n + 1, 100):  # each collection is a partition: a transaction locks each one it makes
            conn.execute("INSERT INTO ragpipe.collections (name, family, model, dimension, chunk_tokens, "
                         "chunk_overlap) SELECT 'bench_metrics_' || i, 'bench_metrics_' || i, %s, 384, 256, 32 "
                         "FROM generate_series(%s::int, %s::int) i", (DEFAULT_MODEL, first, min(first + 99, n)))
        ours = "SELECT id FROM ragpipe.collections WHERE family LIKE 'bench\\_metrics\\_%%'"
        conn.execute(f"INSERT INTO ragpipe.documents (collection_id, source_id, uri, content_hash, chunk_count) "
                     f"SELECT k.id, 'doc-' || j, 'file:///doc-' || j, md5(j::text), 3 FROM ({ours}) k, "
                     f"generate_series(1, %s) j", (docs,))
        conn.execute(f"INSERT INTO ragpipe.ingest_runs (collection_id, status, listed, new, unchanged, seconds, "
                     f"started_at, finished_at) SELECT k.id, 'succeeded', %s, 1, %s - 1, 1.5, "
                     f"now() - (%s - j) * interval '1 hour', now() - (%s - j) * interval '1 hour' + interval '2 s' "
                     f"FROM ({ours}) k, generate_series(1, %s) j", (docs, docs, runs, runs, runs))
        conn.execute(f"INSERT INTO ragpipe.ingest_failures (run_id, collection_id, source_id, stage, error) "
                     f"SELECT (SELECT max(r.id) FROM ragpipe.ingest_runs r WHERE r.collection_id = k.id), k.id, "
                     f"'bad-' || j, 'extract', 'not a PDF' FROM ({ours}) k, generate_series(1, 2) j")
        conn.execute("ANALYZE ragpipe.collections, ragpipe.documents, ragpipe.ingest_runs, ragpipe.ingest_failures")

    def rows() -> list[tuple]:
        return conn.execute("SELECT * FROM ragpipe.pipeline_metrics() ORDER BY 1").fetchall()

    def cache() -> list[tuple]:
        return conn.execute("SELECT * FROM ragpipe.cache_metrics() ORDER BY 1").fetchall()

    def tokens() -> list[tuple]:
        return conn.execute("SELECT * FROM ragpipe.token_metrics() ORDER BY 1, 2").fetchall()

    def empty() -> None:
        while conn.execute("DELETE FROM ragpipe.collections WHERE id IN (SELECT id FROM ragpipe.collections "
                           "WHERE family LIKE 'bench\\_metrics\\_%' LIMIT 100)").rowcount:
            pass

    took: dict[int, tuple[float, float, int]] = {}
    try:
        for n in (10, collections):
            empty()
            fill(n)
            metrics = ServiceMetrics(rows, dict, cache, tokens)
            sql_ms, text_ms = [], []
            for _ in range(20):
                t = time.perf_counter()
                rows()
                sql_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                text = metrics.text()
                text_ms.append((time.perf_counter() - t) * 1000)
            took[n] = (float(np.percentile(sql_ms, 50)), float(np.percentile(text_ms, 50)), len(text))
    finally:
        empty()
    (small_sql, small_text, _), (sql_ms, text_ms, size) = took[10], took[collections]
    record("metrics", f"scrape at {collections:,} collections: pipeline_metrics() p50 / whole scrape p50 / size",
           f"{sql_ms:.1f} ms / {text_ms:.1f} ms / {size / 1024:.0f} KB (10 collections: {small_sql:.1f} / "
           f"{small_text:.1f} ms)", metrics__scrape_1000_ms=text_ms, metrics__sql_1000_ms=sql_ms,
           metrics__scrape_10_ms=small_text)
