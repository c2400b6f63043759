"""Section `search`: latency and recall at scale, keyword search, storage choices, re-ranking's overhead."""

import json
import statistics
import time

import numpy as np

from pipelines import store
from pipelines.chunking import Chunk
from pipelines.config import DEFAULT_INDEX
from pipelines.embed import get_embedder
from pipelines.search import HYBRID_DEFAULTS
from pipelines.search.tuning import EF_LADDER, CurvePoint, choose_ef_search
from pipelines.settings import DEFAULT_MODEL, PROJECT_ROOT
from pipelines.store.sqlfiles import query
from tools.benchmarks.report import CORPUS, CORPUS_NAME, drop_collection, record, results, scale_label
from tools.synthetic import (
    chunk_vectors,
    nearby_sentences,
    sentence_vectors,
    sentences,
)

XL = 3_000_000
"""From this size the search set stores its vectors as halfvec (table and index: the graph of float32
vectors would not fit maintenance_work_mem on a 24 GiB machine) and the storage variants are skipped."""


def search_collection(conn, chunks: int, queries: int) -> tuple[str, list[str]]:
    """The collection of `chunks` synthetic-but-realistic chunks the search and service sections
    measure (built once, kept between runs), and the query texts (NFCorpus queries)."""
    name = f"bench_search_{chunks}"
    scale = scale_label(chunks)
    embedder = get_embedder(DEFAULT_MODEL)
    pool = sentences(limit=1_000_000)  # all of them (35k for NFCorpus): fewer shared sentences per chunk
    generator = f"sentence-means-{len(pool)}"
    qs = [json.loads(line)["text"] for line in (CORPUS / "queries.jsonl").open()][:queries] \
        if (CORPUS / "queries.jsonl").exists() else pool[:queries]
    coll = store.get_collection(conn, name)
    if coll is None or coll.settings.get("generator") != generator \
            or conn.execute(query("store", "count_chunks"), (coll.id,)).fetchone()[0] != chunks:
        drop_collection(conn, name)
        coll = store.ensure_collection(conn, name, DEFAULT_MODEL, 384, 256, 32,
                                       {"index": {"ef_search": 40, "maintenance_work_mem_cap_mb": 6144},
                                        "generator": generator, **({"storage": "halfvec"} if chunks >= XL else {})})
        start = time.perf_counter()
        vectors = sentence_vectors(embedder, pool, PROJECT_ROOT / ".ragpipe" / "bench")
        record("search", f"encode {len(pool)} {CORPUS_NAME} sentences (cached after the first run)",
               f"{time.perf_counter() - start:.1f} s")
        rng = np.random.default_rng(2)
        start = time.perf_counter()
        for lo in range(0, chunks, 20_000):
            picks = [nearby_sentences(rng, len(pool)) for _ in range(min(20_000, chunks - lo))]
            vec = chunk_vectors(vectors, picks)
            docs = [store.LoadedDocument(f"s{lo + i}", f"mem://{lo + i}", None, "", "", {"shard": (lo + i) % 50},
                                         [Chunk(0, " ".join(pool[j] for j in p), 0, 1, 80)], vec[i:i + 1])
                    for i, p in enumerate(picks)]
            with conn.transaction():
                store.replace_documents(conn, coll, None, docs)
        took = time.perf_counter() - start
        record("search", f"COPY load of {chunks} synthetic chunks", f"{took:.1f} s",
               **{f"loading.{scale}.copy_seconds": took})
        store.refresh_text_stats(conn, coll.id, min_change=0)
    start = time.perf_counter()
    with conn.transaction():  # as a run's finalize does: the postings into blocks (a kept set: once)
        done = store.compact_postings(conn, coll.id)
    took = time.perf_counter() - start
    if done != "nothing to compact":
        record("search", f"keyword postings compaction, {chunks} chunks ({done})", f"{took:.1f} s",
               **{f"loading.{scale}.keyword_compaction_seconds": took})
        store.analyze_collection(conn, coll.id)
    if hnsw_index(conn, coll.id) is None:
        start = time.perf_counter()
        with conn.transaction():
            store.ensure_hnsw_index(conn, coll)
        took = time.perf_counter() - start
        record("search", f"HNSW build, {chunks} chunks (m=16, ef_construction=64"
               f"{', halfvec' if chunks >= XL else ''})", f"{took:.1f} s",
               **{f"loading.{scale}.hnsw_build_seconds": took})
    return name, qs


