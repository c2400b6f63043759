"""Collection versions: a model or chunking change is built beside the active version, scored,
promoted atomically behind the same name, and can be rolled back; embeddings are reused by chunk text."""

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgvector.psycopg import register_vector

from pipelines import store
from pipelines.ingest import run_ingest
from tests.conftest import RAGPIPE, assert_same_chunks, chunk_state, folder_spec, ragpipe
from tools.synthetic import write_folder

pytestmark = pytest.mark.slow
QUERY = "Does coffee raise blood pressure?"


def states(conn, name: str) -> dict[int, str]:
    return dict(conn.execute("SELECT version, state FROM ragpipe.collections WHERE family = %s", (name,)).fetchall())


def top(conn, name: str, embedder, text: str = QUERY, k: int = 10) -> list[tuple]:
    return conn.execute("SELECT chunk_id, source_id, text, score FROM ragpipe.hybrid_search(%s, %s, %s, %s)",
                        (name, text, embedder.encode([text])[0], k)).fetchall()


def saved_model(tmp_path: Path, scramble: bool = False) -> str:
    """A local copy of the default model (another model id), with its weights scrambled if asked."""
    import torch

    from pipelines.embed import get_embedder

    path = tmp_path / ("scrambled-model" if scramble else "model-copy")
    model = get_embedder("all-MiniLM-L6-v2").model
    if scramble:
        import copy

        model = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    model.save(str(path))
    return str(path)


def test_overlap_change_builds_a_version_embedding_only_new_chunk_texts(tmp_path, name, conn, embedder):
    corpus = write_folder(tmp_path / "docs", 30, seed=101)  # texts no other test embeds
    first = run_ingest(folder_spec(name, corpus, chunk_tokens=64, chunk_overlap=16))
    before = top(conn, name, embedder)
    summary = run_ingest(folder_spec(name, corpus, chunk_tokens=64, chunk_overlap=24))
    built = summary["new_version"]
    assert summary["status"] == "succeeded" and summary["chunks_embedded"] == 0, "the active version was in step"
    assert built["promoted"] and built["version"] == 2 and states(conn, name) == {1: "previous", 2: "active"}
    old_hashes, new_hashes = (
        {r[0] for r in conn.execute("SELECT c.content_hash FROM ragpipe.chunks c JOIN ragpipe.collections k "
                                    "ON k.id = c.collection_id WHERE k.family = %s AND k.version = %s",
                                    (name, v)).fetchall()} for v in (1, 2))
    assert built["chunks_embedded"] == len(new_hashes - old_hashes), "only chunk texts never embedded before"
    assert 0 < built["chunks_embedded"] < first["chunks_embedded"] and built["chunks_reused"] > 0
    row = conn.execute("SELECT chunk_tokens, chunk_overlap, version FROM ragpipe.collections WHERE name = %s",
                       (name,)).fetchone()
    assert row == (64, 24, 2), "the collection's name now reads version 2"
    after = top(conn, name, embedder)
    assert after and {r[0] for r in after}.isdisjoint({r[0] for r in before}), "new chunks serve"
    again = run_ingest(folder_spec(name, corpus, chunk_tokens=64, chunk_overlap=24))
    assert "new_version" not in again and again["chunks_embedded"] == 0, "a plain re-run is a plain re-run"


def test_searches_during_build_and_swap_never_fail_come_back_empty_or_mix(tmp_path, name, db_url, embedder):
    folder = write_folder(tmp_path / "docs", 150, seed=11)
    run_ingest(folder_spec(name, folder, chunk_tokens=96))
    vector = embedder.encode(["measurements of the study"])[0]
    seen: list[tuple[int, ...]] = []
    errors: list[str] = []
    done = threading.Event()

    def search_loop() -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            register_vector(c)
            while not done.is_set():
                try:
                    ids = [r[0] for r in c.execute("SELECT chunk_id FROM ragpipe.hybrid_search(%s, %s, %s, 10)",
                                                   (name, "measurements of the study", vector)).fetchall()]
                    owners = c.execute("SELECT DISTINCT collection_id FROM ragpipe.chunks WHERE id = ANY(%s)",
                                       (ids,)).fetchall()
                    seen.append(tuple(o[0] for o in owners))
                    if len(ids) < 10:
                        errors.append(f"{len(ids)} rows")
                except psycopg.Error as exc:
                    errors.append(str(exc))

    loop = threading.Thread(target=search_loop)
    loop.start()
    try:
        summary = run_ingest(folder_spec(name, folder, chunk_tokens=64, chunk_overlap=8))
    finally:
        time.sleep(0.5)
        done.set()
        loop.join(timeout=60)
    assert summary["new_version"]["promoted"]
    assert not errors, errors[:3]
    assert all(len(owners) == 1 for owners in seen), "every search read one version"
    assert len({owners[0] for owners in seen}) == 2, "searches ran before and after the swap"


