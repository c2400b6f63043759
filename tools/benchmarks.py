"""`make bench`: the figures behind ragpipe's performance claims, measured side by side in one run.

BENCH_SCALE=small (default, a few minutes) or large; BENCH_QUALITY=1 adds the NFCorpus nDCG@10 of the
torch and onnx-int8 backends to a small run (always part of large; ~15 min the first time, cached after).
BENCH_SECTIONS=embedding,loading,reruns,versions,search,service,freshness,metrics (the default: all) runs some of them;
BENCH_SECTIONS=quality runs only the NFCorpus nDCG@10 of the backends and storage choices. Results go to
stdout, docs/benchmarks[-large][-SECTIONS].md and the same figures as .json beside it; the report names
the CPU model and the flags that decide the fastest embedding backend (AVX2, AVX-512 VNNI/BF16, AMX).
Everything runs through the real pipeline, model and embedded PostgreSQL; synthetic corpora are
resampled sentences of NFCorpus (tools/synthetic.py). The search section's sentence embeddings
take ~15 min the first time (cached under .ragpipe/bench).
"""

import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pipelines import store
from pipelines.chunking import Chunk, chunk_text
from pipelines.config import DEFAULT_INDEX, parse_collection
from pipelines.embed import get_embedder
from pipelines.embed.hardware import CPU_FLAGS
from pipelines.ingest import run_ingest
from pipelines.search import HYBRID_DEFAULTS
from pipelines.search.tuning import EF_LADDER, CurvePoint, choose_ef_search
from pipelines.settings import DEFAULT_MODEL, PROJECT_ROOT
from pipelines.store.connection import open_database
from pipelines.store.database import connect
from pipelines.store.sqlfiles import query
from tools.service import RAGPIPE, ragpipe_serve
from tools.synthetic import (
    bench_corpus,
    chunk_vectors,
    corpus_label,
    document,
    nearby_sentences,
    runnable_sections,
    sentence_vectors,
    sentences,
    write_folder,
)

SCALES = {
    "small": dict(embed_docs=300, load_rows=20_000, rerun_docs=2_000, memory_docs=200, search_chunks=100_000,
                  queries=100),
    "large": dict(embed_docs=3633, load_rows=100_000, rerun_docs=10_000, memory_docs=1_000,
                  search_chunks=1_000_000, queries=100),
}
results: list[tuple[str, str, str]] = []
figures: dict[str, float] = {}
"""Named figures for tools (docs/benchmarks*.json "figures"), e.g. "backend.bf16.over_fp32"."""


def record(section: str, metric: str, value: str, **named: float) -> None:
    """One line of the report; `named` figures also go to the JSON file under their dotted names
    (keyword arguments use "__" for ".": embedding__pipeline_over_raw)."""
    results.append((section, metric, value))
    figures.update({k.replace("__", "."): round(float(v), 4) for k, v in named.items()})
    print(f"{section:<12} {metric:<58} {value}", flush=True)


def spec(name: str, source: dict[str, Any], **kw: Any):
    return parse_collection({"name": name, "source": source, **kw}, where=name, base=PROJECT_ROOT)


CORPUS = bench_corpus()
CORPUS_NAME = corpus_label(CORPUS)


def drop_collection(conn, name: str) -> None:
    """Drop the collection and every version of it."""
    conn.execute("DELETE FROM ragpipe.collections WHERE family = %s", (name,))


def nfcorpus_table(tmp: Path, docs: int) -> Path:
    rows = []
    with (CORPUS / "corpus.jsonl").open() as f:
        for line, _ in zip(f, range(docs), strict=False):
            d = json.loads(line)
            rows.append(json.dumps({"id": d["_id"], "title": d["title"], "text": f"{d['title']} {d['text']}"}))
    path = tmp / "nfcorpus.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def pipeline_and_raw(conn, table: Path, model: str, chunks: list[str], batch: int) -> tuple[float, float, float]:
    """Seconds to embed `chunks` with the model's own encode, and to ingest `table` (which chunks to
    exactly those texts) through the pipeline, and its finalize: best of 2, alternated, because this
    machine's noise is ~10%."""
    embedder = get_embedder(model, batch)
    embedder.encode(chunks[:8])  # load (and for onnx-int8 export) outside the timing
    raw_times, pipe_times, finalize_times = [], [], []
    for _ in range(2):
        start = time.perf_counter()
        embedder.encode(chunks)
        raw_times.append(time.perf_counter() - start)
        drop_collection(conn, "bench_embed")
        summary = run_ingest(spec("bench_embed", {"kind": "tabular", "path": str(table), "title_column": "title",
                                                  "title_in_text": False},
                                  model=model, batch_size=batch, docs_per_batch=64, duplicates="keep"),
                             full_refresh=True)
        assert summary["chunks_embedded"] + summary["chunks_reused"] == len(chunks), (summary, len(chunks))
        pipe_times.append(summary["seconds"])
        finalize_times.append(summary["finalize_seconds"])
    return min(raw_times), min(pipe_times), min(finalize_times)