SIZES = """
SELECT coalesce(sum(pg_relation_size(c.oid)) FILTER (WHERE c.relname = ragpipe.chunk_partition(%(id)s)), 0),
       coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = ragpipe.chunk_partition(%(id)s)), 0),
       coalesce(sum(pg_relation_size(c.oid)) FILTER (WHERE c.relname = ragpipe.hnsw_index_name(%(id)s)), 0),
       coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = ragpipe.blocks_partition(%(id)s)), 0),
       (SELECT count(*) FROM ragpipe.chunks WHERE collection_id = %(id)s),
       (SELECT coalesce(sum(p.postings), 0) FROM ragpipe.posting_segments p WHERE p.collection_id = %(id)s),
       pg_database_size(current_database()),
       current_setting('shared_buffers')
FROM pg_class c WHERE c.relnamespace = 'ragpipe'::regnamespace"""


def record_sizes(conn, coll, scale: str) -> None:
    """The set's sizes on disk: the chunks table (its heap; with its other indexes), the HNSW index,
    the keyword index (postings in blocks), the whole database; and the server's shared buffers."""
    heap, table, hnsw, keyword, chunks, postings, database, buffers = conn.execute(SIZES, {"id": coll.id}).fetchone()
    mb = 2 ** 20
    table -= hnsw  # the table's total counts its indexes, the HNSW index among them
    record("storage", f"{chunks} chunks on disk: chunks table (heap / TOAST and B-trees), HNSW, keyword index "
           f"({postings} postings), whole database; shared_buffers",
           f"{heap / mb:.0f} / {(table - heap) / mb:.0f} MB, {hnsw / mb:.0f} MB, {keyword / mb:.0f} MB "
           f"({keyword / max(postings, 1):.1f} B a posting), {database / 2**30:.1f} GB; {buffers}",
           **{f"storage.{scale}.chunks_mb": table / mb, f"storage.{scale}.hnsw_mb": hnsw / mb,
              f"storage.{scale}.keyword_mb": keyword / mb, f"storage.{scale}.postings": postings,
              f"storage.{scale}.keyword_bytes_per_posting": keyword / max(postings, 1),
              f"storage.{scale}.collection_gb": (table + hnsw + keyword) / 2**30,
              f"storage.{scale}.database_gb": database / 2**30})


def hnsw_index(conn, collection_id: int) -> str | None:
    """The collection's HNSW index (schema-qualified), or None while it has none."""
    return conn.execute("SELECT to_regclass('ragpipe.' || ragpipe.hnsw_index_name(%s))::text",
                        (collection_id,)).fetchone()[0]


