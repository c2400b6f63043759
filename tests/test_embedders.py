"""The embedding models users pick: prompts (a model's own, or collections.yml's) on both sides, and an
OpenAI-compatible endpoint (tools/embeddings_server.py: a loopback server computing real vectors
with the packaged model, its faults on demand)."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from pipelines import store
from pipelines.config import load_collections
from pipelines.embed import EmbeddingFailed, model_location
from pipelines.ingest import run_ingest
from pipelines.search import search
from pipelines.settings import DEFAULT_MODEL
from tests.conftest import EMBEDDINGS_KEY as KEY
from tests.conftest import RAGPIPE, ROOT, assert_same_chunks, chunk_state, folder_spec, ragpipe
from tests.test_service import serving

QUESTION = "does coffee raise blood pressure?"


def st_model(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_location(path), device="cpu")


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory) -> str:
    """The packaged MiniLM with e5-style prompts in its sentence-transformers config (no download)."""
    source = Path(model_location(DEFAULT_MODEL))
    target = tmp_path_factory.mktemp("models") / "minilm-prompted"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    (target / "model.safetensors").symlink_to(source / "model.safetensors")
    config = json.loads((target / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "query: ", "document": "passage: "}
    (target / "config_sentence_transformers.json").write_text(json.dumps(config))
    return str(target)


@pytest.fixture
def endpoint(api_server, monkeypatch):
    """The loopback endpoint with no faults pending, and its key in the environment."""
    from tools.embeddings_server import Faults, Seen

    api_server.faults, api_server.seen = Faults(), Seen()
    monkeypatch.setenv("RAGPIPE_TEST_EMBEDDINGS_KEY", KEY)
    yield api_server
    api_server.faults = Faults()


def api_collection(name: str, path: Path, server, **embedder) -> dict:
    # a model name of the test's own: vectors other tests stored for the same texts are not reused
    return {"name": name, "source": {"kind": "folder", "path": str(path)}, "model": f"openai:minilm-{name}",
            "chunk_tokens": 256, "embedder": {"base_url": server.base_url, "api_key_env": "RAGPIPE_TEST_EMBEDDINGS_KEY",
                                              "max_backoff_s": 2, **embedder}}


def declare(*entries: dict) -> None:
    """Write collections.yml (RAGPIPE_COLLECTIONS) as a user would."""
    Path(os.environ["RAGPIPE_COLLECTIONS"]).write_text(yaml.safe_dump({"collections": list(entries)}))


def declared(name: str):
    return load_collections(Path(os.environ["RAGPIPE_COLLECTIONS"]))[name]


def stored(conn, name: str) -> tuple[list[str], np.ndarray, list[int]]:
    """(texts, vectors, chunk ids) of a collection's chunks, in chunk id order."""
    rows = conn.execute("SELECT c.text, c.embedding, c.id FROM ragpipe.chunks c JOIN ragpipe.collections k "
                        "ON k.id = c.collection_id WHERE k.name = %s ORDER BY c.id", (name,)).fetchall()
    return [r[0] for r in rows], np.stack([np.asarray(r[1].to_numpy()) for r in rows]), [r[2] for r in rows]


def cli_vector(*args: str) -> np.ndarray:
    return np.asarray(json.loads(ragpipe("embed", *args).stdout))


def ranking(vectors: np.ndarray, ids: list[int], query: np.ndarray, k: int = 5) -> list[int]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [ids[i] for i in order]


def assert_both_sides(conn, name: str, documents, queries) -> None:
    """Stored vectors are documents(text); the query vector of `ragpipe embed -c`, `ragpipe search`
    and the service is queries(q), and the SQL ranking is the one those vectors give."""
    texts, vectors, ids = stored(conn, name)
    assert np.allclose(vectors, documents(texts), atol=1e-5), "chunks are embedded through the document side"
    query = queries([QUESTION])[0]
    assert np.allclose(cli_vector(QUESTION, "-c", name), query, atol=1e-5), "ragpipe embed -c: the query side"
    want = ranking(vectors, ids, query)
    cli = json.loads(ragpipe("search", QUESTION, "-c", name, "--mode", "semantic", "-k", "5", "--json").stdout)
    assert [h["chunk_id"] for h in cli] == want, "ragpipe search ranks by the query side's vector"
    assert [h.chunk_id for h in search(QUESTION, name, k=5, mode="semantic")] == want, "the Python API"
    from pipelines.service import create_app

    with serving(create_app()) as base:
        got = httpx.get(f"{base}/api/search", params=dict(collection=name, q=QUESTION, k=5, mode="semantic"),
                        timeout=60)
    assert got.status_code == 200, got.text
    assert [h["chunk_id"] for h in got.json()["results"]] == want, "the service ranks by the same vector"