def bench_embedding(conn, tmp: Path, docs: int) -> None:
    """Pipeline throughput vs SentenceTransformer.encode on exactly the same chunk texts."""
    table = nfcorpus_table(tmp, docs)
    embedder = get_embedder(DEFAULT_MODEL)
    texts = [json.loads(line)["text"] for line in table.read_text().splitlines()]
    chunks = [c.text for t in texts for c in chunk_text(t, embedder.tokenizer, embedder.max_tokens, 32)]
    sample = chunks[:256]
    speeds = {}
    for size in (16, 32, 64, 128):
        start = time.perf_counter()
        embedder.model.encode(sample, batch_size=size, normalize_embeddings=True)
        speeds[size] = len(sample) / (time.perf_counter() - start)
    best = max(speeds, key=speeds.get)
    record("embedding", "best encode batch size (of 16/32/64/128)", str(best))
    tokens = sum(len(ids) for ids in embedder.tokenizer(chunks)["input_ids"])
    raw_s, pipe_s, finalize_s = pipeline_and_raw(conn, table, DEFAULT_MODEL, chunks, best)
    others_gb = conn.execute("SELECT sum(pg_table_size(relid)) / 1e9 FROM pg_partition_tree('ragpipe.chunks') "
                             "WHERE isleaf").fetchone()[0]
    record("embedding", f"raw encode: {len(chunks)} chunks, {tokens} tokens (best of 2)",
           f"{len(chunks) / raw_s:.1f} chunks/s, {tokens / raw_s:.0f} tokens/s")
    record("embedding", f"pipeline ingest of {docs} docs, read+chunk+embed+COPY (best of 2)",
           f"{len(chunks) / pipe_s:.1f} chunks/s, {tokens / pipe_s:.0f} tokens/s")
    record("embedding", "pipeline / raw encode throughput, fp32 (target >= 0.95)", f"{raw_s / pipe_s:.2f}x",
           embedding__pipeline_over_raw=raw_s / pipe_s)
    record("embedding", f"of which finalize (HNSW build, statistics; {others_gb:.1f} GB of chunks in the database)",
           f"{finalize_s:.1f} s of {pipe_s:.1f} s")
    bench_api_embedder(chunks, len(chunks) / raw_s)
    onnx = get_embedder(DEFAULT_MODEL + "#onnx-int8")
    onnx.encode(sample[:8])  # export + quantize once (cached on disk), outside the timing
    onnx_times = []
    for _ in range(2):
        start = time.perf_counter()
        onnx_vectors = onnx.model.encode(chunks, batch_size=best)
        onnx_times.append(time.perf_counter() - start)
    onnx_s = min(onnx_times)
    torch_vectors = embedder.model.encode(chunks[:500], batch_size=best, normalize_embeddings=True)
    cosine = float(np.mean(np.sum(torch_vectors * onnx_vectors[:500], axis=1)))
    record("backend", "torch fp32 encode throughput (best of 2)", f"{len(chunks) / raw_s:.1f} chunks/s",
           **{"backend.torch.chunks_per_s": len(chunks) / raw_s, "backend.torch.over_fp32": 1.0})
    record("backend", "onnx-int8 encode throughput (best of 2)", f"{len(chunks) / onnx_s:.1f} chunks/s",
           **{"backend.onnx-int8.chunks_per_s": len(chunks) / onnx_s})
    record("backend", "onnx-int8 / torch encode throughput (target >= 2)", f"{raw_s / onnx_s:.2f}x",
           **{"backend.onnx-int8.over_fp32": raw_s / onnx_s})
    record("backend", "mean cosine(onnx-int8, torch) on 500 chunks", f"{cosine:.4f}")
    bf16 = get_embedder(DEFAULT_MODEL + "#bf16", best)
    bf16.encode(sample[:8])
    bf16_times = []
    for _ in range(2):
        start = time.perf_counter()
        bf16_vectors = bf16.encode(chunks)
        bf16_times.append(time.perf_counter() - start)
    bf16_s = min(bf16_times)
    cosine = float(np.mean(np.sum(torch_vectors * bf16_vectors[:500], axis=1)))
    record("backend", "bf16 (torch autocast) encode throughput (best of 2)", f"{len(chunks) / bf16_s:.1f} chunks/s",
           **{"backend.bf16.chunks_per_s": len(chunks) / bf16_s})
    record("backend", "bf16 / torch encode throughput (target >= 2.5 with AMX)", f"{raw_s / bf16_s:.2f}x",
           **{"backend.bf16.over_fp32": raw_s / bf16_s})
    record("backend", "mean cosine(bf16, torch) on 500 chunks", f"{cosine:.5f}")
    from pipelines.embed.hardware import best_backend

    auto = best_backend()
    record("backend", "#auto picks on this machine (from its CPU flags, or a GPU)", auto)
    if auto != "torch":
        raw, pipe, _ = pipeline_and_raw(conn, table, f"{DEFAULT_MODEL}#{auto}", chunks, best)
        record("embedding", f"pipeline / raw encode throughput, {auto} (#auto's backend)", f"{raw / pipe:.2f}x",
               **{f"embedding.{auto}.pipeline_over_raw": raw / pipe})
    import torch

    record("backend", "CUDA GPU for #fp16", torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else "none visible: fp16 not measured")