def test_kill_9_during_a_version_build_then_rerun_equals_a_clean_build(tmp_path, name, conn):
    folder = write_folder(tmp_path / "docs", 200, seed=12)
    ragpipe("ingest", str(folder), "-c", name, "--chunk-tokens", "128")
    proc = subprocess.Popen([*RAGPIPE, "ingest", str(folder), "-c", name, "--chunk-tokens", "96", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        built = conn.execute("SELECT count(*) FROM ragpipe.documents d JOIN ragpipe.collections k ON "
                             "k.id = d.collection_id WHERE k.family = %s AND k.version = 2", (name,)).fetchone()[0]
        if built >= 40:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert states(conn, name) == {1: "active", 2: "building"}, "killed mid-build: the active version still serves"
    status = ragpipe("status", "-c", name).stdout
    assert "building version 2 (" in status and "/200 documents; version 1 serves searches" in status, status
    final = json.loads(ragpipe("ingest", str(folder), "-c", name, "--chunk-tokens", "96", "--json").stdout)
    resumed = final["new_version"]
    assert resumed["promoted"] and resumed["version"] == 2, "the rerun resumed version 2"
    assert 0 < resumed["new"] < 200, "documents built before the kill were kept"
    run_ingest(folder_spec(f"{name}_ref", folder, chunk_tokens=96))
    assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_ref"))


def test_rollback_brings_the_previous_results_back_exactly(tmp_path, name, conn, embedder):
    corpus = write_folder(tmp_path / "docs", 30, seed=102)  # texts no other test embeds
    run_ingest(folder_spec(name, corpus, chunk_tokens=128))
    before = top(conn, name, embedder)
    run_ingest(folder_spec(name, corpus, chunk_tokens=48, chunk_overlap=8))
    assert top(conn, name, embedder) != before
    listing = ragpipe("versions", name).stdout
    assert "previous" in listing and "active" in listing, listing
    ragpipe("rollback", name)
    assert top(conn, name, embedder) == before
    assert states(conn, name) == {1: "active", 2: "rejected"}
    later = run_ingest(folder_spec(name, corpus, chunk_tokens=48, chunk_overlap=8))
    assert later["new_version"]["promoted"] is False, "a rolled-back version is not promoted again on its own"
    ragpipe("promote", name, "2")
    assert states(conn, name) == {1: "previous", 2: "active"}
    only_v1 = {r[0] for r in conn.execute(
        "SELECT c.content_hash FROM ragpipe.chunks c JOIN ragpipe.collections k ON k.id = c.collection_id "
        "WHERE k.family = %s AND k.version = 1 EXCEPT SELECT content_hash FROM ragpipe.chunks c "
        "JOIN ragpipe.collections k ON k.id = c.collection_id WHERE k.family <> %s OR k.version <> 1",
        (name, name)).fetchall()}
    ragpipe("prune", name)
    assert states(conn, name) == {2: "active"}
    cached = conn.execute("SELECT count(*) FROM ragpipe.embedding_cache WHERE content_hash = ANY(%s)",
                          (list(only_v1),)).fetchone()[0]
    assert only_v1 and cached == len(only_v1), "the pruned version's vectors went to the embedding cache"
    back = run_ingest(folder_spec(name, corpus, chunk_tokens=128))["new_version"]
    assert back["promoted"] and back["version"] == 3 and back["chunks_embedded"] == 0, "all from the cache"
    assert [r[1:] for r in top(conn, name, embedder)] == [r[1:] for r in before], "same results, new chunk ids"
    assert "kept 0" in ragpipe("cache", "prune", "--max-rows", "0").stdout
    assert conn.execute("SELECT count(*) FROM ragpipe.embedding_cache").fetchone()[0] == 0


def test_a_model_that_scores_worse_is_not_promoted(corpus, name, conn, embedder, tmp_path):
    queries = [{"query": "caffeinated drinks and blood vessels",
                "expect": ["coffee/acute-effects-of-coffee-on-endothelial-function-in-healthy-s.md"]},
               {"query": "a juice that helps people sleep",
                "expect": ["sleep/effect-of-tart-cherry-juice-prunus-cerasus-on-melatonin-leve.txt"]},
               {"query": "allergic reaction hours after eating beef",
                "expect": ["red-meat/delayed-anaphylaxis-angioedema-or-urticaria-after-consumptio.txt",
                           "red-meat/delayed-anaphylaxis-to-red-meat-in-patients-with-ige-specifi.docx"]}]
    spec = dict(eval={"queries": queries, "mode": "semantic", "k": 3}, smoke_queries=["coffee"])
    run_ingest(folder_spec(name, corpus, **spec))
    summary = run_ingest(folder_spec(name, corpus, model=saved_model(tmp_path, scramble=True), **spec))
    verdict = summary["new_version"]["evaluation"]
    assert summary["new_version"]["state"] == "rejected" and not verdict["passed"]
    assert verdict["metric"] == "hit_rate@3" and verdict["candidate"] < verdict["active"], verdict
    assert states(conn, name) == {1: "active", 2: "rejected"}
    forced = ragpipe("promote", name, "2", "--force").stdout
    assert "promoted" in forced and states(conn, name)[2] == "active"


def test_a_model_switch_keeps_row_level_security(tmp_path, name, db_url, conn, embedder):
    from pipelines.config import parse_collection
    from tests.conftest import CORPUS

    rows = [json.loads(line) for line in (CORPUS / "records.jsonl").read_text().splitlines()]
    for row in rows:
        row["tenant"] = "acme" if row["topic"] in ("milk", "eggs") else "globex"
    table = tmp_path / "records.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def spec(**kw):
        return parse_collection(dict({"name": name, "source": {"kind": "tabular", "path": str(table),
                                                                 "title_column": "title"}}, **kw),
                                where=name, base=tmp_path)

    run_ingest(spec())
    switched = run_ingest(spec(model=saved_model(tmp_path)))
    assert switched["new_version"]["promoted"]
    conn.execute("DROP ROLE IF EXISTS acme_v")
    conn.execute("CREATE ROLE acme_v LOGIN PASSWORD 'acme-pass' NOSUPERUSER NOBYPASSRLS")
    conn.execute("GRANT CONNECT ON DATABASE postgres TO acme_v")
    ragpipe("db", "grant-tenant", "acme_v", "acme")
    acme_docs = {r["id"] for r in rows if r["tenant"] == "acme"}
    with psycopg.connect(psycopg.conninfo.make_conninfo(db_url, user="acme_v", password="acme-pass"),
                         autocommit=True) as acme:
        register_vector(acme)
        query = embedder.encode(["Does flaxseed lower cholesterol?"])[0]
        hits = acme.execute("SELECT source_id FROM ragpipe.tenant_search(%s, %s, 100)", (name, query)).fetchall()
        assert hits and {h[0] for h in hits} == acme_docs, "the new version's rows obey the tenant policy"
        version = store.get_collection(conn, name).version
        assert version == 2
        pinned = acme.execute("SELECT count(*) FROM ragpipe.tenant_search(%s, %s, 100)",
                              (f"{name}@v1", query)).fetchone()[0]
        assert pinned == len(hits), "the previous version too"


def test_a_beir_eval_set_scores_both_versions_by_ndcg(corpus, name, tmp_path):
    evalset = tmp_path / "eval"
    (evalset / "qrels").mkdir(parents=True)
    asked = {"q1": ("coffee and the function of blood vessels",
                    "coffee/acute-effects-of-coffee-on-endothelial-function-in-healthy-s.md"),
             "q2": ("tart cherry juice and melatonin",
                    "sleep/effect-of-tart-cherry-juice-prunus-cerasus-on-melatonin-leve.txt")}
    (evalset / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                   for q, (t, _) in asked.items()))
    (evalset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{doc}\t1\n" for q, (_, doc) in asked.items()))
    run_ingest(folder_spec(name, corpus, eval={"path": str(evalset)}))
    built = run_ingest(folder_spec(name, corpus, chunk_tokens=128, eval={"path": str(evalset)}))["new_version"]
    verdict = built["evaluation"]
    assert verdict["metric"] == "ndcg@10" and 0.5 < verdict["active"] <= 1 and 0.5 < verdict["candidate"] <= 1
    assert built["promoted"] == (verdict["drop"] <= 0.01)


def test_an_eval_set_that_judges_no_document_of_the_collection_is_not_a_pass(corpus, name, tmp_path):
    """Defect: qrels naming no known document gave `ndcg@10 0.0000 against 0.0000` and promoted."""
    evalset = tmp_path / "eval"
    (evalset / "qrels").mkdir(parents=True)
    (evalset / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "coffee and blood vessels"}) + "\n")
    (evalset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tMED-10\t1\n")
    run_ingest(folder_spec(name, corpus, eval={"path": str(evalset)}))
    built = run_ingest(folder_spec(name, corpus, chunk_tokens=128, eval={"path": str(evalset)}))["new_version"]
    assert built["state"] == "rejected" and not built["promoted"], built
    assert "none of the 1 documents the eval set judges is in the collection" in built["evaluation"]["reason"]
