"""Written chunk context (collections.yml `enrich: {context: ...}`) against a loopback chat endpoint
that writes a real context (tools/embeddings_server.py: the document's title and the chunk's heading in
a sentence), with its faults on demand."""

import hashlib

import pytest

from pipelines.config import ContextOptions
from pipelines.ingest import format_summary, run_ingest
from pipelines.search import search
from tests.conftest import EMBEDDINGS_KEY, folder_spec, ragpipe, run_failures

pytestmark = pytest.mark.slow
KEY_ENV = "TEST_CHAT_KEY"
HERONS = ("# Grey heron field notes\n\nHerons are patient hunters of shallow water.\n\n"
          "## Nesting\n\nThey build platforms of sticks high in tall trees, in colonies called heronries.\n")
MOSS = "# Moss gardens\n\nMoss grows best in shade and keeps the soil moist between stones.\n"


@pytest.fixture
def docs(tmp_path, request):
    """Two documents, their text new to this test (contexts are cached across collections by content)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    mark = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    (folder / "herons.md").write_text(HERONS + f"\nNoted {mark}.\n")
    (folder / "moss.md").write_text(MOSS + f"\nNoted {mark}.\n")
    return folder


@pytest.fixture
def chat(api_server, monkeypatch):
    """The loopback endpoint, faults cleared, and its key in $TEST_CHAT_KEY."""
    monkeypatch.setenv(KEY_ENV, EMBEDDINGS_KEY)
    api_server.faults.ahead.clear()
    api_server.faults.skip = 0
    api_server.faults.usage = True
    return api_server


def enriched(name, folder, chat, **context):
    options = {"model": "writer", "base_url": chat.base_url, "api_key_env": KEY_ENV, "retries": 0,
               "timeout_s": 10, **context}
    return folder_spec(name, folder, chunk_tokens=96, chunk_overlap=0, enrich={"context": options})


def chunk_rows(conn, name):
    return conn.execute("SELECT d.source_id, c.text, c.context, c.content_hash FROM ragpipe.chunks c "
                        "JOIN ragpipe.documents d ON d.id = c.document_id JOIN ragpipe.collections k "
                        "ON k.id = c.collection_id WHERE k.name = %s ORDER BY 1, c.ordinal", (name,)).fetchall()


def test_written_context_is_stored_embedded_and_keyword_searchable(docs, chat, name, conn):
    before = chat.seen.chats, chat.seen.tokens
    summary = run_ingest(enriched(name, docs, chat))
    assert (summary["new"], summary["failed"]) == (2, 0), summary
    rows = chunk_rows(conn, name)
    asked = chat.seen.chats - before[0]
    assert asked == len(rows) >= 3, "one request per chunk"
    nesting = next(r for r in rows if "platforms of sticks" in r[1])
    assert nesting[2] == 'From the document "Grey heron field notes", the part on Nesting.'
    assert "Grey heron" not in nesting[1], "the stored text stays the document's own"
    # embedded after the context (its content hash is of context + text) ...
    assert nesting[3] == hashlib.sha256(f"{nesting[2]}\n{nesting[1]}".encode()).hexdigest()
    # ... and keyword-searchable by the context's words, which the chunk itself lacks
    hit = search("grey heron nesting platforms", collection=name, k=1, mode="keyword")[0]
    assert hit.text == nesting[1] and "grey" not in hit.text.lower()
    # the chat model's tokens, as the endpoint reported them, are the run's
    run = conn.execute("SELECT context_tokens, context_tokens_estimated FROM ragpipe.ingest_runs WHERE id = %s",
                       (summary["id"],)).fetchone()
    assert run == (chat.seen.tokens - before[1], 0) and run[0] > 0
    assert f"chat tokens for chunk context {run[0]:,}" in format_summary(summary)


def test_unchanged_chunks_never_ask_again_and_a_change_asks_only_for_its_document(docs, chat, name, conn):
    spec = enriched(name, docs, chat)
    run_ingest(spec)
    before = chat.seen.chats
    again = run_ingest(spec)
    assert chat.seen.chats == before and again["unchanged"] == 2, "an unchanged run asks nothing"
    (docs / "moss.md").write_text(MOSS + "\nIt needs no mowing.\n")
    changed = run_ingest(spec)
    assert changed["changed"] == 1 and chat.seen.chats - before == 1, "only the changed document's chunk"
    # a full refresh re-embeds from the cached contexts: still no request
    before = chat.seen.chats
    run_ingest(spec, full_refresh=True)
    assert chat.seen.chats == before


@pytest.mark.parametrize("fault,reason", [("500", "HTTP 500 (the model server fell over)"),
                                          ("garbage", "not a chat completion"),
                                          ("wrong_count", "not a chat completion"),
                                          ("hang", "no answer within 1 s"),
                                          ("drip", "no answer within 1 s"),
                                          ("huge", "more than 262144 bytes")])
def test_a_failing_model_fails_the_document_whole_and_the_next_run_retries_it(fault, reason, docs, chat, name,
                                                                                conn, capfd):
    name = f"{name[:40]}_{fault}"
    chat.faults.skip = 1  # herons.md's first chunk gets its context, the second does not
    chat.faults.ahead[fault] = 1
    spec = enriched(name, docs, chat, timeout_s=1)
    summary = run_ingest(spec)
    failures = run_failures(conn, summary["id"])
    assert summary["failed"] == 1 and set(failures) == {"herons.md"}, (summary, failures)
    assert reason in failures["herons.md"] and failures["herons.md"].startswith("the chat endpoint")
    assert {r[0] for r in chunk_rows(conn, name)} == {"moss.md"}, "no half-enriched document"
    retried = run_ingest(spec)
    assert (retried["new"], retried["failed"]) == (1, 0)
    assert all(r[2] for r in chunk_rows(conn, name))
    out = capfd.readouterr()
    assert EMBEDDINGS_KEY not in out.out + out.err + str(failures)


def test_two_collections_writing_the_same_contexts_at_once_both_load_and_share_the_cache(docs, chat, name, conn):
    """Two runs over the same documents at the same moment (two collections: one collection's runs take
    its lock in turn): both load every chunk with its context, and the cache holds each context once."""
    from concurrent.futures import ThreadPoolExecutor

    specs = [enriched(f"{name[:40]}_{i}", docs, chat, concurrency=2) for i in (1, 2)]
    before = conn.execute("SELECT count(*) FROM ragpipe.chunk_contexts").fetchone()[0]
    chat.faults.delay_s = 0.3  # each answer takes a while: both runs ask before either stores
    try:
        with ThreadPoolExecutor(2) as pool:
            summaries = list(pool.map(run_ingest, specs))
    finally:
        chat.faults.delay_s = 0.0
    assert [(s["new"], s["failed"]) for s in summaries] == [(2, 0), (2, 0)], summaries
    first, second = (chunk_rows(conn, spec.name) for spec in specs)
    assert [r[2] for r in first] == [r[2] for r in second] and all(r[2] for r in first)
    added = conn.execute("SELECT count(*) FROM ragpipe.chunk_contexts").fetchone()[0] - before
    assert added == len(first), (added, len(first))


def test_a_refused_key_names_where_it_comes_from_and_is_never_shown(docs, chat, name, conn, capfd):
    chat.faults.ahead["echo"] = 1
    summary = run_ingest(enriched(name, docs, chat))
    reason = run_failures(conn, summary["id"])["herons.md"]
    assert "HTTP 401" in reason and f"${KEY_ENV}" in reason and EMBEDDINGS_KEY not in reason
    out = capfd.readouterr()
    assert EMBEDDINGS_KEY not in out.out + out.err


def test_turning_enrichment_on_builds_a_version_the_gate_scores(docs, chat, name, conn):
    queries = [{"query": "where herons build their nests", "expect": ["herons.md"]},
               {"query": "plants for shady stone gardens", "expect": ["moss.md"]}]
    plain = folder_spec(name, docs, chunk_tokens=96, chunk_overlap=0, eval={"queries": queries, "k": 1})
    run_ingest(plain)
    spec = folder_spec(name, docs, chunk_tokens=96, chunk_overlap=0, eval={"queries": queries, "k": 1},
                       enrich={"context": {"model": "writer", "base_url": chat.base_url, "api_key_env": KEY_ENV}})
    built = run_ingest(spec)["new_version"]
    verdict = built["evaluation"]
    assert built["version"] == 2 and verdict["metric"] == "hit_rate@1", built
    assert built["promoted"] == verdict["passed"] and verdict["candidate"] >= verdict["active"] - 0.01
    states = dict(conn.execute("SELECT version, state FROM ragpipe.collections WHERE family = %s", (name,)))
    assert states == {1: "previous", 2: "active"}
    assert all(r[2] for r in chunk_rows(conn, name)), "the active version is the enriched one"
    # a new prompt is a new build; a new endpoint (same model) is not
    assert run_ingest(folder_spec(name, docs, chunk_tokens=96, chunk_overlap=0, eval={"queries": queries, "k": 1},
                                  enrich={"context": {"model": "writer", "base_url": chat.base_url.replace(
                                      "127.0.0.1", "localhost"), "api_key_env": KEY_ENV}})).get("new_version") is None


def test_forget_removes_the_written_contexts(docs, chat, name, conn):
    run_ingest(enriched(name, docs, chat))
    count = "SELECT count(*) FROM ragpipe.chunk_contexts WHERE family = %s AND source_id = %s"
    assert conn.execute(count, (name, "herons.md")).fetchone()[0] >= 2
    ragpipe("forget", name, "herons.md")
    assert conn.execute(count, (name, "herons.md")).fetchone()[0] == 0
    assert conn.execute(count, (name, "moss.md")).fetchone()[0] == 1


def test_context_options_are_checked(docs, tmp_path, name):
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="enrich.context.max_tokens"):
        folder_spec(name, docs, enrich={"context": {"model": "m", "max_tokens": 4}})
    assert "{document}" in ContextOptions(model="m").prompt


def test_eval_scores_a_beir_set_with_and_without_written_context(tmp_path, chat):
    """`ragpipe eval --enrich`: each mode on the plain build and on one with written context."""
    import json

    from tests.conftest import CORPUS

    records = [json.loads(line) for line in (CORPUS / "records.jsonl").read_text().splitlines()][:8]
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": r["id"], "title": r["title"], "text": r["text"]}) + "\n" for r in records))
    (tmp_path / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": r["title"]}) + "\n" for i, r in enumerate(records)))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\t{r['id']}\t2\n" for i, r in enumerate(records)))
    enrich = json.dumps({"model": "writer", "base_url": chat.base_url, "api_key_env": KEY_ENV})
    before = chat.seen.chats
    report = json.loads(ragpipe("eval", str(tmp_path), "--json", "--collection", "tiny_beir_ctx_test",
                                "--modes", "keyword,semantic", "--enrich", enrich).stdout)
    assert set(report["modes"]) == {"keyword", "semantic", "keyword+context", "semantic+context"}
    assert report["context_collection"] == "tiny_beir_ctx_test_context" and chat.seen.chats > before
    assert all(m["recall@100"] == 1.0 for m in report["modes"].values())
    bad = ragpipe("eval", str(tmp_path), "--enrich", '{"model": "m", "max_tokens": 1}', check=False)
    assert bad.returncode != 0 and "--enrich: max_tokens" in bad.stderr


def test_a_dry_run_asks_no_model_and_estimates_the_chat_tokens(docs, chat, name, conn):
    before = chat.seen.requests
    planned = run_ingest(enriched(name, docs, chat), dry_run=True)
    assert chat.seen.requests == before, "a dry run asks no model"
    assert planned["would_send_context_tokens"] > 0 and "chat tokens for chunk context" in format_summary(planned)
    run_ingest(enriched(name, docs, chat))
    (docs / "moss.md").write_text(MOSS + "\nA change.\n")
    again = run_ingest(enriched(name, docs, chat), dry_run=True)
    assert 0 < again["would_send_context_tokens"] < planned["would_send_context_tokens"], "only the changed one"
    assert chat.seen.requests - before == len(chunk_rows(conn, name)), "only the real run asked"


def test_placeholders_inside_a_document_are_sent_as_written(tmp_path, chat, name, conn):
    """Hostile text: a document that itself holds "{chunk}" and "{document}" is not rewritten by the
    prompt's substitution (a second pass would have put the chunk inside the document)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    text = f"# Templates {name}\n\nWrite {{chunk}} or {{document}} in a template to fill it in.\n"
    (folder / "templates.md").write_text(text)
    chat.seen.bodies.clear()
    summary = run_ingest(enriched(name, folder, chat))
    assert (summary["new"], summary["failed"]) == (1, 0)
    prompts = [b["messages"][-1]["content"] for b in chat.seen.bodies if "messages" in b]
    sentence = "Write {chunk} or {document} in a template to fill it in."
    assert prompts and all(p.split("</document>")[0].count(sentence) == 1 for p in prompts), prompts
    assert any(p.split("<chunk>")[1].count(sentence) == 1 for p in prompts), "the chunk holding it, as written"
