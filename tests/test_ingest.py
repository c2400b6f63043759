"""End to end against the embedded PostgreSQL and the real model: ingest, search, re-runs, bad input."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from pipelines import store
from pipelines.chunking import Chunk
from pipelines.config import parse_collection
from pipelines.ingest import run_ingest
from pipelines.search import search
from pipelines.store.database import connect
from tests.conftest import CORPUS, chunk_state, folder_spec, hnsw_index, load_random_collection, run_failures

QUESTIONS = {
    "Does drinking coffee affect the function of blood vessels?": "coffee/",
    "Can walnuts improve sperm quality?": "nuts/walnuts",
    "allergic reaction hours after eating beef": "red-meat/",
    "tart cherry juice and melatonin": "sleep/effect-of-tart-cherry",
    "curcumin and Alzheimer's dementia": "turmeric/effects-of-turmeric",
}




def test_ingest_then_search_finds_the_right_documents(corpus, name, conn):
    summary = run_ingest(folder_spec(name, corpus))
    assert summary["status"] == "succeeded"
    assert summary["listed"] == summary["new"] == 30 and summary["failed"] == 0
    assert summary["chunks_embedded"] + summary["chunks_reused"] > 30
    for question, expected in QUESTIONS.items():
        hits = search(question, collection=name, k=3)
        assert hits[0].source_id.startswith(expected), (question, [h.source_id for h in hits])
        assert hits[0].score > hits[-1].score - 1e-9
    docs = conn.execute("SELECT count(*), count(*) FILTER (WHERE chunk_count > 0) FROM ragpipe.documents d "
                        "JOIN ragpipe.collections k ON k.id = d.collection_id WHERE k.name = %s",
                        (name,)).fetchone()
    assert docs == (30, 30)


def test_chunks_keep_offsets_headings_and_token_counts(corpus, name, conn, embedder):
    run_ingest(folder_spec(name, corpus, chunk_tokens=128, chunk_overlap=16))
    rows = conn.execute(
        "SELECT d.source_id, c.text, c.char_start, c.char_end, c.token_count, c.heading_path "
        "FROM ragpipe.chunks c JOIN ragpipe.documents d ON d.id = c.document_id "
        "JOIN ragpipe.collections k ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchall()
    assert rows and max(r[4] for r in rows) <= 128
    md = [r for r in rows if r[0].endswith(".md")]
    assert any("Findings" in r[5] for r in md), "markdown chunks carry their heading path"
    from pipelines.extract import extract

    source_id, text, start, end, *_ = md[0]
    full = extract((corpus / source_id).read_bytes(), ".md").text
    assert full[start:end] == text


def test_rerun_without_changes_embeds_nothing(corpus, name, conn):
    spec = folder_spec(name, corpus)
    run_ingest(spec)
    before = chunk_state(conn, name)
    again = run_ingest(spec)
    assert (again["new"], again["changed"], again["deleted"], again["chunks_embedded"]) == (0, 0, 0, 0)
    assert again["unchanged"] == 30
    assert chunk_state(conn, name) == before


def test_small_batches_are_embedded_together_and_a_shared_text_once(name, conn, tmp_path, monkeypatch, embedder):
    """docs_per_batch 4 makes 10 batches; an in-process run encodes the first and the last alone and
    gathers the 8 between into one call (fewer than EMBED_AT_LEAST texts); a text new to two of
    those batches is embedded and counted once."""
    from pipelines.embed.local import LocalEmbedder
    from pipelines.sync.encode import EMBED_AT_LEAST
    from tools.synthetic import write_folder

    folder = write_folder(tmp_path / "docs", 39, seed=31)  # texts no other test embeds
    shutil.copy(folder / "part0000" / "doc000010.md", folder / "part0000" / "doc000011a.md")  # batch 3 → 4
    calls: list[int] = []
    encode = LocalEmbedder.encode_documents
    monkeypatch.setattr(LocalEmbedder, "encode_documents",
                        lambda self, texts: calls.append(len(texts)) or encode(self, texts))
    reported: list[tuple[int, int]] = []
    summary = run_ingest(folder_spec(name, folder, docs_per_batch=4, duplicates="keep"),
                         progress=lambda done, total: reported.append((done, total)))
    assert reported == [(4 * i, 40) for i in range(1, 11)], "progress after each batch's commit"
    distinct, stored = conn.execute(
        "SELECT count(DISTINCT c.content_hash), count(*) FROM ragpipe.chunks c "
        "JOIN ragpipe.collections k ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchone()
    assert summary["new"] == 40 and distinct < stored < EMBED_AT_LEAST
    assert len(calls) == 3 and sum(calls) == distinct and summary["chunks_embedded"] == distinct
    first = conn.execute(  # the first batch: the first 4 files of the listing
        "SELECT count(DISTINCT c.content_hash) FROM ragpipe.chunks c JOIN ragpipe.documents d ON d.id = c.document_id "
        "JOIN ragpipe.collections k ON k.id = c.collection_id WHERE k.name = %s AND d.source_id ~ 'doc00000[0-3]'",
        (name,)).fetchone()[0]
    assert calls[0] == first > 0
    assert summary["chunks_embedded"] + summary["chunks_reused"] == stored
    rows = conn.execute("SELECT c.text, c.embedding FROM ragpipe.chunks c JOIN ragpipe.collections k "
                        "ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchall()
    again = encode(embedder, [text for text, _ in rows])  # each vector is its own text's
    assert np.min(np.sum(again * np.stack([v.to_numpy() for _, v in rows]), axis=1)) > 0.9999


def test_edit_touch_delete_and_full_refresh(corpus, name, conn):
    spec = folder_spec(name, corpus)
    run_ingest(spec)
    edited = next(corpus.glob("coffee/*.md"))
    edited.write_text(edited.read_text() + "\n\n## Addendum\n\nA brand new paragraph about decaffeinated espresso.\n")
    touched = next(corpus.glob("soy/*.docx"))
    os.utime(touched, (time.time() + 5, time.time() + 5))
    deleted = next(corpus.glob("garlic/*.txt"))
    deleted.unlink()

    summary = run_ingest(spec)
    assert summary["changed"] == 1, "the edited file; the touched one has identical content"
    assert summary["unchanged"] == 28 and summary["deleted"] == 1
    assert 0 < summary["chunks_embedded"] <= 2, "only the edited document's new chunks are embedded"
    assert summary["chunks_reused"] >= 1
    ids = {r[0] for r in chunk_state(conn, name)}
    assert deleted.relative_to(corpus).as_posix() not in ids
    hits = search("decaffeinated espresso", collection=name, k=1)
    assert hits[0].source_id == edited.relative_to(corpus).as_posix()

    refreshed = run_ingest(spec, full_refresh=True)
    assert refreshed["changed"] == 29 and refreshed["chunks_embedded"] == len(chunk_state(conn, name))


def test_a_model_change_builds_a_new_version(corpus, name, conn, tmp_path):
    run_ingest(folder_spec(name, corpus))
    other = tmp_path / "other-model"
    from pipelines.embed import get_embedder

    get_embedder("all-MiniLM-L6-v2").model.save(str(other))
    built = run_ingest(folder_spec(name, corpus, model=str(other)))["new_version"]
    texts = conn.execute("SELECT count(DISTINCT c.content_hash) FROM ragpipe.chunks c JOIN ragpipe.collections k "
                         "ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchone()[0]
    assert built["promoted"] and built["chunks_embedded"] == texts > 0, "another model embeds every chunk text"
    assert store.get_collection(conn, name).model == str(other)


BAD_FILES = {
    "broken.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj trailer <<>>\n%%EOF",
    "binary.txt": bytes(range(256)) * 40,
    "empty.md": b"",
    "blank.txt": b"   \n\n  ",
    "fake.docx": b"this is not a zip archive",
}


def test_bad_files_are_recorded_and_the_rest_is_loaded(corpus, name, conn):
    spec = folder_spec(name, corpus)
    run_ingest(spec)
    victim = next(corpus.glob("vitamin-d/*.pdf"))
    victim_id = victim.relative_to(corpus).as_posix()
    before = [r for r in chunk_state(conn, name) if r[0] == victim_id]
    for file_name, data in BAD_FILES.items():
        (corpus / file_name).write_bytes(data)
    (corpus / "nul.txt").write_bytes(b"Lentils are\x00 legumes rich in protein and fibre.")
    victim.write_bytes(victim.read_bytes()[:300])  # now truncated: must keep its old version

    summary = run_ingest(spec)
    assert summary["status"] == "succeeded"
    assert summary["failed"] == len(BAD_FILES) + 1 and summary["new"] == 1
    failures = dict(conn.execute(
        "SELECT f.source_id, f.stage || ': ' || f.error FROM ragpipe.ingest_failures f WHERE run_id = %s",
        (summary["id"],)).fetchall())
    assert set(failures) == set(BAD_FILES) | {victim_id}
    assert "binary" in failures["binary.txt"] and "no extractable text" in failures["empty.md"]
    assert [r for r in chunk_state(conn, name) if r[0] == victim_id] == before, "old version still searchable"
    assert search("legumes rich in protein", collection=name, k=1)[0].source_id == "nul.txt"


def test_tabular_rows_become_documents_with_metadata(name, conn, tmp_path):
    spec = parse_collection({"name": name, "source": {"kind": "tabular", "path": str(CORPUS / "records.jsonl"),
                                                      "title_column": "title"}}, where=name, base=tmp_path)
    summary = run_ingest(spec)
    assert summary["new"] == 20
    hits = search("Is milk consumption linked to acne?", collection=name, k=10, filter={"topic": "milk"})
    assert hits and all(h.metadata["topic"] == "milk" for h in hits)
    assert hits[0].title and "url" in hits[0].metadata
    # a CSV and a Parquet version of the same rows load the same documents
    import pandas as pd

    frame = pd.read_json(CORPUS / "records.jsonl", lines=True)
    for suffix, writer in ((".csv", frame.to_csv), (".parquet", frame.to_parquet)):
        path = tmp_path / f"records{suffix}"
        writer(path, index=False) if suffix == ".csv" else writer(path)
        other = parse_collection({"name": f"{name}{suffix[1:]}", "source": {
            "kind": "tabular", "path": str(path), "title_column": "title"}}, where=name, base=tmp_path)
        assert run_ingest(other)["new"] == 20
    row = conn.execute("SELECT metadata FROM ragpipe.documents d JOIN ragpipe.collections k ON "
                       "k.id = d.collection_id WHERE k.name = %s AND source_id = 'MED-118'", (f"{name}csv",)).fetchone()
    assert row[0]["topic"] == "milk"


def test_a_tables_title_is_embedded_and_searched_with_its_text(name, conn, tmp_path):
    path = tmp_path / "titled.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "title": "Quinoa harvest yields", "text": "Farmers in the Andes reported the season's figures."},
        {"id": "b", "title": "Coffee and sleep", "text": "Evening caffeine delays the onset of sleep."}]) + "\n")

    def load(coll: str, **source) -> None:
        run_ingest(parse_collection({"name": coll, "source": {"kind": "tabular", "path": str(path),
                                                              "title_column": "title", **source}},
                                    where=coll, base=tmp_path))

    load(name)
    hits = search("quinoa", collection=name, k=2, mode="keyword")
    assert [h.source_id for h in hits] == ["a"] and hits[0].title == "Quinoa harvest yields"
    assert hits[0].text.startswith("Quinoa harvest yields\n\nFarmers"), "the title is the text's first paragraph"
    load(f"{name}_plain", title_in_text=False)
    assert search("quinoa", collection=f"{name}_plain", k=2, mode="keyword") == []




def test_search_is_served_by_the_hnsw_index(name, conn):
    coll = load_random_collection(conn, name, documents=1000, chunks_per_doc=5)
    index = hnsw_index(conn, coll.id).removeprefix("ragpipe.")

    def scans() -> int:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                            (index,)).fetchone()[0]

    before = scans()
    hits = search("coffee and mortality", collection=name, k=5)
    assert len(hits) == 5
    time.sleep(0.2)
    assert scans() > before, "semantic_search must use the collection's HNSW index"
    # a selective filter (2% of the documents) still returns k rows: iterative index scans
    hits = search("anything", collection=name, k=10, filter={"group": 7})
    assert len(hits) == 10 and all(h.metadata == {"group": 7} for h in hits)
    # the "exact" query (recall ground truth of eval and bench) is brute force: it ranks as numpy
    # does and never touches the index
    from pipelines.store.sqlfiles import query

    ids, vectors = zip(*conn.execute("SELECT id, embedding FROM ragpipe.chunks WHERE collection_id = %s",
                                     (coll.id,)).fetchall(), strict=True)
    matrix = np.stack([v.to_numpy() for v in vectors])
    probe = matrix[123] + 0.5 * matrix[456]
    want = [ids[i] for i in np.argsort(-(matrix @ probe) / np.linalg.norm(probe))[:10]]
    before = scans()
    rows = conn.execute(query("search", "exact"), dict(collection=name, embedding=probe, k=10, filter=None)).fetchall()
    time.sleep(0.2)
    assert [r[0] for r in rows] == want and scans() == before


def test_each_collection_is_its_own_partition_indexed_alone_and_dropped_with_it(name, conn, db_url):
    other = load_random_collection(conn, f"{name}_other", documents=30, chunks_per_doc=2)
    with connect(db_url) as reader:  # a search in progress: creating a collection must not wait for it
        reader.execute("SELECT count(*) FROM ragpipe.chunks WHERE collection_id = %s", (other.id,))
        conn.execute("SET lock_timeout = '3s'")
        small = load_random_collection(conn, f"{name}_small", documents=20, chunks_per_doc=3)
        conn.execute("RESET lock_timeout")
    partition = f"ragpipe.chunks_c{small.id}"

    def partition_of(index: str) -> str | None:
        row = conn.execute("SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = to_regclass(%s)",
                           (index,)).fetchone()
        return row[0] if row else None

    assert conn.execute(f"SELECT count(*), min(collection_id), max(collection_id) FROM {partition}").fetchone() == (
        60, small.id, small.id)
    assert partition_of(hnsw_index(conn, small.id)) == partition, "the HNSW graph covers its partition only"
    assert conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (partition,)).fetchone()[0] == 60
    conn.execute("DELETE FROM ragpipe.collections WHERE id = %s", (small.id,))
    assert conn.execute("SELECT to_regclass(%s)", (partition,)).fetchone()[0] is None
    assert partition_of(hnsw_index(conn, other.id)) == f"ragpipe.chunks_c{other.id}"
    assert conn.execute("SELECT count(*) FROM ragpipe.chunks WHERE collection_id = %s", (other.id,)).fetchone()[0] == 60
    assert len(conn.execute("SELECT * FROM ragpipe.semantic_search(%s, %s::vector, 5)",
                            (f"{name}_other", str([1.0] * 384))).fetchall()) == 5


def test_filter_and_unknown_collection(corpus, name):
    run_ingest(folder_spec(name, corpus))
    hits = search("food", collection=name, k=50, filter={"path": "soy/" + next(corpus.glob("soy/*.pdf")).name})
    assert hits and {h.source_id for h in hits} == {"soy/" + next(corpus.glob("soy/*.pdf")).name}
    from pipelines.search import UnknownCollection

    with pytest.raises(UnknownCollection):
        search("x", collection="no-such-collection")


def test_dry_run_and_limit(corpus, name):
    spec = folder_spec(name, corpus)
    dry = run_ingest(spec, dry_run=True)
    assert dry["status"] == "dry_run" and dry["would_process"] == 30 and dry["chunks_embedded"] == 0
    part = run_ingest(spec, limit=5)
    assert part["new"] == 5
    rest = run_ingest(spec)
    assert rest["new"] == 25 and rest["unchanged"] == 5




def test_collections_created_at_the_same_time_take_turns_instead_of_deadlocking(name, db_url):
    """Under a real scheduler several DAGs create their collections at once; each creation attaches a
    chunks partition, and two attaches at once deadlocked (found by `make smoke`)."""
    import threading

    from pipelines.settings import DEFAULT_MODEL

    names = [f"{name}_{i}" for i in range(6)]
    start, errors = threading.Barrier(len(names)), []

    def create(collection: str) -> None:
        try:
            with connect(db_url, autocommit=True) as c:
                start.wait(30)
                store.ensure_collection(c, collection, DEFAULT_MODEL, 384, 256, 32, {})
        except Exception as exc:  # collected and asserted below
            errors.append(f"{collection}: {exc}")

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with connect(db_url, autocommit=True) as c:
        partitions = c.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ragpipe.chunks'::regclass AND inhrelid IN "
            "(SELECT ('ragpipe.' || ragpipe.chunk_partition(id))::regclass FROM ragpipe.collections "
            "WHERE name = ANY(%s))", (names,)).fetchone()[0]
    assert partitions == len(names)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_nul_character_in_metadata_or_title_costs_nothing(name, conn, tmp_path, suffix):
    """Defect: one NUL in any column of one row failed the whole run (PostgreSQL text and jsonb refuse it)."""
    import pandas as pd

    path = tmp_path / f"n{suffix}"
    rows = [{"id": "1", "text": "ok then", "title": "t\x00x", "note": "a\x00b"},
            {"id": "2", "text": "fine too", "title": "two", "note": "plain"}]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame = pd.DataFrame(rows)
        frame["note"] = [n.encode() for n in frame["note"]]  # a binary column holding \x00
        frame.to_parquet(path)
    spec = parse_collection({"name": name, "source": {"kind": "tabular", "path": str(path), "title_column": "title"}},
                            where=name, base=tmp_path)
    summary = run_ingest(spec)
    assert (summary["status"], summary["new"], summary["failed"]) == ("succeeded", 2, 0)
    titles = dict(conn.execute("SELECT d.source_id, d.title FROM ragpipe.documents d JOIN ragpipe.collections k "
                               "ON k.id = d.collection_id WHERE k.name = %s", (name,)).fetchall())
    assert titles == {"1": "tx", "2": "two"}
    assert run_ingest(spec)["unchanged"] == 2, "a re-run finds both rows unchanged"


def test_table_ids_and_values_are_read_as_written_and_skipped_rows_are_recorded(name, conn, tmp_path):
    """Defect: type inference merged "007" and "7", re-keyed every row when one id was not a number,
    turned "NA" into null, stored True or [1, 2] as ids, and dropped null and repeated ids silently."""
    csv = tmp_path / "t.csv"
    csv.write_text("id,text,country\n007,first text,NA\n7,second text,None\n,no id here,x\n7,a repeat,y\n")
    spec = parse_collection({"name": name, "source": {"kind": "tabular", "path": str(csv)}}, where=name, base=tmp_path)
    summary = run_ingest(spec)
    assert (summary["listed"], summary["new"], summary["failed"]) == (2, 2, 2)
    failures = run_failures(conn, summary["id"])
    assert failures == {"t.csv row 3": "no id (column 'id' is empty)",
                        "t.csv row 4": "id '7' repeats row 2; only the first is loaded"}
    docs = dict(conn.execute("SELECT d.source_id, d.metadata->>'country' FROM ragpipe.documents d "
                             "JOIN ragpipe.collections k ON k.id = d.collection_id WHERE k.name = %s",
                             (name,)).fetchall())
    assert docs == {"007": "NA", "7": "None"}
    assert [h.source_id for h in search("first", collection=name, k=5, filter={"country": "NA"})] == ["007"]
    with csv.open("a") as f:
        f.write("abc,a non-numeric id,z\n")
    again = run_ingest(spec)
    assert (again["new"], again["deleted"], again["unchanged"]) == (1, 0, 2), "adding one id re-keys nothing"

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"id": "1", "text": "string one"}\n{"id": 1, "text": "number one"}\n'
                     '{"id": true, "text": "boolean"}\n{"id": [1, 2], "text": "list"}\nnot json\n')
    spec2 = parse_collection({"name": f"{name}_j", "source": {"kind": "tabular", "path": str(jsonl)}},
                             where=name, base=tmp_path)
    summary = run_ingest(spec2)
    assert (summary["new"], summary["failed"]) == (1, 4)
    reasons = sorted(r for (r,) in conn.execute("SELECT error FROM ragpipe.ingest_failures WHERE run_id = %s",
                                                 (summary["id"],)))
    assert reasons == sorted(["id '1' repeats row 1; only the first is loaded", "id True is a bool; ids must be "
                              "strings or integers", "id [1, 2] is a list; ids must be strings or integers",
                              "not valid JSON (Expecting value)"])


def test_chunk_context_embeds_the_title_and_headings_but_stores_the_plain_text(corpus, name, conn, embedder):
    from pipelines.chunking import with_context

    run_ingest(folder_spec(name, corpus, chunk_tokens=128, chunk_context=True))
    row = conn.execute(
        "SELECT d.title, c.text, c.heading_path, c.embedding, c.content_hash FROM ragpipe.chunks c "
        "JOIN ragpipe.documents d ON d.id = c.document_id JOIN ragpipe.collections k ON k.id = c.collection_id "
        "WHERE k.name = %s AND d.source_id LIKE 'coffee/%%.md' AND c.ordinal = 1", (name,)).fetchone()
    title, text, headings, embedding, content_hash = row
    assert title and not text.startswith(title), "the stored text is the chunk's own"
    chunk = with_context([Chunk(1, text, 0, len(text), 0, tuple(headings))], title, embedder.chunk_tokenizer)[0]
    assert chunk.context.startswith(title) and content_hash == chunk.content_hash
    assert np.allclose(embedding.to_numpy(), embedder.encode([f"{chunk.context}\n{text}"])[0], atol=1e-5)
    hits = search("coffee endothelial function", collection=name, k=3, mode="semantic")
    assert hits and hits[0].source_id.startswith("coffee/")

    plain = run_ingest(folder_spec(name, corpus, chunk_tokens=128))["new_version"]
    assert plain["promoted"], "switching chunk_context off is a new version"
    text, embedding = conn.execute(
        "SELECT c.text, c.embedding FROM ragpipe.chunks c JOIN ragpipe.collections k ON k.id = c.collection_id "
        "WHERE k.name = %s ORDER BY c.id LIMIT 1", (name,)).fetchone()
    assert np.allclose(embedding.to_numpy(), embedder.encode([text])[0], atol=1e-5), "embedded without context"


def test_bf16_backend_matches_fp32_and_auto_records_its_backend(corpus, name, conn, embedder, monkeypatch):
    from pipelines.embed import get_embedder

    texts = ["Coffee and endothelial function in healthy adults.", "Tart cherry juice and melatonin levels.",
             "Walnuts improve semen quality in men consuming a Western-style diet."]
    bf16 = get_embedder("all-MiniLM-L6-v2#bf16").encode(texts)
    assert bf16.dtype == np.float32 and np.allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-5)
    assert np.min(np.sum(bf16 * embedder.encode(texts), axis=1)) > 0.99, "bf16 vectors are fp32's, to ~1e-3"
    monkeypatch.setenv("RAGPIPE_AUTO_BACKEND", "bf16")
    run_ingest(folder_spec(name, corpus, model="all-MiniLM-L6-v2#auto", chunk_tokens=128))
    assert store.get_collection(conn, name).model == "all-MiniLM-L6-v2#bf16", "the version records its backend"
    monkeypatch.setenv("RAGPIPE_AUTO_BACKEND", "torch")  # a machine where another backend is best
    again = run_ingest(folder_spec(name, corpus, model="all-MiniLM-L6-v2#auto", chunk_tokens=128))
    assert "new_version" not in again and again["chunks_embedded"] == 0, "#auto keeps what it was built with"


def cuda_visible() -> bool:
    from pipelines.embed.hardware import cuda_visible

    return cuda_visible()


@pytest.mark.skipif(not cuda_visible(), reason="no CUDA GPU on this machine")
def test_fp16_backend_on_a_gpu_matches_fp32(embedder):
    from pipelines.embed import get_embedder

    texts = ["fp16 on a GPU", "its vectors agree with fp32's to a cosine near 1"]
    fp16 = get_embedder("all-MiniLM-L6-v2#fp16")
    assert fp16.device == "cuda" and embedder.device == "cuda", "RAGPIPE_DEVICE=auto uses the GPU"
    assert np.min(np.sum(fp16.encode(texts) * embedder.encode(texts), axis=1)) > 0.999


def test_keyword_postings_follow_every_replace_and_delete(corpus, name, conn):
    def in_step() -> bool:
        words, postings = conn.execute(
            "SELECT (SELECT coalesce(sum(length(c.tsv)), 0) FROM ragpipe.chunks c WHERE c.collection_id = k.id), "
            "(SELECT count(*) FROM ragpipe.keyword_postings p WHERE p.collection_id = k.id) "
            "FROM ragpipe.collections k WHERE k.name = %s", (name,)).fetchone()
        return words == postings > 0

    def impacts_use_one_mean_length() -> float:
        """Every list of blocks is ordered by BM25's tf part (computed here) at the collection's
        impact_length, which is within 20% of its mean length, each block's min_impact its last part;
        every delta posting's impact is that part. Returns that length."""
        mean, avg = conn.execute("SELECT s.impact_length, s.avg_length FROM ragpipe.text_stats s "
                                 "JOIN ragpipe.collections k ON k.id = s.collection_id WHERE k.name = %s",
                                 (name,)).fetchone()
        assert abs(avg / mean - 1) <= 0.2

        def part(tf: int, length: int) -> float:
            return tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / mean))

        blocks = conn.execute(
            "SELECT b.lexeme, b.segment, b.block, b.min_impact, b.last, b.tfs, b.lens FROM ragpipe.posting_blocks b "
            "JOIN ragpipe.collections k ON k.id = b.collection_id WHERE k.name = %s "
            "ORDER BY b.lexeme, b.segment, b.block", (name,)).fetchall()
        assert blocks and len({length for *_, lens in blocks for length in lens}) > 10
        previous: dict[tuple, float] = {}
        for lexeme, segment, _block, low, last, tfs, lens in blocks:
            parts = [part(tf, length) for tf, length in zip(tfs, lens, strict=True)]
            assert len(parts) == 128 or last, "blocks of 128, but the last"
            assert parts == sorted(parts, reverse=True) and low == pytest.approx(parts[-1], rel=1e-5)
            assert parts[0] <= previous.get((lexeme, segment), parts[0]) * (1 + 1e-6), "lists best impact first"
            previous[(lexeme, segment)] = parts[-1]
        return mean

    run_ingest(folder_spec(name, corpus))
    assert in_step()
    impacts_use_one_mean_length()  # a first load too: it has no statistics until its end
    assert conn.execute(  # compacted, then vacuumed at the end of the run: the delta is empty, the blocks visible
        "SELECT relallvisible = relpages AND relpages > 0 FROM pg_class WHERE oid = "
        "('ragpipe.' || ragpipe.blocks_partition((ragpipe.get_collection(%s)).id))::regclass", (name,)).fetchone()[0]
    assert conn.execute("SELECT count(*) FROM ragpipe.keyword_postings p WHERE p.segment IS NULL AND "
                        "p.collection_id = (ragpipe.get_collection(%s)).id", (name,)).fetchone()[0] == 0
    coll_id = store.get_collection(conn, name).id
    conn.execute("UPDATE ragpipe.text_stats SET impact_length = avg_length * 2 WHERE collection_id = %s", (coll_id,))
    assert conn.execute("SELECT ragpipe.refresh_impacts(%s)", (coll_id,)).fetchone()[0], "drifted: recomputed"
    assert not conn.execute("SELECT ragpipe.refresh_impacts(%s)", (coll_id,)).fetchone()[0]
    assert impacts_use_one_mean_length() == conn.execute(
        "SELECT avg_length FROM ragpipe.text_stats WHERE collection_id = %s", (coll_id,)).fetchone()[0]
    edited = next(corpus.glob("salt/*.md"))
    edited.write_text(edited.read_text() + "\n\nPhosphate brines and sodium in broiler fillets.\n")
    next(corpus.glob("sleep/*.txt")).unlink()
    run_ingest(folder_spec(name, corpus))
    assert in_step(), "replaced and deleted chunks took their postings with them"
    impacts_use_one_mean_length()
    hits = search("phosphate brines broiler", collection=name, k=3, mode="keyword")
    assert hits and hits[0].source_id.startswith("salt/")