def test_a_model_with_prompts_embeds_chunks_as_documents_and_queries_as_queries(prompted_model, corpus, name,
                                                                                conn):
    model = st_model(prompted_model)
    declare({"name": name, "source": {"kind": "folder", "path": str(corpus)}, "model": prompted_model})
    run_ingest(declared(name))

    def documents(texts):
        return model.encode_document(texts, normalize_embeddings=True)

    def queries(texts):
        return model.encode_query(texts, normalize_embeddings=True)

    plain = model.encode([QUESTION], normalize_embeddings=True)[0]
    assert float(queries([QUESTION])[0] @ plain) < 0.99, "the prompt changes the vector (the test can fail)"
    assert_both_sides(conn, name, documents, queries)


def test_prompts_in_collections_yml_apply_to_a_model_that_has_none(corpus, name, conn, embedder):
    entry = {"name": name, "source": {"kind": "folder", "path": str(corpus)},
             "prompts": {"query": "query: ", "document": "passage: "}}
    declare(entry)
    run_ingest(declared(name))
    assert_both_sides(conn, name, lambda t: embedder.encode(t, "passage: "), lambda t: embedder.encode(t, "query: "))

    declare(dict(entry, prompts={"query": "search_query: ", "document": "passage: "}))
    assert np.allclose(cli_vector(QUESTION, "-c", name), embedder.encode([QUESTION], "search_query: ")[0],
                       atol=1e-5), "a new query prompt applies at once, with no run"
    again = run_ingest(declared(name))
    assert again["chunks_embedded"] == 0 and "new_version" not in again, "the query prompt changes nothing stored"
    from pipelines.search.tuning import recall_curve

    tuned = recall_curve(conn, name, queries=1, ladder=(1000,), texts=["walnuts and sperm quality"])
    assert tuned[0].recall == 1.0, "tune measures real queries too, embedded by the query side"

    declare(dict(entry, prompts={"query": "query: ", "document": "search_document: "}))
    built = run_ingest(declared(name))["new_version"]
    assert built["promoted"] and built["chunks_embedded"] > 0, "a new document prompt builds a new version"
    texts, vectors, _ = stored(conn, name)
    assert np.allclose(vectors, embedder.encode(texts, "search_document: "), atol=1e-5)
    assert store.get_collection(conn, name).version == 2


def test_the_document_prompt_takes_its_tokens_from_the_chunk_budget(corpus, name, conn, embedder):
    prompt = "Represent this passage of a nutrition article for retrieving answers to health questions: "
    run_ingest(folder_spec(name, corpus, chunk_tokens=64, chunk_overlap=8, prompts={"document": prompt}))
    texts, _, _ = stored(conn, name)
    tokenizer = embedder.tokenizer
    longest = max(len(tokenizer(prompt + t)["input_ids"]) for t in texts)
    assert 48 < longest <= 64, f"a prompted chunk fills but never exceeds chunk_tokens (longest {longest})"