def bench_search(conn, chunks: int, queries: int) -> None:
    """Latency and HNSW recall@10 vs exact search on `chunks` synthetic-but-realistic chunks."""
    name, qs = search_collection(conn, chunks, queries)
    coll = store.get_collection(conn, name)
    qvec = get_embedder(DEFAULT_MODEL).encode(qs)
    if not any(metric.startswith("HNSW build") for _, metric, _ in results):  # time the build on every run
        conn.execute(f"DROP INDEX {hnsw_index(conn, coll.id)}")
        name, qs = search_collection(conn, chunks, queries)
    start = time.perf_counter()
    store.refresh_text_stats(conn, coll.id, min_change=0)
    record("search", f"keyword statistics (BM25 word counts), {chunks} chunks", f"{time.perf_counter() - start:.1f} s")
    store.analyze_collection(conn, coll.id)

    def run(mode: str, vector: np.ndarray, text: str) -> tuple[list[int], float]:
        params = dict(collection=name, embedding=vector, text=text, k=10, filter=None, **HYBRID_DEFAULTS)
        start = time.perf_counter()
        rows = conn.execute(query("search", mode), params).fetchall()
        return [r[0] for r in rows], (time.perf_counter() - start) * 1000

    scale = scale_label(chunks)
    record_sizes(conn, coll, scale)
    truth = [run("exact", v, q) for q, v in zip(qs, qvec, strict=True)]
    exact_ms = [t for _, t in truth]
    record("search", f"exact (brute force) semantic, {chunks} chunks: p50", f"{statistics.median(exact_ms):.1f} ms")
    # Exact BM25 by reading every posting of every query word in one round (no early stop): done
    # first, so that it does not push the index pages measured below out of shared buffers.
    store.set_index_settings(conn, coll.id, keyword_candidates=100_000_000)
    exact_bm25, every_ms = [], []
    for q in qs:
        start = time.perf_counter()
        exact_bm25.append([r[0] for r in conn.execute("SELECT chunk_id FROM ragpipe.keyword_search(%s, %s, 10)",
                                                      (name, q)).fetchall()])
        every_ms.append((time.perf_counter() - start) * 1000)
    record("search", "keyword_search reading every posting of each query word (no early stop): p50 / p95",
           f"{np.percentile(every_ms, 50):.1f} / {np.percentile(every_ms, 95):.1f} ms")
    # A fresh index is written around shared buffers: the first searches read it in. That pass is
    # reported on its own; the curve below measures the warm index, as a serving collection has it.
    store.set_index_settings(conn, coll.id, ef_search=EF_LADDER[-1])
    cold = [run("semantic", v, q)[1] for q, v in zip(qs, qvec, strict=True)]
    record("search", f"semantic_search, first pass over a fresh index (ef_search={EF_LADDER[-1]}): p50 / p95",
           f"{np.percentile(cold, 50):.1f} / {np.percentile(cold, 95):.1f} ms",
           **{f"search.{scale}.semantic_cold_p50_ms": np.percentile(cold, 50)})
    curve = []
    for ef in EF_LADDER:
        store.set_index_settings(conn, coll.id, ef_search=ef)
        got = [run("semantic", v, q) for q, v in zip(qs, qvec, strict=True)]
        recall = float(np.mean([len(set(g) & set(t)) / 10 for (g, _), (t, _) in zip(got, truth, strict=True)]))
        lat = [t for _, t in got]
        curve.append(CurvePoint(ef, recall, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))))
        record("search", f"semantic_search ef_search={ef}: p50 / p95, recall@10",
               f"{curve[-1].p50_ms:.1f} / {curve[-1].p95_ms:.1f} ms, {recall:.3f}")
    # The collection's ef_search chosen from the measured curve, as `ragpipe tune` chooses it.
    best = choose_ef_search(curve, 0.95) or curve[-1]
    record("search", "semantic_search at the ef_search chosen from the curve (recall@10 >= 0.95)",
           f"ef_search={best.ef_search}: {best.p50_ms:.1f} / {best.p95_ms:.1f} ms, {best.recall:.3f}",
           **{f"search.{scale}.semantic_ef_search": best.ef_search, f"search.{scale}.semantic_p50_ms": best.p50_ms,
              f"search.{scale}.semantic_p95_ms": best.p95_ms, f"search.{scale}.semantic_recall10": best.recall})
    store.set_index_settings(conn, coll.id, ef_search=best.ef_search)  # keyword and hybrid below: as tuned
    # keyword_search stops when no unranked chunk can reach the k-th score; its two settings only
    # size a round (the postings read per word, the chunks scored by probes), so recall is 1 at each.
    default = (DEFAULT_INDEX["keyword_candidates"], DEFAULT_INDEX["keyword_rescore"])
    for depth, rescore in ((1000, default[1]), (16000, default[1]), (default[0], 1000), default):  # default last
        store.set_index_settings(conn, coll.id, keyword_candidates=depth, keyword_rescore=rescore)
        got = [run("keyword", v, q) for q, v in zip(qs, qvec, strict=True)]
        recall = np.mean([len(set(g) & set(e)) / max(len(e), 1) for (g, _), e in zip(got, exact_bm25, strict=True)])
        lat = [t for _, t in got]
        record("search", f"keyword_search (exact top-k, rounds of {depth} postings a word, {rescore} probed): "
               "recall@10 vs exact BM25, p50 / p95",
               f"{recall:.3f}, {np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} ms",
               **({f"search.{scale}.keyword_recall10": recall} if (depth, rescore) == default else {}))
    for mode in ("keyword", "hybrid"):
        lat = [run(mode, v, q)[1] for q, v in zip(qs, qvec, strict=True)]
        record("search", f"{mode}_search: p50 / p95", f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} ms",
               **{f"search.{scale}.{mode}_p50_ms": np.percentile(lat, 50),
                  f"search.{scale}.{mode}_p95_ms": np.percentile(lat, 95)})
    if chunks < XL:
        bench_storage(conn, name, qvec, [t for t, _ in truth], scale)
    else:
        record("storage", f"float32 / halfvec / binary copies of {chunks} chunks", "not built at this size (each "
               "is another copy and HNSW build; the set itself is halfvec)")
    texts = [r[0] for r in conn.execute("SELECT text FROM ragpipe.chunks WHERE collection_id = %s ORDER BY id LIMIT 80",
                                        (coll.id,)).fetchall()]
    bench_rerank(texts)


