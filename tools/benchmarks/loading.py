"""Sections `loading`, `reruns` and `versions`: COPY loads, re-runs and memory, a model change without downtime."""

import json
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pipelines import store
from pipelines.chunking import Chunk
from pipelines.ingest import run_ingest
from pipelines.settings import DEFAULT_MODEL
from tools.benchmarks.report import CORPUS, CORPUS_NAME, drop_collection, record, spec
from tools.service import RAGPIPE
from tools.synthetic import (
    document,
    sentences,
    write_folder,
)


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
