"""API spend (#45.2): the tokens an embeddings endpoint reports in `usage` are recorded per run and
collection (ingest_runs, `ragpipe status`, the run's lineage counts) and exposed in /metrics with the
service's query and chat tokens; an endpoint that reports none is estimated, and said to be; a dry
run counts what a run would send. The loopback endpoint counts the tokens it reports."""

import json
import re
import threading
from http.server import ThreadingHTTPServer

import httpx

from pipelines.ingest import run_ingest
from tests.conftest import ragpipe
from tests.test_embedders import KEY, api_collection, declare, declared
from tests.test_service import FakeLLM, serving


def metric(text: str, **labels: str) -> float:
    """The value of ragpipe_api_tokens_total with exactly these labels (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("ragpipe_api_tokens_total{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reported_tokens_are_recorded_per_run_and_in_metrics_and_a_dry_run_counts_them_first(
        api_server, corpus, name, conn, monkeypatch):
    monkeypatch.setenv("RAGPIPE_TEST_EMBEDDINGS_KEY", KEY)
    entry = api_collection(name, corpus, api_server, dimensions=384)  # the width asked for: no probe request
    declare(entry)
    dry = ragpipe("ingest", "-c", name, "--dry-run")
    estimate = int(re.search(r"would send about ([\d,]+) tokens", dry.stdout).group(1).replace(",", ""))
    before = api_server.seen.tokens
    summary = run_ingest(declared(name))
    spent = api_server.seen.tokens - before
    assert spent > 0 and summary["api_tokens"] == spent and summary["api_tokens_estimated"] == 0
    assert estimate == spent  # the dry run counted what the run sent
    status = ragpipe("status", "-c", name).stdout
    assert f"API tokens: last run {spent:,}, all runs {spent:,}" in status

    # an endpoint that reports no usage: estimated, and said to be
    api_server.faults.usage = False
    try:
        (corpus / "coffee" / "new-note.md").write_text("# Decaf\n\nDecaffeinated coffee and blood pressure. " * 5)
        again = run_ingest(declared(name))
    finally:
        api_server.faults.usage = True
    assert again["api_tokens"] == 0 and again["api_tokens_estimated"] > 0
    assert "estimated)" in ragpipe("status", "-c", name).stdout

    from pipelines.service import create_app

    llm = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    monkeypatch.setenv("RAGPIPE_LLM_URL", f"http://127.0.0.1:{llm.server_port}/v1")
    try:
        with serving(create_app()) as base:
            queried = api_server.seen.tokens
            got = httpx.get(f"{base}/api/search", params=dict(collection=name, q="coffee blood pressure",
                                                              mode="semantic"), timeout=30)
            assert got.status_code == 200, got.text
            asked = httpx.post(f"{base}/api/ask", json=dict(collection=name, q="does coffee raise blood pressure?",
                                                            k=2), timeout=30)
            assert "event: done" in asked.text
            text = httpx.get(f"{base}/metrics", timeout=30).text
    finally:
        llm.shutdown()
    model = conn.execute("SELECT model FROM ragpipe.collections WHERE name = %s", (name,)).fetchone()[0]
    documents = dict(collection=name, model=model, kind="documents")
    assert metric(text, **documents, source="reported") == spent
    assert metric(text, **documents, source="estimated") == again["api_tokens_estimated"]
    assert metric(text, **dict(documents, kind="queries"), source="reported") == api_server.seen.tokens - queried > 0
    chat = [line for line in text.splitlines() if 'kind="chat"' in line]
    assert chat and 'source="estimated"' in chat[0] and float(chat[0].rsplit(" ", 1)[1]) > 0  # the LLM reports none
    assert json.loads(ragpipe("status", "-c", name, "--json").stdout)[0]["api_tokens"]["reported"] == spent
