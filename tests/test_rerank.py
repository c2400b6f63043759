"""Re-ranking (#44.1): a collection's `rerank:` re-scores a search's best candidates through a real
/rerank endpoint on loopback (tools/embeddings_server.py: scores from the packaged model) or a
CrossEncoder built here from the packaged model's weights, in every interface; a reranker that
fails returns the first-stage order, flagged, and never shows its key."""

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipelines import search as api
from pipelines.config import ConfigError, parse_collection
from pipelines.ingest import run_ingest
from tests.conftest import CORPUS, ragpipe
from tests.test_service import serving

KEY = "rk-live-5d1e8b2a-never-printed"
QUERY = "cholesterol lowering nuts"
CANDIDATES = 12
TIMEOUT_S = 3.0
"""The reranker's timeout: room for the loopback endpoint's real work on a busy 2-core machine."""


def records_collection(tmp_path: Path, name: str, rerank: dict | None) -> str:
    """The sample records (20 abstracts) as collection `name`, with `rerank` as its reranker."""
    rows = (CORPUS / "records.jsonl").read_text()
    (tmp_path / "records.jsonl").write_text(rows)
    spec = {"name": name, "source": {"kind": "tabular", "path": str(tmp_path / "records.jsonl"),
                                     "title_column": "title"}, **({"rerank": rerank} if rerank else {})}
    run_ingest(parse_collection(spec, where=name, base=tmp_path))
    return name


def cosine_order(texts: list[str], query: str) -> list[float]:
    """What the loopback endpoint scores each text (the cosine of the packaged model's vectors)."""
    from pipelines.embed import get_embedder

    vectors = get_embedder("all-MiniLM-L6-v2").encode([query, *texts])
    return [float(v @ vectors[0]) for v in vectors[1:]]


@pytest.fixture(scope="module")
def reranked(api_server, tmp_path_factory) -> str:
    """A collection whose reranker is the loopback /rerank endpoint, with a key."""
    rerank = {"model": "minilm-rerank", "base_url": api_server.base_url, "api_key_env": "RAGPIPE_TEST_RERANK_KEY",
              "candidates": CANDIDATES, "timeout_s": TIMEOUT_S, "retries": 1}
    return records_collection(tmp_path_factory.mktemp("rerank"), "rerank_api", rerank)


@pytest.fixture(autouse=True)
def key(monkeypatch, api_server):
    monkeypatch.setenv("RAGPIPE_TEST_RERANK_KEY", KEY)
    api_server.faults.ahead.clear()
    yield
    api_server.faults.ahead.clear()


def test_the_endpoint_order_is_applied_in_search_and_rag_context(reranked, api_server):
    first = api.search(QUERY, collection=reranked, k=5, mode="keyword", rerank=False)
    before = api_server.seen.requests
    hits = api.search(QUERY, collection=reranked, k=5, mode="keyword")
    assert hits.reranked and hits.rerank_error is None and not first.reranked
    asked = api_server.seen.bodies[-1]
    assert api_server.seen.requests == before + 1 and asked["query"] == QUERY
    assert len(asked["documents"]) == CANDIDATES and f"Bearer {KEY}" in api_server.seen.authorization
    # the candidates were keyword's best CANDIDATES; their order is now the endpoint's scores
    pool = api.search(QUERY, collection=reranked, k=CANDIDATES, mode="keyword", rerank=False)
    assert [h.text for h in pool] == asked["documents"]
    scores = cosine_order([h.text for h in pool], QUERY)
    want = [pool[i].chunk_id for i in np.argsort(-np.asarray(scores), kind="stable")[:5]]
    assert [h.chunk_id for h in hits] == want != [h.chunk_id for h in first]
    assert [round(h.score, 4) for h in hits] == sorted((round(s, 4) for s in scores), reverse=True)[:5]

    context = api.rag_context(QUERY, reranked, k=3)
    assert context.reranked and context.rerank_error is None
    candidates = api.search(QUERY, collection=reranked, k=CANDIDATES, rerank=False)  # hybrid, as rag_context
    order = np.argsort(-np.asarray(cosine_order([h.text for h in candidates], QUERY)), kind="stable")
    top = [candidates[i].source_id for i in order[:3]]
    assert [c["source_id"] for c in context.citations] == list(dict.fromkeys(top))
    plain = api.rag_context(QUERY, reranked, k=3, rerank=False)
    assert not plain.reranked and plain.citations != context.citations


