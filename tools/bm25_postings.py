"""An experiment for issue 17, not part of the product: BM25 from precomputed impacts, two ways.

`python -m tools.bm25_postings [COLLECTION]` (default: make bench's bench_search_100000) builds, in a
scratch schema, postings (lexeme, chunk, impact) from the collection's tsvectors, where impact is
BM25's term-frequency part tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)), indexed by
(lexeme, impact DESC). A query reads the top `depth` postings of each of its words (index-only
scans that stop early), sums idf * impact per chunk, then rescores the best 100 exactly from the
postings. It prints the build time and size, and per depth the p50/p95 latency and recall@10
against ragpipe.keyword_search with an unlimited candidate budget (exact BM25), on NFCorpus queries.
The second way stores each chunk's impacts as a pgvector sparsevec (a word's dimension is its hash)
and ranks by inner product with the query's idf weights through an HNSW index (approximate).
"""

import json
import statistics
import sys
import time

import numpy as np

from pipelines.store.connection import open_database
from pipelines.store.database import connect
from tools.synthetic import NFCORPUS

BUILD = """
DROP SCHEMA IF EXISTS bm25_experiment CASCADE;
CREATE SCHEMA bm25_experiment;
CREATE TABLE bm25_experiment.postings AS
SELECT t.lexeme, c.id AS chunk_id,
       (cardinality(t.positions) * 2.2
        / (cardinality(t.positions) + 1.2 * (0.25 + 0.75 * length(c.tsv) / s.avg_length)))::real AS impact
FROM ragpipe.chunks c
CROSS JOIN LATERAL unnest(c.tsv) t
JOIN ragpipe.text_stats s ON s.collection_id = c.collection_id
WHERE c.collection_id = %(id)s;
CREATE INDEX ON bm25_experiment.postings (lexeme, impact DESC) INCLUDE (chunk_id);
CREATE INDEX ON bm25_experiment.postings (chunk_id, lexeme) INCLUDE (impact);
"""

SEARCH = """
WITH words AS (
    SELECT w.lexeme, ln(1 + (s.chunks - t.chunks + 0.5) / (t.chunks + 0.5)) AS idf
    FROM unnest(to_tsvector('english', %(text)s)) w
    JOIN ragpipe.term_stats t ON t.collection_id = %(id)s AND t.lexeme = w.lexeme
    JOIN ragpipe.text_stats s ON s.collection_id = %(id)s),
partial AS (
    SELECT p.chunk_id, sum(w.idf * p.impact) AS score
    FROM words w
    CROSS JOIN LATERAL (SELECT chunk_id, impact FROM bm25_experiment.postings p
                        WHERE p.lexeme = w.lexeme ORDER BY p.impact DESC LIMIT %(depth)s) p
    GROUP BY p.chunk_id ORDER BY 2 DESC LIMIT 100)
SELECT c.chunk_id, sum(w.idf * p.impact) AS score
FROM partial c JOIN bm25_experiment.postings p ON p.chunk_id = c.chunk_id
JOIN words w ON w.lexeme = p.lexeme
GROUP BY c.chunk_id ORDER BY 2 DESC, 1 LIMIT 10
"""