def bench_rerank(texts: list[str], candidates: int = 50, rounds: int = 30) -> None:
    """What re-ranking adds beyond its model: `candidates` hits re-ranked through the loopback /rerank
    endpoint (the model's time measured inside the server), p50 and p95 of the rest (HTTP, JSON, checks)."""
    from pipelines.search import SearchResult
    from pipelines.search.rerank import rerank
    from tools.embeddings_server import running

    hits = [SearchResult(i, f"d{i}", f"file:///d{i}", None, text, {}, 1.0 / (i + 1))
            for i, text in enumerate(texts[:candidates])]
    with running() as server:
        options = {"model": "minilm", "base_url": server.base_url, "candidates": candidates, "timeout_s": 30.0}
        rerank("warm up", hits, options, 10)
        overheads, model = [], []
        for i in range(rounds):
            started = time.perf_counter()
            outcome = rerank(f"question {i} about {texts[i]}"[:200], hits, options, 10)
            took = time.perf_counter() - started
            assert outcome.reranked, outcome.error
            model.append(server.seen.model_s[-1])
            overheads.append(took - model[-1])
    p50, p95 = (float(np.percentile(overheads, q)) * 1000 for q in (50, 95))
    record("search", f"rerank of {candidates} candidates through the loopback /rerank endpoint, {rounds} queries: "
           "overhead beyond the model's own time", f"p50 {p50:.2f} ms, p95 {p95:.2f} ms (the model: p50 "
           f"{float(np.median(model)) * 1000:.0f} ms)", **{"search.rerank.overhead_p50_ms": p50,
                                                           "search.rerank.overhead_p95_ms": p95})


STORAGE_VARIANTS = {"float32": {}, "halfvec": {"storage": "halfvec"},
                    "binary": {"index": {"quantization": "binary", "rerank": 40}}}
"""collections.yml settings of each storage choice (docs/models.md)."""


