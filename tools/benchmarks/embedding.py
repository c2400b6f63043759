"""Section `embedding` (and `quality`): the model's own encode against the pipeline, backends, the API embedder."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.chunking import chunk_text
from pipelines.embed import get_embedder
from pipelines.ingest import run_ingest
from pipelines.settings import DEFAULT_MODEL
from tools.benchmarks.report import CORPUS, CORPUS_NAME, drop_collection, record, spec


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