def test_an_api_model_equals_the_local_model_and_never_shows_its_key(endpoint, corpus, name, conn, embedder):
    declare(api_collection(name, corpus, endpoint, batch_size=7, concurrency=3))
    summary = run_ingest(declared(name))
    run_ingest(folder_spec(f"{name}_local", corpus))
    texts, vectors, _ = stored(conn, name)
    local_texts, local_vectors, _ = stored(conn, f"{name}_local")
    assert texts == local_texts and summary["chunks_embedded"] == len(texts) > 0
    assert np.min(np.sum(vectors * local_vectors, axis=1)) >= 0.9999, "the endpoint's vectors, normalised"
    assert endpoint.seen.authorization == {f"Bearer {KEY}"}, "the key is sent as a bearer token"
    assert max(len(b["input"]) for b in endpoint.seen.bodies) <= 7, "batched by count"
    assert store.get_collection(conn, name).model == f"openai:minilm-{name}"
    for mode in ("semantic", "hybrid"):
        api = [h.source_id for h in search(QUESTION, name, k=5, mode=mode)]
        assert api == [h.source_id for h in search(QUESTION, f"{name}_local", k=5, mode=mode)] and api
    out = ragpipe("search", QUESTION, "-c", name)
    vector = cli_vector(QUESTION, "-c", name)
    assert float(vector @ embedder.encode_queries([QUESTION])[0]) >= 0.9999, "ragpipe embed -c asks the endpoint"
    again = ragpipe("ingest", "-c", name)
    assert KEY not in out.stdout + out.stderr + again.stdout + again.stderr
    assert "walnut" in out.stdout.lower() or "coffee" in out.stdout.lower()


def test_switching_a_local_collection_to_an_api_model_is_a_new_version_the_gate_promotes(endpoint, corpus, name,
                                                                                         conn):
    coffee = sorted(p.relative_to(corpus).as_posix() for p in (corpus / "coffee").iterdir())
    local = {"name": name, "source": {"kind": "folder", "path": str(corpus)},
             "smoke_queries": [QUESTION], "eval": {"queries": [{"query": QUESTION, "expect": coffee}]}}
    declare(local)
    run_ingest(declared(name))
    before = [h.source_id for h in search(QUESTION, name, k=5, mode="hybrid")]
    declare(api_collection(name, corpus, endpoint) | {k: v for k, v in local.items() if k != "source"})
    built = run_ingest(declared(name))["new_version"]
    texts = len(set(stored(conn, name)[0]))
    assert built["promoted"] and built["chunks_embedded"] >= texts > 0, "no local vector serves the API model"
    assert store.get_collection(conn, name).model == f"openai:minilm-{name}"
    assert [h.source_id for h in search(QUESTION, name, k=5, mode="hybrid")] == before


def test_requests_are_batched_by_estimated_tokens(endpoint, corpus, name, conn):
    declare(api_collection(name, corpus, endpoint, batch_size=100, max_tokens_per_request=400, concurrency=1))
    run_ingest(declared(name))
    from pipelines.embed.api import estimate_tokens

    several = [b["input"] for b in endpoint.seen.bodies if len(b["input"]) > 1]
    assert several and all(sum(estimate_tokens(t) for t in texts) <= 400 for texts in several)
    assert max(len(b["input"]) for b in endpoint.seen.bodies) < 100, "long texts make smaller requests"


def test_429_is_retried_after_the_time_the_endpoint_asks(endpoint, corpus, name, conn):
    declare(api_collection(name, corpus, endpoint, concurrency=1))
    endpoint.faults.ahead["429"], endpoint.faults.retry_after = 2, 1.5
    run_ingest(declared(name))
    first = endpoint.seen.times[:3]
    assert first[1] - first[0] >= 1.45 and first[2] - first[1] >= 1.45, "waited as Retry-After said"
    assert len(stored(conn, name)[0]) > 0


def many_batches(tmp_path: Path, name: str, documents: int = 24) -> Path:
    """Documents whose texts no other test embeds (stored vectors of the same model would be reused)."""
    import zlib

    from tools.synthetic import write_folder

    return write_folder(tmp_path / "docs", documents, seed=zlib.crc32(name.encode()))