@pytest.mark.parametrize("fault", ["500", "hang", "wrong_count", "garbage", "nan", "echo", "drip"])
def test_a_failing_reranker_returns_the_first_stage_order_with_the_reason(reranked, api_server, fault, caplog):
    first = api.search(QUERY, collection=reranked, k=5, mode="keyword", rerank=False)
    api_server.faults.ahead[fault] = 2 if fault == "500" else 1  # a 500 is tried again
    api_server.faults.echo_offset = 40
    import time

    started = time.monotonic()
    hits = api.search(QUERY, collection=reranked, k=5, mode="keyword")
    took = time.monotonic() - started
    assert not hits.reranked and hits.rerank_error
    assert [h.chunk_id for h in hits] == [h.chunk_id for h in first]
    assert [h.score for h in hits] == [h.score for h in first]
    assert took < TIMEOUT_S + 1.5, f"the reranker's timeout is {TIMEOUT_S:g} s; the search took {took:.1f} s"
    assert "\n" not in hits.rerank_error and KEY[:8] not in hits.rerank_error and KEY[-8:] not in hits.rerank_error
    assert KEY[:8] not in caplog.text and KEY[-8:] not in caplog.text
    late = f"no answer within {TIMEOUT_S:g} s"
    expected = {"500": "HTTP 500", "hang": late, "drip": late,
                "wrong_count": f"{CANDIDATES - 1} scores for {CANDIDATES} texts",
                "garbage": "not a rerank response", "nan": "not a finite number", "echo": "HTTP 401"}[fault]
    assert expected in hits.rerank_error, hits.rerank_error


def test_every_interface_reranks_and_flags_a_failure(reranked, api_server, tmp_path):
    from pipelines.service import create_app

    plain = ragpipe("search", QUERY, "-c", reranked, "--mode", "keyword", "--chunks", "--no-rerank", "--json")
    ranked = ragpipe("search", QUERY, "-c", reranked, "--mode", "keyword", "--chunks", "--json")
    want = api.search(QUERY, collection=reranked, k=5, mode="keyword")
    assert [h["chunk_id"] for h in json.loads(ranked.stdout)] == [h.chunk_id for h in want] != \
        [h["chunk_id"] for h in json.loads(plain.stdout)]
    api_server.faults.ahead["echo"] = 1
    failed = ragpipe("search", QUERY, "-c", reranked, "--mode", "keyword")
    assert "rerank failed, first-stage order: the rerank endpoint" in failed.stderr and "HTTP 401" in failed.stderr
    assert KEY[:8] not in failed.stdout + failed.stderr and KEY[-8:] not in failed.stdout + failed.stderr
    asked = ragpipe("ask", QUERY, "-c", reranked, "-k", "2", "--rerank", env={"RAGPIPE_LLM_URL": ""})
    context = api.rag_context(QUERY, reranked, k=2)
    assert context.reranked and f"[1] {context.citations[0]['title']}\n" in asked.stdout

    with serving(create_app()) as base:
        def get(**params) -> dict:
            got = httpx.get(f"{base}/api/search", params=dict(collection=reranked, q=QUERY, k=5, mode="keyword",
                                                              **params), timeout=30)
            assert got.status_code == 200, got.text
            return got.json()

        body = get()
        assert body["reranked"] is True and [r["chunk_id"] for r in body["results"]] == [h.chunk_id for h in want]
        assert get(rerank="false")["reranked"] is False
        api_server.faults.ahead["500"] = 2
        failed = get()
        assert failed["reranked"] is False and "HTTP 500" in failed["rerank_error"]
        assert [r["chunk_id"] for r in failed["results"]] == [json.loads(plain.stdout)[i]["chunk_id"] for i in range(5)]
        context = httpx.post(f"{base}/api/rag-context", json=dict(collection=reranked, q=QUERY, k=3), timeout=30).json()
        assert context["reranked"] is True and context["citations"] == api.rag_context(QUERY, reranked, k=3).citations
        page = httpx.get(base + "/", params=dict(collection=reranked, q=QUERY, mode="keyword"), timeout=30).text
        assert "(keyword, reranked)" in page
        api_server.faults.ahead["garbage"] = 1
        page = httpx.get(base + "/", params=dict(collection=reranked, q=QUERY, mode="keyword"), timeout=30).text
        assert 'id="rerank-failed"' in page and "not a rerank response" in page
        assert "(keyword)" in httpx.get(base + "/", params=dict(collection=reranked, q=QUERY, mode="keyword",
                                                                  rerank="off"), timeout=30).text
        asyncio.run(asyncio.wait_for(mcp_calls(f"{base}/mcp", reranked, want, json.loads(plain.stdout)), 60))
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert re.search(r"^ragpipe_rerank_seconds_count [1-9]", metrics, re.M), metrics
        assert f'ragpipe_rerank_failures_total{{collection="{reranked}"}} 2.0' in metrics


