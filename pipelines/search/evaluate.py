"""`ragpipe eval`: retrieval quality on a BEIR-layout data set, through the normal pipeline and SQL API.

The corpus is ingested as a tabular collection (document text = title + " " + text). Every test
query runs through the SQL functions; chunk hits become a document ranking in which a document's
score is its best chunk's score. Metrics come from ranx: nDCG@10, Recall@100, MRR@10. Mode "exact"
is semantic search with index scans disabled (brute force), to show what HNSW costs in recall.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import store
from pipelines.collection import query_embedder
from pipelines.config import parse_collection
from pipelines.ingest import run_ingest
from pipelines.search import HYBRID_DEFAULTS
from pipelines.search.beir import load_qrels, load_queries, prepare_corpus
from pipelines.settings import DEFAULT_MODEL, load_settings
from pipelines.store.connection import open_database
from pipelines.store.database import connect
from pipelines.store.sqlfiles import query

METRICS = ["ndcg@10", "recall@100", "mrr@10"]
CHUNK_DEPTH = 300
"""Chunks fetched per query: enough for a ranking of 100 distinct documents."""
SWEEP: list[dict[str, Any]] = ([{"fusion": "rrf", "rrf_k": k} for k in (10, 30, 60)]
                                + [{"fusion": "convex", "alpha": a} for a in (0.3, 0.4, 0.5, 0.6, 0.7)])
"""The hybrid fusion settings `ragpipe eval --sweep` scores (choose on a dev split, report on test)."""


def evaluate(dataset: Path, modes: list[str], collection: str | None = None, split: str = "test",
             model: str = DEFAULT_MODEL, max_queries: int | None = None, sweep: bool = False,
             chunk_context: bool = False, chunk_tokens: int | None = None,
             options: dict[str, Any] | None = None, rerank: dict[str, Any] | None = None,
             enrich: dict[str, Any] | None = None) -> dict[str, Any]:
    """nDCG@10, Recall@100 and MRR@10 of each mode; with sweep, also of hybrid under each SWEEP setting.
    `options`: more collections.yml settings of the collection (storage, index, dimensions, prompts).
    `rerank` (RerankOptions): each mode but exact is also scored re-ranked, as `<mode>+rerank`.
    `enrich` (ContextOptions): the corpus is also built with written chunk context, in a collection of
    its own (<name>_context), and each mode scored on it as `<mode>+context`."""
    from ranx import Qrels

    if enrich:
        same = dict(split=split, model=model, max_queries=max_queries, chunk_context=chunk_context,
                    chunk_tokens=chunk_tokens, rerank=rerank)
        report = evaluate(dataset, modes, collection, sweep=sweep, options=options, **same)
        named = f"{report['collection']}_context"
        enriched = evaluate(dataset, modes, named, options={**(options or {}), "enrich": {"context": enrich}}, **same)
        report["modes"].update({f"{mode}+context": m for mode, m in enriched["modes"].items()})
        report["context_collection"] = named
        return report
    dataset = dataset.resolve()
    variant = ("_ctx" if chunk_context else "") + (f"_t{chunk_tokens}" if chunk_tokens else "")
    name = collection or f"beir_{dataset.name}{variant}".replace("-", "_")
    table = prepare_corpus(dataset, load_settings().home / "eval" / f"{name}.jsonl")
    spec = parse_collection({"name": name, "model": model, "docs_per_batch": 256, "duplicates": "keep",
                             "chunk_context": chunk_context, **({"chunk_tokens": chunk_tokens} if chunk_tokens else {}),
                             **(options or {}),
                             "source": {"kind": "tabular", "path": str(table), "title_column": "title"}},
                            where=name, base=table.parent)
    ingest = run_ingest(spec)
    qrels = load_qrels(dataset, split)
    queries = load_queries(dataset, set(qrels))
    ids = sorted(queries)[:max_queries] if max_queries else sorted(queries)
    with connect(open_database()) as conn:
        built = store.get_collection(conn, name)
    assert built is not None
    vectors = query_embedder(built.family, built.model, built.settings).encode_queries([queries[q] for q in ids])
    judged = Qrels({q: qrels[q] for q in ids})
    report: dict[str, Any] = {"dataset": dataset.name, "split": split, "collection": name, "queries": len(ids),
                              "documents": ingest["listed"], "modes": {}}
    asked = [(qid, queries[qid], v) for qid, v in zip(ids, vectors, strict=True)]
    with connect(open_database()) as conn:
        def score(mode: str, fusion: dict[str, Any] | None = None,
                  reranker: dict[str, Any] | None = None) -> dict[str, float]:
            return _score(conn, judged, mode, name, asked, fusion, reranker)

        for mode in modes:
            report["modes"][mode] = score(mode)
            if rerank and mode != "exact":
                report["modes"][f"{mode}+rerank"] = score(mode, reranker=rerank)
        if sweep:
            report["sweep"] = {fusion_label(f): score("hybrid", f) for f in SWEEP}
    return report


def fusion_label(fusion: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fusion.items())


def _score(conn, judged, mode: str, collection: str, queries: list[tuple[str, str, np.ndarray]],
           fusion: dict[str, Any] | None, reranker: dict[str, Any] | None = None) -> dict[str, float]:
    from ranx import Run
    from ranx import evaluate as ranx_evaluate

    run: dict[str, dict[str, float]] = {}
    latencies = []
    failures = 0
    for qid, text, vector in queries:
        start = time.perf_counter()
        rows = _search(conn, mode, collection, text, vector, fusion)
        if reranker:
            rows, failed = _reranked(text, rows, reranker)
            failures += failed
        latencies.append((time.perf_counter() - start) * 1000)
        run[qid] = _documents(rows) or {"__none__": 0.0}
    scores = ranx_evaluate(judged, Run(run), METRICS)
    return {**{m: round(float(v), 4) for m, v in scores.items()},
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2),
            **({"rerank_failures": failures} if reranker else {})}


def _reranked(text: str, rows: list[tuple], options: dict[str, Any]) -> tuple[list[tuple], bool]:
    """The first `candidates` rows in the reranker's order, the rest as they were; and whether it failed."""
    from pipelines.search import SearchResult
    from pipelines.search.rerank import candidates, rerank

    n = candidates(options, 1)
    outcome = rerank(text, [SearchResult(*row) for row in rows[:n]], options, n)
    return [dataclasses.astuple(h) for h in outcome.hits] + rows[n:], outcome.error is not None


def _search(conn, mode: str, collection: str, text: str, vector: np.ndarray,
            fusion: dict[str, Any] | None = None) -> list[tuple]:
    params = dict(collection=collection, text=text, embedding=vector, k=CHUNK_DEPTH, filter=None,
                  **dict(HYBRID_DEFAULTS, **(fusion or {})))
    return conn.execute(query("search", mode), params).fetchall()


def _documents(rows: list[tuple]) -> dict[str, float]:
    """Chunk hits (best first) → document scores: a document scores its best chunk's score."""
    ranking: dict[str, float] = {}
    for rank, row in enumerate(rows):
        ranking.setdefault(row[1], float(len(rows) - rank))  # rank-based: comparable across modes
    return ranking