def test_when_retries_run_out_the_run_fails_in_one_line_and_keeps_what_it_stored(endpoint, tmp_path, name, conn):
    folder = many_batches(tmp_path, name)
    declare(api_collection(name, folder, endpoint, retries=2, concurrency=1, batch_size=256, dimensions=384)
            | {"docs_per_batch": 3})
    endpoint.faults.skip, endpoint.faults.ahead["500"] = 1, 1000  # the first batch's request, then 500s
    failed = ragpipe("ingest", "-c", name, check=False)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: the embedding endpoint http://127.0.0.1:") and "failed 3 tries: HTTP 500" in \
        lines[-1], failed.stderr
    assert KEY not in failed.stdout + failed.stderr
    kept = {r[0] for r in chunk_state(conn, name)}
    assert 0 < len(kept) < 24, "the first batch stays"
    endpoint.faults.ahead.clear()
    texts_before = endpoint.seen.texts
    rerun = run_ingest(declared(name))
    assert rerun["new"] == 24 - len(kept), "the rerun embeds only what is not stored"
    assert endpoint.seen.texts - texts_before == rerun["chunks_embedded"]
    run_ingest(folder_spec(f"{name}_ref", folder))
    got, want = chunk_state(conn, name), chunk_state(conn, f"{name}_ref")
    assert [r[:5] for r in got] == [r[:5] for r in want]


def test_an_endpoint_that_never_answers_times_out(endpoint, corpus, name, conn):
    declare(api_collection(name, corpus, endpoint, timeout_s=1, retries=1))
    endpoint.faults.ahead["hang"] = 100
    started = time.monotonic()
    with pytest.raises(EmbeddingFailed, match=r"failed 2 tries: no answer within 1 s"):
        run_ingest(declared(name))
    assert time.monotonic() - started < 30, "no hang: two tries of 1 s and a short back-off"
    assert chunk_state(conn, name) == []


@pytest.mark.parametrize("fault, reason", [("wrong_dimension", "a vector of 383 dimensions where"),
                                           ("wrong_count", "vectors for"), ("nan", "NaN"),
                                           ("garbage", "not an embeddings response")])
def test_a_bad_answer_fails_its_batch_and_writes_nothing_of_it(endpoint, tmp_path, name, conn, fault, reason):
    name = f"{name[:40]}_{fault}"
    folder = many_batches(tmp_path, name, 9)
    declare(api_collection(name, folder, endpoint, concurrency=1, batch_size=256, dimensions=384)
            | {"docs_per_batch": 3})
    endpoint.faults.skip, endpoint.faults.ahead[fault] = 1, 1
    with pytest.raises(EmbeddingFailed, match=reason):
        run_ingest(declared(name))
    first = {r[0] for r in chunk_state(conn, name)}
    assert len(first) == 3, "the first batch is stored, nothing of the failed one"
    assert store.get_collection(conn, name).model == f"openai:minilm-{name}#384", "the model id records the width"
    assert run_ingest(declared(name))["new"] == 6


