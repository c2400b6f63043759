"""Keyword search before and after a compaction, side by side on one collection: the chunks just loaded
(the delta, scored in full from their tsvectors) against the same postings in blocks.

    python -m tools.keyword_layouts --chunks 100000 --queries 100 [--record docs/benchmarks.json]

Chunks are 2-4 neighbouring sentences of the bench corpus (NFCorpus), with 8-dimension random vectors
(keyword search never reads them); queries are the corpus's queries. Prints the machine, the load
time (the chunks' COPY: loads write nothing for keyword search) and the compaction's, the size of
the blocks (bytes a posting), keyword p50/p95 of each, and whether the two return the same top 10
(they must: both are exact BM25). --record merges the figures into a results file under named keys
(storage.1m.keyword_bytes_per_posting, search.1m.keyword_p50_ms, loading.1m.seconds, ...)."""

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np

from pipelines import store
from pipelines.chunking import Chunk
from pipelines.store.connection import open_database
from pipelines.store.database import connect
from tools.synthetic import bench_corpus, nearby_sentences, sentences

SIZE = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
WHERE c.relnamespace = 'ragpipe'::regnamespace AND c.relkind = 'r' AND c.relname = ANY(%s)"""


def build(conn, name: str, chunks: int) -> tuple[store.Collection, float]:
    existing = store.get_collection(conn, name)
    if existing is not None:
        conn.execute("DELETE FROM ragpipe.collections WHERE id = %s", (existing.id,))
    coll = store.ensure_collection(conn, name, "sentence-transformers/all-MiniLM-L6-v2", 8, 256, 32, {"index": {}})
    pool = sentences(limit=1_000_000)
    rng = np.random.default_rng(2)
    started = time.perf_counter()
    for lo in range(0, chunks, 20_000):
        n = min(20_000, chunks - lo)
        vectors = rng.normal(size=(n, 8)).astype(np.float32)
        docs = [store.LoadedDocument(f"s{lo + i}", f"mem://{lo + i}", None, "", "", {"shard": (lo + i) % 50},
                                     [Chunk(0, " ".join(pool[j] for j in nearby_sentences(rng, len(pool))), 0, 1, 80)],
                                     vectors[i:i + 1]) for i in range(n)]
        with conn.transaction():
            store.replace_documents(conn, coll, None, docs)
    store.refresh_text_stats(conn, coll.id, min_change=0)
    store.analyze_collection(conn, coll.id)
    return coll, time.perf_counter() - started


def timed(conn, name: str, queries: list[str], k: int = 10) -> tuple[list[float], list[list[int]]]:
    took, tops = [], []
    for q in queries:
        started = time.perf_counter()
        rows = conn.execute("SELECT chunk_id FROM ragpipe.keyword_search(%s, %s, %s)", (name, q, k)).fetchall()
        took.append((time.perf_counter() - started) * 1000)
        tops.append([r[0] for r in rows])
    return took, tops


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--delta-queries", type=int, default=20, help="queries timed on the delta (read in full)")
    parser.add_argument("--record", type=Path, help="a results file (docs/benchmarks*.json) to merge the figures into")
    args = parser.parse_args()
    from pipelines.embed.hardware import cpu_model_and_flags

    print(f"machine: {cpu_model_and_flags()[0]}")
    corpus = bench_corpus()
    queries = [json.loads(line)["text"] for line in (corpus / "queries.jsonl").open()][:args.queries]
    name = f"keyword_layouts_{args.chunks}"
    with connect(open_database(), autocommit=True) as conn:
        coll, load_s = build(conn, name, args.chunks)
        postings = conn.execute("SELECT count(*) FROM ragpipe.keyword_postings WHERE collection_id = %s",
                                (coll.id,)).fetchone()[0]
        chunks_mb = conn.execute(SIZE, ([f"chunks_c{coll.id}"],)).fetchone()[0] / 2**20
        few = queries[:args.delta_queries]  # the delta is read in full: slow by design
        timed(conn, name, few[:3])  # warm
        delta_ms, delta_top = timed(conn, name, few)
        started = time.perf_counter()
        with conn.transaction():
            done = store.compact_postings(conn, coll.id)
        compact_s = time.perf_counter() - started
        store.analyze_collection(conn, coll.id)
        blocks_size = conn.execute(SIZE, ([f"posting_blocks_c{coll.id}"],)).fetchone()[0]
        timed(conn, name, queries[:10])
        blocks_ms, blocks_top = timed(conn, name, queries)
        print(f"{args.chunks} chunks, {postings} postings ({postings / args.chunks:.1f} a chunk); chunks loaded "
              f"(COPY) in {load_s:.1f} s; compaction ({done}) {compact_s:.1f} s: "
              f"+{100 * compact_s / load_s:.0f}% for the keyword index")
        print(f"chunks table {chunks_mb:.0f} MB")
        print(f"delta ({len(few)} queries): keyword p50 {p(delta_ms, 50):.1f} ms, p95 {p(delta_ms, 95):.1f} ms")
        print(f"blocks: {blocks_size / 2**20:8.1f} MB, {blocks_size / postings:6.1f} B a posting; keyword p50 "
              f"{p(blocks_ms, 50):.1f} ms, p95 {p(blocks_ms, 95):.1f} ms")
        same = sum(a == b for a, b in zip(delta_top, blocks_top[:len(few)], strict=True))
        print(f"same top 10 before and after the compaction: {same} of {len(few)} queries")
    if args.record:
        from tools.benchmarks.report import scale_label

        scale = scale_label(args.chunks)
        record(args.record, f"python -m tools.keyword_layouts --chunks {args.chunks} --queries {args.queries}", {
            f"storage.{scale}.keyword_bytes_per_posting": round(blocks_size / postings, 2),
            f"storage.{scale}.keyword_mb": round(blocks_size / 2**20, 1),
            f"storage.{scale}.chunks_mb": round(chunks_mb, 1),
            f"storage.{scale}.postings": postings,
            f"loading.{scale}.seconds": round(load_s + compact_s, 1),
            f"loading.{scale}.copy_seconds": round(load_s, 1),
            f"loading.{scale}.keyword_compaction_seconds": round(compact_s, 1),
            f"loading.{scale}.keyword_over_copy": round(compact_s / load_s, 3),
            f"search.{scale}.keyword_p50_ms": round(p(blocks_ms, 50), 1),
            f"search.{scale}.keyword_p95_ms": round(p(blocks_ms, 95), 1),
            f"search.{scale}.keyword_delta_p50_ms": round(p(delta_ms, 50), 1),
            f"search.{scale}.keyword_same_top10_after_compaction": round(same / len(few), 3)})


def record(path: Path, command: str, named: dict[str, float]) -> None:
    """Merge named figures into a results file, each with the run it came from."""
    from tools.benchmarks.report import cpu_info, merge_figures

    merge_figures(path, {"cpu": cpu_info(), "date": date.today().isoformat(), "command": command}, named)


if __name__ == "__main__":
    main()