def bench_api_embedder(chunks: list[str], raw_rate: float) -> None:
    """The OpenAI-compatible client against tools/embeddings_server.py (its own process, the same model
    on the same CPU): chunks/s at concurrency 1 and 4, beside the local encode, and the client's
    cost per chunk (HTTP, JSON, checks)."""
    import subprocess
    import sys

    from pipelines.embed.api import ApiEmbedder
    from tools.service import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tools.embeddings_server", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        started = server.stdout.readline() if server.stdout else ""
        assert "serving" in started, "the embeddings server did not start"
        sample = chunks[:2048]
        for concurrency in (1, 4):
            client = ApiEmbedder("openai:minilm", {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": None,
                                                   "concurrency": concurrency, "batch_size": 64})
            client.encode_documents(sample[:64])  # the server loads its model outside the timing
            times = []
            for _ in range(2):
                start = time.perf_counter()
                client.encode_documents(sample)
                times.append(time.perf_counter() - start)
            rate = len(sample) / min(times)
            record("embedding", f"API embedder (loopback OpenAI-compatible server), concurrency {concurrency}, "
                   f"{len(sample)} chunks (best of 2)", f"{rate:.1f} chunks/s, {rate / raw_rate:.2f}x local encode, "
                   f"{1000 / rate - 1000 / raw_rate:+.2f} ms per chunk",
                   **{f"embedding.api.c{concurrency}.chunks_per_s": rate,
                      f"embedding.api.c{concurrency}.over_local": rate / raw_rate})
    finally:
        server.terminate()
        server.wait(30)


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


def bench_backend_quality() -> None:
    """nDCG@10 on the whole NFCorpus test set, torch vs onnx-int8, through `ragpipe eval`'s code path."""
    from pipelines.search.evaluate import evaluate

    scores = {}
    for backend, suffix in (("torch", ""), ("onnx-int8", "#onnx-int8"), ("bf16", "#bf16")):
        name = "beir_nfcorpus" + suffix.replace("#", "_").replace("-", "_")
        modes = ["semantic", "keyword", "hybrid"] if backend == "torch" else ["semantic"]
        scores[backend] = evaluate(CORPUS, modes, collection=name, model=DEFAULT_MODEL + suffix)
        m = scores[backend]["modes"]["semantic"]
        record("backend", f"{backend}: {CORPUS_NAME} nDCG@10 / Recall@100, semantic, "
               f"{scores[backend]['queries']} test queries", f"{m['ndcg@10']:.4f} / {m['recall@100']:.4f}")
    for mode in ("keyword", "hybrid"):
        m = scores["torch"]["modes"][mode]
        record("quality", f"{CORPUS_NAME} nDCG@10 / Recall@100, {mode}, test",
               f"{m['ndcg@10']:.4f} / {m['recall@100']:.4f}",
               **{f"quality.nfcorpus.{mode}_ndcg10": m["ndcg@10"]})
    for backend in ("onnx-int8", "bf16"):
        ratio = scores[backend]["modes"]["semantic"]["ndcg@10"] / scores["torch"]["modes"]["semantic"]["ndcg@10"]
        record("backend", f"{backend} / torch nDCG@10 (target >= 0.99)", f"{ratio:.3f}",
               **{f"backend.{backend}.ndcg_ratio": ratio})


def chunk_rows(n: int, dim: int, rng: np.random.Generator) -> list[store.LoadedDocument]:
    pool = sentences(limit=5000)
    r = random.Random(1)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [store.LoadedDocument(f"d{i}", f"mem://{i}", None, str(i), "", {"i": i},
                                 [Chunk(0, document(r, pool, 2, 3), 0, 1, 60)], vectors[i:i + 1])
            for i in range(n)]


