"""`ragpipe tune`: a collection's HNSW recall@k against latency, measured on its own vectors, and the
smallest ef_search that reaches a target recall (to set as `index.ef_search` in collections.yml).

Queries are stored chunk vectors, sampled (each query's own chunk is left out of both rankings, so
recall counts its true neighbours only), and real queries embedded through the collection's query
side (its query prompt applies): those given, and the collection's smoke and inline eval queries.
Each ef_search is tried inside a transaction that is rolled back: searches by others keep the
stored setting throughout.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psycopg

from pipelines import store
from pipelines.store.sqlfiles import query

EF_LADDER = (40, 64, 100, 160, 240, 320, 480, 640, 1000)
"""ef_search values measured, lowest first (1000 is the SQL API's ceiling)."""


@dataclass(frozen=True)
class CurvePoint:
    ef_search: int
    recall: float
    p50_ms: float
    p95_ms: float


def sample_queries(conn: psycopg.Connection, collection_id: int, n: int, seed: int = 0
                   ) -> list[tuple[int, np.ndarray]]:
    """`n` stored chunks (id, vector), the same ones for the same seed while the collection is unchanged."""
    rows = conn.execute("SELECT id, ragpipe.vector_of(embedding, embedding_half) FROM ragpipe.chunks "
                        "WHERE collection_id = %s "
                        "ORDER BY md5(id::text || %s) LIMIT %s", (collection_id, str(seed), n)).fetchall()
    return [(chunk_id, vector.to_numpy()) for chunk_id, vector in rows]


def _ranked(conn: psycopg.Connection, statement: str, name: str, vector: np.ndarray, k: int,
            leave_out: int) -> tuple[list[int], float]:
    start = time.perf_counter()
    rows = conn.execute(query("search", statement),
                        dict(collection=name, embedding=vector, k=k + 1, filter=None)).fetchall()
    ms = (time.perf_counter() - start) * 1000
    return [r[0] for r in rows if r[0] != leave_out][:k], ms


def recall_curve(conn: psycopg.Connection, name: str, queries: int = 30, k: int = 10,
                 ladder: tuple[int, ...] = EF_LADDER, target: float | None = None,
                 progress: Callable[[str], None] = lambda _: None, texts: list[str] = ()) -> list[CurvePoint]:
    """Recall@k and latency of semantic_search at each ef_search of `ladder`, against exact search
    (stops after the first value reaching `target`), after one untimed pass at the ladder's top."""
    coll = store.get_collection(conn, name)
    if coll is None:
        raise LookupError(f"collection {name!r} does not exist (see `ragpipe status`)")
    asked = sample_queries(conn, coll.id, queries)
    texts = list(dict.fromkeys([*texts, *declared_queries(coll.family)]))
    if texts:
        from pipelines.collection import query_embedder

        vectors = query_embedder(coll.family, coll.model, coll.settings).encode_queries(texts)
        asked += [(-1, v) for v in vectors]  # no chunk to leave out
    if not asked:
        raise LookupError(f"collection {name!r} has no chunks to measure")
    truth = []
    for i, (chunk_id, vector) in enumerate(asked):
        truth.append(set(_ranked(conn, "exact", name, vector, k, chunk_id)[0]))
        progress(f"exact search {i + 1}/{len(asked)}")
    with conn.transaction() as tx:  # untimed: a fresh index is read into shared buffers by its first searches
        store.set_index_settings(conn, coll.id, ef_search=ladder[-1])
        for chunk_id, vector in asked:
            _ranked(conn, "semantic", name, vector, k, chunk_id)
        raise psycopg.Rollback(tx)
    curve = []
    for ef in ladder:
        with conn.transaction() as tx:
            store.set_index_settings(conn, coll.id, ef_search=ef)
            got = [_ranked(conn, "semantic", name, v, k, chunk_id) for chunk_id, v in asked]
            raise psycopg.Rollback(tx)
        recall = statistics.mean(len(set(ids) & t) / max(len(t), 1) for (ids, _), t in zip(got, truth, strict=True))
        ms = [m for _, m in got]
        curve.append(CurvePoint(ef, round(recall, 4), round(float(np.percentile(ms, 50)), 2),
                                round(float(np.percentile(ms, 95)), 2)))
        progress(f"ef_search {ef}: recall@{k} {recall:.3f}")
        if target is not None and recall >= target:
            break
    return curve


def declared_queries(family: str) -> list[str]:
    """The smoke and inline eval queries collections.yml declares for the collection."""
    from pipelines.collection import declared_spec

    spec = declared_spec(family)
    if spec is None:
        return []
    return [*spec.smoke_queries, *(q["query"] for q in spec.eval.get("queries", []))]


def choose_ef_search(curve: list[CurvePoint], target: float) -> CurvePoint | None:
    """The cheapest point of the curve that reaches `target` recall, if any does."""
    return next((p for p in curve if p.recall >= target), None)