SPARSE = """
CREATE TABLE bm25_experiment.sparse AS
SELECT chunk_id, format('{%s}/536870912', string_agg(d || ':' || w, ',' ORDER BY d))::sparsevec(536870912) AS impacts
FROM (SELECT chunk_id, (hashtext(lexeme) & 536870911) + 1 AS d, sum(impact) AS w
      FROM bm25_experiment.postings GROUP BY 1, 2) x
GROUP BY chunk_id;
CREATE INDEX ON bm25_experiment.sparse USING hnsw (impacts sparsevec_ip_ops);
"""
SPARSE_SIZE = "SELECT pg_total_relation_size('bm25_experiment.sparse')"
SPARSE_SEARCH = """
WITH q AS (
    SELECT format('{%%s}/536870912', string_agg(d || ':' || w, ',' ORDER BY d))::sparsevec AS v
    FROM (SELECT (hashtext(w.lexeme) & 536870911) + 1 AS d,
                 sum(ln(1 + (s.chunks - t.chunks + 0.5) / (t.chunks + 0.5))) AS w
          FROM unnest(to_tsvector('english', %(text)s)) w
          JOIN ragpipe.term_stats t ON t.collection_id = %(id)s AND t.lexeme = w.lexeme
          JOIN ragpipe.text_stats s ON s.collection_id = %(id)s
          GROUP BY 1) x)
SELECT s.chunk_id FROM bm25_experiment.sparse s ORDER BY s.impacts <#> (SELECT v FROM q) LIMIT 10
"""


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "bench_search_100000"
    queries = [json.loads(line)["text"] for line in (NFCORPUS / "queries.jsonl").open()][:100]
    with connect(open_database(), autocommit=True) as conn:
        coll = conn.execute("SELECT id, settings FROM ragpipe.collections WHERE name = %s", (name,)).fetchone()
        if coll is None:
            sys.exit(f"no collection {name!r}: run `BENCH_SECTIONS=search make bench` first")
        cid = coll[0]
        start = time.perf_counter()
        conn.execute(BUILD.replace("%(id)s", str(int(cid))))
        conn.execute("VACUUM ANALYZE bm25_experiment.postings")
        rows, size = conn.execute("SELECT count(*), pg_total_relation_size('bm25_experiment.postings') "
                                  "FROM bm25_experiment.postings").fetchone()
        print(f"postings of {name}: {rows} rows, {size / 2**20:.0f} MB with indexes, built in "
              f"{time.perf_counter() - start:.1f} s")
        conn.execute("UPDATE ragpipe.collections SET settings = jsonb_set(settings, '{index,keyword_candidates}', "
                     "'100000000') WHERE id = %s", (cid,))
        try:
            exact, exact_ms = [], []
            for q in queries:
                t = time.perf_counter()
                exact.append([r[0] for r in conn.execute(
                    "SELECT chunk_id FROM ragpipe.keyword_search(%s, %s, 10)", (name, q)).fetchall()])
                exact_ms.append((time.perf_counter() - t) * 1000)
        finally:
            conn.execute("UPDATE ragpipe.collections SET settings = %s WHERE id = %s", (json.dumps(coll[1]), cid))
        print(f"exact BM25 (keyword_search, no budget): p50 {statistics.median(exact_ms):.1f} ms")
        for depth in (200, 1000, 5000):
            got, ms = [], []
            for q in queries:
                t = time.perf_counter()
                got.append([r[0] for r in conn.execute(SEARCH, dict(id=cid, text=q, depth=depth)).fetchall()])
                ms.append((time.perf_counter() - t) * 1000)
            recall = np.mean([len(set(g) & set(e)) / max(len(e), 1) for g, e in zip(got, exact, strict=True)])
            print(f"impacts, top {depth} postings per word: p50 {np.percentile(ms, 50):.1f} ms, "
                  f"p95 {np.percentile(ms, 95):.1f} ms, recall@10 vs exact {recall:.3f}")
        start = time.perf_counter()
        conn.execute(SPARSE)
        print(f"sparsevec of {name}: HNSW (sparsevec_ip_ops) built in {time.perf_counter() - start:.1f} s, "
              f"{conn.execute(SPARSE_SIZE).fetchone()[0] / 2**20:.0f} MB with its index")
        for ef in (40, 200, 1000):
            conn.execute(f"SET hnsw.ef_search = {ef}")
            got, ms = [], []
            for q in queries:
                t = time.perf_counter()
                got.append([r[0] for r in conn.execute(SPARSE_SEARCH, dict(id=cid, text=q)).fetchall()])
                ms.append((time.perf_counter() - t) * 1000)
            recall = np.mean([len(set(g) & set(e)) / max(len(e), 1) for g, e in zip(got, exact, strict=True)])
            print(f"sparsevec HNSW ef_search={ef}: p50 {np.percentile(ms, 50):.1f} ms, "
                  f"p95 {np.percentile(ms, 95):.1f} ms, recall@10 vs exact {recall:.3f}")
        conn.execute("DROP SCHEMA bm25_experiment CASCADE")


if __name__ == "__main__":
    main()