def bench_loading(conn, rows: int) -> None:
    """COPY BINARY (the loader) vs executemany INSERT and row-by-row INSERT of the same chunks."""
    docs = chunk_rows(rows, 384, np.random.default_rng(0))
    drop_collection(conn, "bench_load")
    coll = store.ensure_collection(conn, "bench_load", DEFAULT_MODEL, 384, 256, 32, {"index": {}})
    with conn.transaction():  # the document rows, so that every method below inserts only chunks
        store.replace_documents(conn, coll, None, docs)
    doc_ids = dict(conn.execute("SELECT source_id, id FROM ragpipe.documents WHERE collection_id = %s",
                                (coll.id,)).fetchall())
    conn.execute("DELETE FROM ragpipe.chunks WHERE collection_id = %s", (coll.id,))
    start = time.perf_counter()
    with conn.transaction():
        store.copy_chunks(conn, coll.id, doc_ids, docs)
    copy_s = time.perf_counter() - start
    start = time.perf_counter()
    with conn.transaction():  # the keyword index of those chunks, as a run's finalize makes it
        store.compact_postings(conn, coll.id)
    postings_s = time.perf_counter() - start
    conn.execute("DELETE FROM ragpipe.chunks WHERE collection_id = %s", (coll.id,))
    with conn.transaction():
        store.compact_postings(conn, coll.id, full_merge=True)  # no chunks: no postings
    insert = ("INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, char_start, "
              "char_end, heading_path, content_hash, metadata, embedding) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
    from psycopg.types.json import Jsonb

    params = [(coll.id, doc_ids[d.source_id], 0, d.chunks[0].text, 60, 0, 1, [], d.chunks[0].content_hash,
               Jsonb(d.metadata), d.embeddings[0]) for d in docs]
    start = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(insert, params)
    many_s = time.perf_counter() - start
    conn.execute("DELETE FROM ragpipe.chunks WHERE collection_id = %s", (coll.id,))
    subset = params[: max(1000, rows // 10)]
    start = time.perf_counter()
    with conn.transaction():
        for p in subset:
            conn.execute(insert, p)
    single_s = (time.perf_counter() - start) * len(params) / len(subset)
    record("loading", f"COPY BINARY, {rows} chunks x 384 dims", f"{rows / copy_s:,.0f} rows/s")
    record("loading", "executemany INSERT (psycopg pipeline), same rows", f"{rows / many_s:,.0f} rows/s")
    record("loading", f"row-by-row INSERT ({len(subset)} rows, extrapolated)", f"{rows / single_s:,.0f} rows/s")
    record("loading", "COPY / executemany (target >= 10)", f"{many_s / copy_s:.1f}x")
    record("loading", f"then their BM25 postings in blocks (the compaction: keyword_search's index), {rows} chunks",
           f"{postings_s:.1f} s ({rows / postings_s:,.0f} chunks/s; COPY took {copy_s:.1f} s: "
           f"+{100 * postings_s / copy_s:.0f}%)")
    record("loading", "COPY / row-by-row INSERT", f"{single_s / copy_s:.1f}x")
    drop_collection(conn, "bench_load")
    bench_bare_loading(conn, docs)


def bench_bare_loading(conn, docs: list[store.LoadedDocument]) -> None:
    """The same rows into a bare (text, vector) table: the wire protocol without index maintenance."""
    conn.execute("CREATE TEMP TABLE bench_bare (text text, embedding vector(384))")
    rows = [(d.chunks[0].text, d.embeddings[0]) for d in docs]
    start = time.perf_counter()
    with conn.transaction(), conn.cursor().copy("COPY bench_bare FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "vector"])
        for row in rows:
            copy.write_row(row)
    copy_s = time.perf_counter() - start
    conn.execute("TRUNCATE bench_bare")
    start = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO bench_bare VALUES (%s, %s)", rows)
    many_s = time.perf_counter() - start
    conn.execute("TRUNCATE bench_bare")
    subset = rows[: max(1000, len(rows) // 10)]
    start = time.perf_counter()
    with conn.transaction():
        for row in subset:
            conn.execute("INSERT INTO bench_bare VALUES (%s, %s)", row)
    single_s = (time.perf_counter() - start) * len(rows) / len(subset)
    conn.execute("DROP TABLE bench_bare")
    record("loading", "bare table (text, vector): COPY BINARY", f"{len(rows) / copy_s:,.0f} rows/s")
    record("loading", "bare table: COPY / executemany / row-by-row INSERT",
           f"1 : {copy_s / many_s:.2f} : {copy_s / single_s:.2f} (COPY {many_s / copy_s:.1f}x and "
           f"{single_s / copy_s:.1f}x faster)")


def peak_rss(cmd: list[str]) -> tuple[float, dict]:
    """Run cmd, sampling its RSS (children included) every 50 ms; returns (peak MB, JSON output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, ps = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(err[-2000:])
    return peak / 2**20, json.loads(out)


def bench_reruns_and_memory(conn, tmp: Path, docs: int, small_docs: int) -> None:
    folder = write_folder(tmp / "rerun", docs)
    small = write_folder(tmp / "small", small_docs, seed=1)
    for name in ("bench_rerun", "bench_memory"):
        drop_collection(conn, name)
    mem_small, _ = peak_rss([RAGPIPE, "ingest", str(small), "-c", "bench_memory", "--json", "--full-refresh"])
    mem_big, full = peak_rss([RAGPIPE, "ingest", str(folder), "-c", "bench_rerun", "--json", "--full-refresh"])
    record("memory", f"peak RSS, ingest of {small_docs} docs (1x)", f"{mem_small:.0f} MB")
    record("memory", f"peak RSS, ingest of {docs} docs ({docs // small_docs}x)", f"{mem_big:.0f} MB")
    record("memory", f"peak RSS ratio {docs // small_docs}x / 1x (flat = streaming)", f"{mem_big / mem_small:.2f}")
    start = time.perf_counter()
    again = json.loads(subprocess.run([RAGPIPE, "ingest", str(folder), "-c", "bench_rerun", "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    rerun_wall = time.perf_counter() - start
    record("re-runs", f"full ingest of {docs} docs", f"{full['seconds']:.1f} s, {full['chunks_embedded']} chunks")
    record("re-runs", "no-change re-run (run time / incl. process start)",
           f"{again['seconds']:.2f} s / {rerun_wall:.1f} s, {again['chunks_embedded']} chunks embedded")
    share = 100 * again["seconds"] / full["seconds"]
    record("re-runs", "no-change re-run / full ingest (target <= 2%)", f"{share:.2f}%")
    touched = sorted(folder.rglob("*.md"))[:: 100]
    for path in touched:
        path.write_text(path.read_text() + "\nAn added sentence about dietary fibre and sleep.\n")
    one = json.loads(subprocess.run([RAGPIPE, "ingest", str(folder), "-c", "bench_rerun", "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    record("re-runs", f"after editing 1% of files ({len(touched)})",
           f"changed {one['changed']}, chunks embedded {one['chunks_embedded']}, {one['seconds']:.1f} s")
    drop_collection(conn, "bench_memory")
    bench_single_line(conn, tmp, mem_small)


def bench_versions(conn, tmp: Path) -> None:
    """Issue 16: switch NFCorpus from torch fp32 to onnx-int8 while searches run; embeddings reused when
    only chunk_overlap changes, and when 1% of the documents are edited."""
    from pipelines.search import search

    table = tmp / "nfcorpus-versions.jsonl"  # abstracts without their titles: chunk texts that no other
    with (CORPUS / "corpus.jsonl").open() as f:  # section has embedded, so every vector is computed
        table.write_text("".join(json.dumps({"id": d["_id"], "title": d["title"], "text": d["text"]}) + "\n"
                                 for d in map(json.loads, f)))
    name = "bench_versions"
    drop_collection(conn, name)

    def collection(**kw: Any):
        return spec(name, {"kind": "tabular", "path": str(table), "title_column": "title", "title_in_text": False},
                    duplicates="keep",
                    docs_per_batch=256, **kw)

    run_ingest(collection())
    queries = [q["text"] for q in map(json.loads, (CORPUS / "queries.jsonl").open())][:50]
    answered: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def search_loop() -> None:
        i = 0
        while not done.is_set():
            try:
                if search(queries[i % len(queries)], collection=name, k=10):
                    answered.append(time.perf_counter())
                else:
                    failures.append("empty")
            except Exception as exc:  # counted and reported: the measure is that there are none
                failures.append(f"{type(exc).__name__}: {exc}")
            i += 1

    loop = threading.Thread(target=search_loop)
    started = time.perf_counter()
    loop.start()
    try:
        switch = run_ingest(collection(model=DEFAULT_MODEL + "#onnx-int8"))
    finally:
        switched_s = time.perf_counter() - started
        time.sleep(1)
        done.set()
        loop.join(timeout=60)
    built = switch["new_version"]
    gaps = np.diff([started, *answered])
    record("versions", f"switch {CORPUS_NAME} ({switch['listed']} docs) to #onnx-int8: build, score, promote",
           f"{switched_s:.1f} s, {built['chunks_embedded']} chunks embedded, promoted {built['promoted']}")
    record("versions", "searches during the switch: answered / failed or empty (target 0)",
           f"{len(answered)} / {len(failures)}")
    record("versions", "longest wait between two answered searches during the switch", f"{gaps.max() * 1000:.0f} ms")
    overlap = run_ingest(collection(model=DEFAULT_MODEL + "#onnx-int8", chunk_overlap=48))["new_version"]
    total = overlap["chunks_embedded"] + overlap["chunks_reused"]
    record("versions", "chunk_overlap 32 -> 48: chunk vectors reused / all chunks",
           f"{overlap['chunks_reused']} / {total} ({100 * overlap['chunks_reused'] / total:.0f}%)")
    rows = table.read_text().splitlines()
    edited = set(range(0, len(rows), 100))
    table.write_text("".join(
        (json.dumps(dict(r, text=r["text"] + " An added sentence on dietary fibre.")) if i in edited
         else json.dumps(r)) + "\n" for i, r in enumerate(map(json.loads, rows))))
    edit = run_ingest(collection(model=DEFAULT_MODEL + "#onnx-int8", chunk_overlap=48))
    total = edit["chunks_embedded"] + edit["chunks_reused"]
    record("versions", f"1% of documents edited ({edit['changed']}): chunk vectors reused / chunks of those documents",
           f"{edit['chunks_reused']} / {total} ({100 * edit['chunks_reused'] / max(total, 1):.0f}%)")
    drop_collection(conn, name)


def bench_single_line(conn, tmp: Path, baseline_mb: float, mb: int = 50) -> None:
    """Peak RSS of ingesting one 50 MB line of text (the size cap): chunking works in bounded windows."""
    folder = tmp / "single-line"
    folder.mkdir()
    sentence = "Dietary fibre and green tea were studied in a cohort of adults over ten years without breaks "
    (folder / "one-line.txt").write_text(sentence * (mb * 2**20 // len(sentence) - 1))
    drop_collection(conn, "bench_single_line")
    peak, run = peak_rss([RAGPIPE, "ingest", str(folder), "-c", "bench_single_line", "--json"])
    record("memory", f"peak RSS, one {mb} MB single-line .txt (target <= 1.2 GB)",
           f"{peak:.0f} MB ({peak / baseline_mb:.2f}x a normal run), {run['seconds']:.0f} s, "
           f"{run['chunks_embedded']} distinct chunks embedded")
    drop_collection(conn, "bench_single_line")
    shutil.rmtree(folder, ignore_errors=True)


def search_collection(conn, chunks: int, queries: int) -> tuple[str, list[str]]:
    """The collection of `chunks` synthetic-but-realistic chunks the search and service sections
    measure (built once, kept between runs), and the query texts (NFCorpus queries)."""
    name = f"bench_search_{chunks}"
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
                                       {"index": {"ef_search": 40, "maintenance_work_mem_cap_mb": 4096},
                                        "generator": generator})
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
        record("search", f"COPY load of {chunks} synthetic chunks", f"{time.perf_counter() - start:.1f} s")
        store.refresh_text_stats(conn, coll.id, min_change=0)
    start = time.perf_counter()
    with conn.transaction():  # as a run's finalize does: the postings into blocks (a kept set: once)
        done = store.compact_postings(conn, coll.id)
    if done != "nothing to compact":
        record("search", f"keyword postings compaction, {chunks} chunks ({done})",
               f"{time.perf_counter() - start:.1f} s")
        store.analyze_collection(conn, coll.id)
    if hnsw_index(conn, coll.id) is None:
        start = time.perf_counter()
        with conn.transaction():
            store.ensure_hnsw_index(conn, coll)
        record("search", f"HNSW build, {chunks} chunks (m=16, ef_construction=64)",
               f"{time.perf_counter() - start:.1f} s")
    return name, qs


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

    scale = {100_000: "100k", 1_000_000: "1m"}.get(chunks, str(chunks))
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
    bench_storage(conn, name, qvec, [t for t, _ in truth], scale)
    texts = [r[0] for r in conn.execute("SELECT text FROM ragpipe.chunks WHERE collection_id = %s ORDER BY id LIMIT 80",
                                        (coll.id,)).fetchall()]
    bench_rerank(texts)


def bench_service(conn, chunks: int, queries: int) -> None:
    """`ragpipe serve` end to end (HTTP, query embedding, SQL) on the search section's collection:
    latency, throughput at 1/8/32 clients, and 50 clients for 60 s (errors, the service's RSS)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    name, qs = search_collection(conn, chunks, queries)
    with tempfile.TemporaryDirectory() as tmp, ragpipe_serve(Path(tmp) / "serve.log") as (base, proc):
        server = psutil.Process(proc.pid)

        def one(client: httpx.Client, q: str, mode: str = "hybrid") -> float:
            start = time.perf_counter()
            got = client.get(f"{base}/api/search", params={"collection": name, "q": q, "k": 10, "mode": mode})
            if got.status_code != 200 or not got.json()["results"]:
                raise RuntimeError(f"HTTP {got.status_code}: {got.text[:200]}")
            return (time.perf_counter() - start) * 1000

        with httpx.Client(timeout=60) as client:
            for q in qs[:10]:
                one(client, q)  # warm: the model, the pool, PostgreSQL's caches
            for mode in ("semantic", "keyword", "hybrid"):
                lat = [one(client, q, mode) for q in qs]
                record("service", f"GET /api/search {mode}, {chunks} chunks, 1 client: p50 / p95",
                       f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} ms")

        def load(clients: int, seconds: float) -> tuple[int, int, list[float]]:
            stop = time.monotonic() + seconds
            errors: list[str] = []

            def client_loop(i: int) -> list[float]:
                lat = []
                with httpx.Client(timeout=60) as client:
                    n = i
                    while time.monotonic() < stop:
                        try:
                            lat.append(one(client, qs[n % len(qs)]))
                        except Exception as exc:
                            errors.append(str(exc)[:200])
                        n += clients
                return lat

            with ThreadPoolExecutor(clients) as pool:
                lats = [x for part in pool.map(client_loop, range(clients)) for x in part]
            if errors:
                print(f"  {len(errors)} errors, first: {errors[0]}", flush=True)
            return len(lats), len(errors), lats

        for clients in (1, 8, 32):
            done, failed, lat = load(clients, 20)
            record("service", f"hybrid at {clients} concurrent clients (20 s): throughput, p50 / p95",
                   f"{done / 20:.1f} req/s, {np.percentile(lat, 50):.0f} / {np.percentile(lat, 95):.0f} ms, "
                   f"{failed} errors")
        before = server.memory_info().rss / 2**20
        done, failed, lat = load(50, 60)
        after = server.memory_info().rss / 2**20
        record("service", "50 clients for 60 s: requests, errors, p95",
               f"{done}, {failed} errors, {np.percentile(lat, 95):.0f} ms")
        record("service", "service RSS before / after the 60 s soak", f"{before:.0f} / {after:.0f} MB")


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


ALL_SECTIONS = "embedding,loading,reruns,versions,search,service,freshness,metrics"


def quality_asked() -> bool:
    return os.environ.get("BENCH_QUALITY") == "1"


def bench_freshness(conn, tmp: Path, probes: int = 10) -> None:
    """Seconds from a change to `ragpipe search` finding it, under `ragpipe watch` (one process
    watching a folder and a table), p50 / p95 over `probes` changes of each kind."""
    import yaml

    from tools.freshness import file_probe, row_probe

    folder = tmp / "fresh"
    folder.mkdir()
    for i, text in enumerate(sentences(CORPUS, 50)):
        (folder / f"doc-{i:02d}.md").write_text(f"# Document {i}\n\n{text}\n")
    conn.execute("CREATE SCHEMA IF NOT EXISTS bench; DROP TABLE IF EXISTS bench.fresh; "
                 "CREATE TABLE bench.fresh (id int PRIMARY KEY, body text)")
    url = open_database()
    config = tmp / "fresh.yml"
    config.write_text(yaml.safe_dump({"collections": [
        {"name": "bench_fresh_folder", "source": {"kind": "folder", "path": str(folder)}, "watch": {"debounce_s": 0.5}},
        {"name": "bench_fresh_sql", "watch": {"table": "bench.fresh", "debounce_s": 0.5},
         "source": {"kind": "sql", "url": url, "query": "SELECT id, body FROM bench.fresh", "text_column": "body"}}]}))
    env = dict(os.environ, RAGPIPE_COLLECTIONS=str(config))
    subprocess.run([RAGPIPE, "watch", "bench_fresh_sql", "--setup"], env=env, check=True, capture_output=True)
    log_path = PROJECT_ROOT / ".ragpipe" / "bench" / "watch.log"
    log = log_path.open("w")
    watcher = subprocess.Popen([RAGPIPE, "watch"], env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"ragpipe watch: log in {log_path}", flush=True)
    try:
        file_probe(folder, "bench_fresh_folder", 300)  # the first runs: the model loads, the folder is embedded
        row_probe(conn, "bench.fresh", "bench_fresh_sql", 0, 300)
        for kind, probe in (("folder", lambda i: file_probe(folder, "bench_fresh_folder")),
                            ("sql", lambda i: row_probe(conn, "bench.fresh", "bench_fresh_sql", i))):
            added, removed = zip(*(probe(i) for i in range(1, probes + 1)), strict=True)
            record("freshness", f"ragpipe watch, {kind}: change → searchable, p50 / p95 (add; delete)",
                   f"{np.percentile(added, 50):.1f} / {np.percentile(added, 95):.1f} s; "
                   f"{np.percentile(removed, 50):.1f} / {np.percentile(removed, 95):.1f} s",
                   **{f"freshness.watch.{kind}.add_p50_s": np.percentile(added, 50),
                      f"freshness.watch.{kind}.add_p95_s": np.percentile(added, 95),
                      f"freshness.watch.{kind}.delete_p50_s": np.percentile(removed, 50),
                      f"freshness.watch.{kind}.delete_p95_s": np.percentile(removed, 95)})
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(60)
        log.close()
        subprocess.run([RAGPIPE, "watch", "bench_fresh_sql", "--setup", "--remove"], env=env, capture_output=True,
                       check=False)
        for name in ("bench_fresh_folder", "bench_fresh_sql"):
            drop_collection(conn, name)
    bench_airflow_freshness(tmp, probes)


def bench_airflow_freshness(tmp: Path, probes: int) -> None:
    """The same under the real scheduler: `python -m tools.standalone freshness` starts the stack of
    `make run` in a temp home (its own database), then changes each watched sample source `probes` times."""
    out, home = tmp / "airflow-freshness.json", tmp / "airflow-home"
    log_path = PROJECT_ROOT / ".ragpipe" / "bench" / "airflow-freshness.log"
    with log_path.open("w") as log:
        print(f"standalone Airflow: log in {log_path}", flush=True)
        done = subprocess.run([sys.executable, "-m", "tools.standalone", "freshness"], stdout=log,
                              stderr=subprocess.STDOUT, timeout=3600, check=False, cwd=PROJECT_ROOT,
                              env=dict(os.environ, RAGPIPE_HOME=str(home), FRESHNESS_OUT=str(out),
                                       FRESHNESS_PROBES=str(probes)))
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"tools.standalone freshness failed ({done.returncode}); see {log_path}")
    for kind, seconds in json.loads(out.read_text()).items():
        key = kind.split()[0].lower()
        added, removed = seconds["add"], seconds["delete"]
        record("freshness", f"Airflow (AssetWatcher), {kind}: change → searchable, p50 / p95 (add; delete)",
               f"{np.percentile(added, 50):.1f} / {np.percentile(added, 95):.1f} s; "
               f"{np.percentile(removed, 50):.1f} / {np.percentile(removed, 95):.1f} s",
               **{f"freshness.airflow.{key}.add_p50_s": np.percentile(added, 50),
                  f"freshness.airflow.{key}.add_p95_s": np.percentile(added, 95),
                  f"freshness.airflow.{key}.delete_p50_s": np.percentile(removed, 50),
                  f"freshness.airflow.{key}.delete_p95_s": np.percentile(removed, 95)})


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


def cpu_info() -> dict[str, Any]:
    from pipelines.embed.hardware import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return {"model": model, "cores": os.cpu_count(), "flags": list(flags),
            "ram_gib": round(psutil.virtual_memory().total / 2**30), "os": platform.system()}


def machine() -> str:
    cpu = cpu_info()
    return (f"{cpu['model']} ({', '.join(cpu['flags']) or 'none of ' + '/'.join(CPU_FLAGS)}), {cpu['cores']} cores, "
            f"{cpu['ram_gib']} GiB RAM, {cpu['os']}")


def write_report(scale: str, seconds: float) -> Path:
    quality = " BENCH_QUALITY=1" if quality_asked() else ""
    if os.environ.get("BENCH_SECTIONS"):
        quality += f" BENCH_SECTIONS={os.environ['BENCH_SECTIONS']}"
    lines = [
        "# Benchmarks", "",
        f"- machine: {machine()} (shared and noisy: compare ratios from the same run, not absolute figures)",
        f"- command: `BENCH_SCALE={scale}{quality} make bench` (tools/benchmarks.py), {seconds / 60:.1f} min",
        f"- date: {date.today().isoformat()}; model all-MiniLM-L6-v2 (torch CPU), PostgreSQL 18 + pgvector 0.8.5"
        " (embedded)", "",
        "| section | metric | result |", "|---|---|---|",
        *[f"| {s} | {m} | {v} |" for s, m, v in results], "",
        f"Corpus: {CORPUS_NAME}. Its documents for embedding; synthetic documents of its resampled sentences for",
        "loading, re-runs and memory. For search, synthetic chunks of 2-4 sentences drawn from a window of 12",
        "neighbouring sentences; a chunk's vector is the normalised mean of the model's embeddings of its",
        "sentences (encoding each synthetic chunk would take days here); queries are the data set's queries.", "",
    ]
    base = "benchmarks" if scale == "small" else f"benchmarks-{scale}"
    sections = os.environ.get("BENCH_SECTIONS", "").replace(",", "-")
    report = PROJECT_ROOT / "docs" / f"{base}{'-' + sections if sections else ''}.md"
    report.write_text("\n".join(lines))
    run = {"cpu": cpu_info(), "date": date.today().isoformat(), "command": f"BENCH_SCALE={scale}{quality} make bench",
           "minutes": round(seconds / 60, 1)}
    report.with_suffix(".json").write_text(json.dumps({  # the same figures, for tools
        **run, "figures": figures, "results": [{"section": s, "metric": m, "value": v} for s, m, v in results]},
        indent=1) + "\n")
    if sections:  # a run of some sections also updates the scale's file
        merge_figures(PROJECT_ROOT / "docs" / f"{base}.json", run)
    return report


def merge_figures(path: Path, run: dict[str, Any], named: dict[str, float] | None = None) -> None:
    """Put this run's named figures (default: `figures`) into the scale's JSON file, each with the run it
    came from (run: cpu, date, command)."""
    doc = json.loads(path.read_text()) if path.exists() else {"cpu": run["cpu"], "figures": {}}
    doc.setdefault("figure_runs", {})
    for key, value in (figures if named is None else named).items():
        doc["figures"][key] = value
        doc["figure_runs"][key] = f"{run['date']}: {run['command']} on {run['cpu']['model']}"
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    scale = os.environ.get("BENCH_SCALE", "small")
    cfg = SCALES[scale]
    started = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, connect(open_database(), autocommit=True) as conn:
        tmp_path = Path(tmp)
        threading.excepthook = lambda args: print(args, file=sys.stderr)
        sections = os.environ.get("BENCH_SECTIONS", ALL_SECTIONS).split(",")
        sections, skipped = runnable_sections(sections, CORPUS)
        print(f"corpus: {CORPUS_NAME}", flush=True)
        if skipped:
            record("corpus", f"skipped: {', '.join(skipped)}", "these need a BEIR corpus: none at BENCH_CORPUS or "
                   "../shared/data/beir/nfcorpus (docs/search-quality.md says where to get one)")
        if "embedding" in sections:
            bench_embedding(conn, tmp_path, cfg["embed_docs"])
        if "quality" in sections or ("embedding" in sections and (scale == "large" or quality_asked())):
            bench_backend_quality()
            bench_storage_quality()
        if "loading" in sections:
            bench_loading(conn, cfg["load_rows"])
        if "reruns" in sections:
            bench_reruns_and_memory(conn, tmp_path, cfg["rerun_docs"], cfg["memory_docs"])
        if "versions" in sections:
            bench_versions(conn, tmp_path)
        if "search" in sections:
            bench_search(conn, cfg["search_chunks"], cfg["queries"])
        if "service" in sections:
            bench_service(conn, min(cfg["search_chunks"], 100_000), cfg["queries"])
        if "freshness" in sections:
            bench_freshness(conn, tmp_path)
        if "metrics" in sections:
            bench_metrics(conn)
        shutil.rmtree(tmp_path / "rerun", ignore_errors=True)
    report = write_report(scale, time.perf_counter() - started)
    print(f"\nwrote {report.relative_to(PROJECT_ROOT)} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