async def mcp_calls(url: str, collection: str, want: list, plain: list[dict]) -> None:
    """The MCP tools re-rank as the API does, and skip it when asked."""
    from mcp import Client

    from tests.test_mcp import result

    async with Client(url) as client:
        args = {"collection": collection, "query": QUERY, "k": 5, "mode": "keyword"}
        hits = result(await client.call_tool("search", args))
        assert [h["chunk_id"] for h in hits] == [h.chunk_id for h in want]
        unranked = result(await client.call_tool("search", {**args, "rerank": False}))
        assert [h["chunk_id"] for h in unranked] == [h["chunk_id"] for h in plain]
        context = result(await client.call_tool("rag_context", {"collection": collection, "question": QUERY, "k": 3}))
        assert context["reranked"] is True


def test_rerank_asked_of_a_collection_without_a_reranker_is_a_clear_error(sample):
    with pytest.raises(ConfigError, match="has no reranker: add `rerank:"):
        api.search(QUERY, collection=sample, rerank=True)
    failed = ragpipe("search", QUERY, "-c", sample, "--rerank", check=False)
    assert failed.returncode != 0 and len(failed.stderr.strip().splitlines()) == 1
    assert "has no reranker" in failed.stderr
    assert not api.search(QUERY, collection=sample, k=3).reranked  # none configured: not re-ranked, no error
    with pytest.raises(ConfigError, match=r"rerank.candidates: Input should be less than or equal to 1000"):
        parse_collection({"name": "x", "source": {"kind": "folder", "path": "/tmp"},
                          "rerank": {"model": "m", "candidates": 5000}}, where="x", base=Path("/tmp"))


def test_a_cross_encoder_built_from_the_packaged_weights_loads_offline_and_orders_the_hits(tmp_path, monkeypatch):
    """A CrossEncoder made here (the packaged MiniLM with a one-score head) from a path: its scores order the hits."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipelines.embed.names import model_location

    packaged = model_location("all-MiniLM-L6-v2")
    torch.manual_seed(7)
    model_dir = tmp_path / "cross-encoder"
    AutoModelForSequenceClassification.from_pretrained(packaged, num_labels=1).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(packaged).save_pretrained(model_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = records_collection(tmp_path, "rerank_local", {"model": str(model_dir), "candidates": CANDIDATES})
    pool = api.search(QUERY, collection=name, k=CANDIDATES, rerank=False)
    scores = CrossEncoder(str(model_dir)).predict([(QUERY, h.text) for h in pool])
    want = [pool[i].chunk_id for i in np.argsort(-scores, kind="stable")[:5]]
    hits = api.search(QUERY, collection=name, k=5)
    assert hits.reranked and [h.chunk_id for h in hits] == want
    assert hits[0].score == pytest.approx(float(scores.max()), abs=1e-5)


def test_context_of_builds_the_context_of_chunks_in_the_order_given(sample, conn):
    hits = api.search(QUERY, collection=sample, k=6, mode="semantic")
    ids = [h.chunk_id for h in reversed(hits)]
    context, citations = conn.execute("SELECT * FROM ragpipe.context_of(%s, %s, 5000, 0)", (sample, ids)).fetchone()
    assert [c["source_id"] for c in citations] == list(dict.fromkeys(h.source_id for h in reversed(hits)))
    assert context.startswith(f"[1] {hits[-1].title or hits[-1].source_id}\n")
    none, cites = conn.execute("SELECT * FROM ragpipe.context_of(%s, ARRAY[-1, 9223372036854775807]::bigint[])",
                               (sample,)).fetchone()
    assert (none, cites) == ("", [])