def test_an_ingest_killed_mid_run_resumes_to_a_clean_runs_result(endpoint, tmp_path, name, conn):
    folder = many_batches(tmp_path, name, 30)
    declare(api_collection(name, folder, endpoint, concurrency=1, batch_size=4) | {"docs_per_batch": 2})
    endpoint.faults.delay_s = 0.15
    proc = subprocess.Popen(RAGPIPE + ["ingest", "-c", name], cwd=ROOT, env=os.environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len({r[0] for r in chunk_state(conn, name)}) < 6:
            assert proc.poll() is None and time.monotonic() < deadline, "the ingest ended before it was killed"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert 0 < len({r[0] for r in chunk_state(conn, name)}) < 30, "killed partway"
    endpoint.faults.delay_s = 0
    run_ingest(declared(name))
    declare(api_collection(f"{name}_clean", folder, endpoint))
    run_ingest(declared(f"{name}_clean"))
    assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_clean"))


def test_the_service_answers_503_when_the_endpoint_is_down(endpoint, corpus, name, conn, capfd):
    from pipelines.service import create_app

    declare(api_collection(name, corpus, endpoint, query_timeout_s=1))
    run_ingest(declared(name))
    with serving(create_app()) as base:
        ok = httpx.get(f"{base}/api/search", params=dict(collection=name, q=QUESTION, mode="hybrid"), timeout=60)
        assert ok.status_code == 200 and ok.json()["results"], ok.text
        endpoint.faults.ahead["500"] = 10
        down = httpx.get(f"{base}/api/search", params=dict(collection=name, q=QUESTION), timeout=60)
        assert down.status_code == 503 and "embedding endpoint" in down.json()["detail"], down.text
        endpoint.faults.ahead.clear()
        endpoint.faults.ahead["hang"] = 10
        started = time.monotonic()
        hung = httpx.get(f"{base}/api/search", params=dict(collection=name, q=QUESTION), timeout=60)
        assert hung.status_code == 503 and "no answer within 1 s" in hung.json()["detail"], hung.text
        assert time.monotonic() - started < 10, "a query waits query_timeout_s, twice at most"
        assert KEY not in down.text + hung.text
        assert down.headers["retry-after"] and "run again" not in down.text, "no run advice for a search"
    logged = capfd.readouterr()
    assert "Exception in ASGI application" not in logged.out + logged.err, "a 503 is no traceback (#42.20)"


def test_config_errors_name_the_key(tmp_path):
    from pipelines.config import ConfigError, parse_collection

    source = {"kind": "folder", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"embedder.concurrency: Input should be greater than or equal to 1"):
        parse_collection({"name": "x", "source": source, "model": "openai:m", "embedder": {"concurrency": 0}},
                         where="x", base=tmp_path)
    with pytest.raises(ConfigError, match=r"`embedder:` options are for an API model"):
        parse_collection({"name": "x", "source": source, "embedder": {"dimensions": 8}}, where="x", base=tmp_path)
    with pytest.raises(ConfigError, match=r"prompts.passage: unknown key"):
        parse_collection({"name": "x", "source": source, "prompts": {"passage": "p: "}}, where="x", base=tmp_path)
    spec = parse_collection({"name": "x", "source": source, "model": "openai:text-embedding-3-small",
                             "embedder": {"dimensions": 512}}, where="x", base=tmp_path)
    assert spec.model == "openai:text-embedding-3-small#512" and spec.embedder["api_key_env"] == "OPENAI_API_KEY"


def test_an_answer_that_drips_ends_at_timeout_s_for_runs_searches_and_the_service(endpoint, corpus, name, conn):
    """Defect (#42.1): one byte every 0.5 s kept every read alive; runs and searches waited 300 s."""
    from pipelines.service import create_app

    declare(api_collection(name, corpus, endpoint, timeout_s=60, query_timeout_s=1, retries=1, max_backoff_s=0.5))
    run_ingest(declared(name))  # timeout_s 60: a loaded CI machine may embed a batch in more than 2 s
    declare(api_collection(name, corpus, endpoint, timeout_s=2, query_timeout_s=1, retries=1, max_backoff_s=0.5))
    endpoint.faults.ahead["drip"] = 100
    started = time.monotonic()
    with pytest.raises(EmbeddingFailed, match=r"failed 2 tries: no answer within 1 s"):
        search(QUESTION, name, k=3, mode="semantic")
    assert time.monotonic() - started < 5, "two tries of 1 s and a back-off of 0.5 s at most"
    with serving(create_app()) as base:
        started = time.monotonic()
        got = httpx.get(f"{base}/api/search", params=dict(collection=name, q=QUESTION), timeout=60)
        assert got.status_code == 503 and "no answer within 1 s" in got.json()["detail"], got.text
        assert time.monotonic() - started < 5
    (corpus_copy := corpus.parent / f"{name}-more").mkdir(exist_ok=True)
    (corpus_copy / "new.md").write_text(f"# {name}\n\nA text that no test embedded before: {name} drips.\n")
    declare(api_collection(name, corpus_copy, endpoint, timeout_s=2, retries=1, max_backoff_s=0.5))
    started = time.monotonic()
    with pytest.raises(EmbeddingFailed, match=r"failed 2 tries: no answer within 2 s"):
        run_ingest(declared(name))
    assert time.monotonic() - started < 10, "two tries of 2 s each, whole answers included"


@pytest.mark.parametrize("header", ["authorization", "api-key"])
def test_the_key_never_shows_in_an_error_wherever_the_endpoint_puts_it(endpoint, corpus, name, header):
    """Defect (#42.2): the detail was cut to 200 characters before the key was masked, leaving a prefix."""
    import base64

    from pipelines.embed.api import ApiEmbedder, error_detail, redact

    key = "sk-proj-" + "Ab3_x-Z9" * 20
    os.environ["RAGPIPE_TEST_LONG_KEY"] = key
    try:
        embedder = ApiEmbedder("openai:m", {"base_url": endpoint.base_url, "api_key_env": "RAGPIPE_TEST_LONG_KEY",
                                            "key_header": header})
        basic = base64.b64encode(f"me:{key}".encode()).decode()
        for offset in range(0, 260):
            for form in (key, f"Bearer {key}", f"Basic {basic}", key[:100], key[-60:], json.dumps(key)):
                text = "x" * offset + form + " and more" * 30
                for shown in (error_detail(json.dumps({"error": {"message": text}}).encode(), embedder._key()),
                              error_detail(text.encode(), embedder._key())):
                    assert key[:12] not in shown and key[-12:] not in shown and basic[:16] not in shown, (offset, form)
                    assert len(shown) <= 205
        assert redact(f"https://me:{key}@host/v1 {basic}", [key]).count("***") == 2
    finally:
        del os.environ["RAGPIPE_TEST_LONG_KEY"]
    declare(api_collection(name, corpus, endpoint, retries=0))
    endpoint.faults.ahead["echo"], endpoint.faults.echo_offset = 10, 170
    failed = ragpipe("ingest", "-c", name, check=False)
    assert failed.returncode == 1 and "HTTP 401" in failed.stderr, failed.stderr
    assert KEY[:8] not in failed.stdout + failed.stderr and "Traceback" not in failed.stderr


def test_a_base_url_with_credentials_is_refused_and_never_stored(tmp_path):
    """Defect (#42.3): https://user:password@host was stored in collections.settings, readable by readers."""
    from pipelines.config import ConfigError, parse_collection

    source = {"kind": "folder", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"embedder.base_url: .*must not carry credentials.*api_key_env") as err:
        parse_collection({"name": "x", "source": source, "model": "openai:m",
                          "embedder": {"base_url": "https://me:s3cret-pw@host/v1"}}, where="x", base=tmp_path)
    assert "s3cret-pw" not in str(err.value)


def test_an_unreadable_retry_after_is_treated_as_absent(endpoint, corpus, name, conn):
    """Defect (#42.4): `Retry-After: soon` crashed with a ValueError traceback and no retry."""
    declare(api_collection(name, corpus, endpoint, concurrency=1, max_backoff_s=0.5))
    endpoint.faults.ahead["429"], endpoint.faults.retry_after = 2, "soon"
    run_ingest(declared(name))
    assert endpoint.seen.answered > 0 and len(stored(conn, name)[0]) > 0


def test_an_answer_larger_than_its_batch_can_be_fails_the_batch_in_one_line(endpoint, tmp_path, name, conn):
    """Defect (#42.5): a 300 MB answer was read whole (1.7 GB peak)."""
    folder = many_batches(tmp_path, name, 3)
    declare(api_collection(name, folder, endpoint, dimensions=384, retries=0))
    endpoint.faults.ahead["huge"] = 1
    failed = ragpipe("ingest", "-c", name, check=False)
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "answered more than 1 MiB for" in failed.stderr, failed.stderr
    assert chunk_state(conn, name) == []


def test_a_width_that_changed_since_the_last_run_names_the_setting(endpoint, tmp_path, name, conn):
    """Defect (#42.6): pgvector's `expected 384 dimensions, not 383` named neither endpoint nor setting."""
    folder = many_batches(tmp_path, name, 2)
    declare(api_collection(name, folder, endpoint))
    run_ingest(declared(name))
    (folder / "later.md").write_text(f"# later\n\n{name}: a document added after the endpoint changed.\n")
    endpoint.faults.ahead["wrong_dimension"] = 10
    with pytest.raises(EmbeddingFailed, match=r"a vector of 383 dimensions where the collection stores 384 .*"
                                              r"embedder.dimensions"):
        run_ingest(declared(name))