def bench_storage(conn, name: str, qvec: np.ndarray, truth: list[list[int]], scale: str) -> None:
    """The same chunks under each storage choice, through the product's own index build and
    semantic_search: HNSW size and build time, recall@10 against exact search, p50 / p95."""
    base = store.get_collection(conn, name)
    assert base is not None
    for label, extra in STORAGE_VARIANTS.items():
        variant = f"{name}_{label}"
        drop_collection(conn, variant)
        settings = {**{k: v for k, v in extra.items() if k != "index"},
                    "index": {"maintenance_work_mem_cap_mb": 4096, **extra.get("index", {})}}
        coll = store.ensure_collection(conn, variant, DEFAULT_MODEL, 384, 256, 32, settings)
        half = store.stores_halfvec(coll)  # the table's vectors as the variant stores them
        conn.execute("INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, char_start, "
                     "char_end, heading_path, content_hash, metadata, embedding, embedding_half) SELECT %s, "
                     "document_id, ordinal, text, token_count, char_start, char_end, heading_path, content_hash, "
                     "metadata, CASE WHEN %s THEN NULL ELSE embedding END, CASE WHEN %s THEN embedding::halfvec END "
                     "FROM ragpipe.chunks WHERE collection_id = %s", (coll.id, half, half, base.id))  # same documents
        store.analyze_collection(conn, coll.id)
        same = dict(conn.execute("SELECT b.id, v.id FROM ragpipe.chunks b JOIN ragpipe.chunks v ON v.document_id = "
                                 "b.document_id AND v.ordinal = b.ordinal WHERE b.collection_id = %s AND "
                                 "v.collection_id = %s", (base.id, coll.id)).fetchall())
        wanted = [{same[i] for i in t} for t in truth]  # the exact top 10, as this copy's chunk ids
        start = time.perf_counter()
        with conn.transaction():
            store.ensure_hnsw_index(conn, coll)
        build_s = time.perf_counter() - start
        index_mb = conn.execute("SELECT pg_relation_size(('ragpipe.' || ragpipe.hnsw_index_name(%s))::regclass) / 1e6",
                                (coll.id,)).fetchone()[0]
        for v in qvec:  # a fresh index is read into shared buffers by its first searches
            conn.execute("SELECT chunk_id FROM ragpipe.semantic_search(%s, %s, 10)", (variant, v)).fetchall()
        for ef in (40, 80, 160):
            store.set_index_settings(conn, coll.id, ef_search=ef)
            hits, lat = [], []
            for v, t in zip(qvec, wanted, strict=True):
                started = time.perf_counter()
                rows = conn.execute("SELECT chunk_id FROM ragpipe.semantic_search(%s, %s, 10)", (variant, v)).fetchall()
                lat.append((time.perf_counter() - started) * 1000)
                hits.append(len({r[0] for r in rows} & set(t)) / 10)
            key = f"storage.{scale}.{label}.ef{ef}"
            record("storage", f"{label}: HNSW index / build, semantic ef_search={ef}: recall@10, p50 / p95",
                   f"{index_mb:.0f} MB / {build_s:.1f} s, {np.mean(hits):.3f}, "
                   f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} ms",
                   **{f"storage.{scale}.{label}.index_mb": index_mb, f"storage.{scale}.{label}.build_s": build_s,
                      f"{key}.recall10": float(np.mean(hits)), f"{key}.p50_ms": float(np.percentile(lat, 50)),
                      f"{key}.p95_ms": float(np.percentile(lat, 95))})
        drop_collection(conn, variant)


def bench_storage_quality() -> None:
    """NFCorpus nDCG@10 of each storage choice and of Matryoshka truncation, as a ratio to float32/384."""
    from pipelines.search.evaluate import evaluate

    choices = {**STORAGE_VARIANTS, "dimensions-256": {"dimensions": 256}, "dimensions-128": {"dimensions": 128}}
    scores = {}
    for label, options in choices.items():
        name = "beir_nfcorpus_" + label.replace("-", "_")
        scores[label] = evaluate(CORPUS, ["semantic"], collection=name, options=options)["modes"]["semantic"]["ndcg@10"]
        ratio = scores[label] / scores["float32"]
        record("storage", f"{label}: {CORPUS_NAME} nDCG@10, semantic (ratio to float32/384)",
               f"{scores[label]:.4f} ({ratio:.3f})", **{f"storage.nfcorpus.{label}.ndcg_ratio": ratio})
