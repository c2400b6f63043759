"""How vectors are stored and indexed: halfvec (models over 2,000 dimensions), binary quantisation with
exact re-ranking, and Matryoshka truncation; each checked against exact cosine computed in the test."""

import numpy as np
import pytest

from pipelines import store
from pipelines.config import ConfigError
from pipelines.embed import get_embedder, model_location
from pipelines.ingest import run_ingest
from pipelines.search import search
from pipelines.settings import DEFAULT_MODEL
from tests.conftest import folder_spec

QUESTIONS = ["does coffee raise blood pressure?", "walnuts and sperm quality", "sleep and melatonin"]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> str:
    """The packaged MiniLM with a Dense layer to 2,560 dimensions (Qwen3-Embedding-4B's width), built
    here: no download."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    torch.manual_seed(0)
    base = SentenceTransformer(model_location(DEFAULT_MODEL), device="cpu")
    dense = Dense(384, 2560, bias=False, activation_function=torch.nn.Identity())
    wide = SentenceTransformer(modules=[*base, dense], device="cpu")
    path = tmp_path_factory.mktemp("models") / "minilm-2560"
    wide.save(str(path))
    return str(path)


def stored(conn, name: str) -> tuple[list[int], np.ndarray, list[str]]:
    rows = conn.execute("SELECT c.id, ragpipe.vector_of(c.embedding, c.embedding_half), c.text FROM ragpipe.chunks c "
                        "JOIN ragpipe.collections k "
                        "ON k.id = c.collection_id WHERE k.name = %s ORDER BY c.id", (name,)).fetchall()
    return [r[0] for r in rows], np.stack([r[1].to_numpy() for r in rows]), [r[2] for r in rows]


def index_definition(conn, name: str) -> str:
    coll = store.get_collection(conn, name)
    return conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = ragpipe.hnsw_index_name(%s)",
                        (coll.id,)).fetchone()[0]


def assert_exact_top_k(conn, name: str, embedder, k: int = 5) -> None:
    """Semantic search returns numpy's exact cosine top k, with exact scores."""
    ids, vectors, _ = stored(conn, name)
    for q in QUESTIONS:
        query = embedder.encode_queries([q])[0]
        scores = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))  # cosine, as pgvector
        want = [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]
        got = search(q, name, k=k, mode="semantic")
        assert [h.chunk_id for h in got] == want, q
        assert [h.score for h in got] == pytest.approx(sorted(scores, reverse=True)[:k], abs=1e-5)


def test_a_model_over_2000_dimensions_fails_up_front_on_float32_and_works_on_halfvec(wide_model, corpus, name,
                                                                                    conn):
    with pytest.raises(ConfigError, match=r"makes 2560-dimension vectors and an HNSW index on float32 holds at "
                                          r"most 2000: set `storage: halfvec` or `index: \{quantization: binary\}`"):
        run_ingest(folder_spec(name, corpus, model=wide_model))
    assert store.get_collection(conn, name) is None, "refused before anything was embedded or stored"

    run_ingest(folder_spec(name, corpus, model=wide_model, storage="halfvec", index={"ef_search": 1000}))
    assert "halfvec(2560)" in index_definition(conn, name) and "halfvec_cosine_ops" in index_definition(conn, name)
    embedder = get_embedder(wide_model)
    assert store.get_collection(conn, name).dimension == 2560
    assert_exact_top_k(conn, name, embedder)
    assert search(QUESTIONS[0], name, k=5, mode="hybrid")

    built = run_ingest(folder_spec(name, corpus, model=wide_model, storage="halfvec",
                                   index={"quantization": "binary", "ef_search": 1000}))["new_version"]
    assert built["promoted"] and built["chunks_embedded"] == 0, "a new index type reuses the stored vectors"
    assert "bit_hamming_ops" in index_definition(conn, name)
    assert_exact_top_k(conn, name, embedder)


def test_storage_halfvec_halves_the_table_and_answers_as_float32_does(corpus, name, conn, embedder):
    """`storage: halfvec` (#43.5): the table holds 2-byte vectors (embedding NULL), the index is on them,
    and searches answer as the float32 copy does within half precision; verify and re-runs work on it."""
    from tests.conftest import ragpipe

    run_ingest(folder_spec(f"{name}_f32", corpus))
    run_ingest(folder_spec(name, corpus, storage="halfvec"))
    sizes = dict((n, (full, half, nulls)) for n, full, half, nulls in conn.execute(
        "SELECT k.name, sum(pg_column_size(c.embedding)), sum(pg_column_size(c.embedding_half)), "
        "count(*) FILTER (WHERE c.embedding IS NULL) FROM ragpipe.chunks c JOIN ragpipe.collections k "
        "ON k.id = c.collection_id WHERE k.name IN (%s, %s) GROUP BY k.name", (name, f"{name}_f32")))
    full, _, _ = sizes[f"{name}_f32"]
    none, half, nulls = sizes[name]
    assert none is None and nulls > 0 and 0.49 < half / full < 0.51, sizes
    assert "embedding_half" in index_definition(conn, name) and "halfvec_cosine_ops" in index_definition(conn, name)
    assert_exact_top_k(conn, name, embedder)
    for q in QUESTIONS:
        halved = [(h.source_id, h.text, h.score) for h in search(q, name, k=5, mode="semantic")]
        single = [(h.source_id, h.text, h.score) for h in search(q, f"{name}_f32", k=5, mode="semantic")]
        assert len({t for _, t, _ in halved} & {t for _, t, _ in single}) >= 4, q
        assert [s for *_, s in halved] == pytest.approx([s for *_, s in single], abs=2e-3), q
    assert search(QUESTIONS[0], name, k=5, mode="hybrid")
    assert ragpipe("verify", name).returncode == 0
    (corpus / "coffee" / "halfvec-note.md").write_text("# Espresso\n\nA note on espresso and blood pressure.")
    try:
        again = run_ingest(folder_spec(name, corpus, storage="halfvec"))
        assert again["chunks_embedded"] >= 1 and search("espresso note", name, k=1, mode="semantic")
        assert conn.execute("SELECT count(*) FROM ragpipe.chunks c JOIN ragpipe.collections k ON k.id = "
                            "c.collection_id WHERE k.name = %s AND c.embedding IS NOT NULL", (name,)).fetchone()[0] == 0
    finally:
        (corpus / "coffee" / "halfvec-note.md").unlink()


def test_binary_quantization_reranks_to_the_exact_top_k_and_filters_still_return_k_rows(sample, corpus, name, conn,
                                                                                          embedder):
    run_ingest(folder_spec(name, corpus, index={"quantization": "binary", "rerank": 40}))
    definition = index_definition(conn, name)
    assert "binary_quantize" in definition and "bit(384)" in definition
    assert_exact_top_k(conn, name, embedder)
    path = conn.execute("SELECT d.source_id FROM ragpipe.chunks c JOIN ragpipe.documents d ON d.id = c.document_id "
                        "JOIN ragpipe.collections k ON k.id = c.collection_id WHERE k.name = %s "
                        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1", (name,)).fetchone()[0]
    hits = search(QUESTIONS[0], name, k=4, mode="semantic", filter={"path": path})
    assert len(hits) == 4 and {h.source_id for h in hits} == {path}, "a selective filter still gives k rows"
    from pipelines.search.tuning import recall_curve

    assert recall_curve(conn, name, queries=10, ladder=(1000,))[0].recall == 1.0, "ragpipe tune works on it"


def test_dimensions_truncates_and_the_cache_never_serves_a_full_size_vector(corpus, name, conn, embedder):
    run_ingest(folder_spec(f"{name}_full", corpus))
    summary = run_ingest(folder_spec(name, corpus, dimensions=128))
    ids, vectors, texts = stored(conn, name)
    assert vectors.shape[1] == 128 and store.get_collection(conn, name).dimension == 128
    assert summary["chunks_embedded"] == len(set(texts)), "no 384-d vector of the same model serves it"
    full = embedder.encode_documents(texts)[:, :128]
    assert np.allclose(vectors, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5), "re-normalised"
    assert search(QUESTIONS[0], name, k=3, mode="semantic")


def test_a_collection_built_before_these_options_needs_no_rebuild(corpus, name, conn):
    run_ingest(folder_spec(name, corpus))
    conn.execute("UPDATE ragpipe.collections SET settings = jsonb_set(settings, '{index}', "
                 "(settings -> 'index') - 'quantization' - 'rerank') WHERE name = %s", (name,))  # as rows were
    again = run_ingest(folder_spec(name, corpus))
    assert "new_version" not in again and again["chunks_embedded"] == 0
    assert "vector_cosine_ops" in index_definition(conn, name) and "vector(384)" in index_definition(conn, name)


def write(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (folder / rel).write_text(text)
    return folder


def keyword_ids(name: str, q: str) -> list[str]:
    return [h.source_id for h in search(q, name, k=5, mode="keyword")]


def test_german_and_french_collections_find_inflected_forms(tmp_path, name):
    german = write(tmp_path / "de", {"haus.md": "# Wohnen\n\nDie alten Häuser am Fluss wurden renoviert.",
                                     "auto.md": "# Verkehr\n\nViele Autos fahren durch die Stadt."})
    run_ingest(folder_spec(f"{name}_de", german, language="german"))
    assert keyword_ids(f"{name}_de", "Haus") == ["haus.md"], "Häuser is found by Haus"
    french = write(tmp_path / "fr", {"chevaux.md": "# Ferme\n\nLes chevaux mangent du foin dans le pré.",
                                     "vin.md": "# Cave\n\nLe vin rouge vieillit en fût."})
    run_ingest(folder_spec(f"{name}_fr", french, language="french"))
    assert keyword_ids(f"{name}_fr", "cheval") == ["chevaux.md"], "chevaux is found by cheval"
    run_ingest(folder_spec(f"{name}_en", german))
    assert keyword_ids(f"{name}_en", "Haus") == [], "English stemming does not find Häuser by Haus (the test can fail)"


def test_a_mixed_collection_stems_each_document_in_its_own_language(tmp_path, name, conn):
    import json

    rows = [{"id": "en-1", "text": "The old houses by the river were restored.", "language": "en"},
            {"id": "de-1", "text": "Die alten Häuser am Fluss wurden renoviert.", "language": "de"},
            {"id": "de-2", "text": "Viele Autos fahren durch die Stadt.", "language": "german"},
            {"id": "xx-1", "text": "Houses and cars in a language nobody declared.", "language": "klingon"}]
    table = tmp_path / "rows.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from pipelines.config import parse_collection

    spec = parse_collection({"name": name, "languages": ["german"], "source": {
        "kind": "tabular", "path": str(table), "id_column": "id", "text_column": "text"}}, where=name, base=tmp_path)
    summary = run_ingest(spec)
    langs = dict(conn.execute("SELECT d.source_id, c.language::text FROM ragpipe.chunks c JOIN ragpipe.documents d "
                              "ON d.id = c.document_id JOIN ragpipe.collections k ON k.id = c.collection_id "
                              "WHERE k.name = %s", (name,)).fetchall())
    assert langs == {"en-1": "english", "de-1": "german", "de-2": "german", "xx-1": "english"}
    assert set(keyword_ids(name, "Haus")) == {"de-1"}, "a German query word finds the German document"
    assert {"en-1", "xx-1"} <= set(keyword_ids(name, "house")), "an English one the English documents"
    assert set(keyword_ids(name, "Häuser houses")) >= {"en-1", "de-1"}, "one query ranks both languages"

    notes = conn.execute("SELECT f.source_id, f.stage, f.error FROM ragpipe.ingest_failures f WHERE f.run_id = %s",
                         (summary["id"],)).fetchall()
    assert [(s, stage) for s, stage, _ in notes] == [("xx-1", "language")], "the fallback is recorded with the run"
    assert "'klingon'" in notes[0][2] and "indexed in english" in notes[0][2]
    assert summary["failed"] == 0, "a fallback is a note: the document is indexed"


def test_the_query_language_argument_parses_the_query_in_that_language_alone(tmp_path, name, conn):
    import json

    import psycopg

    from pipelines.config import parse_collection

    rows = [{"id": "en-1", "text": "The old houses by the river were restored.", "language": "en"},
            {"id": "de-1", "text": "Die alten Häuser am Fluss wurden renoviert.", "language": "de"}]
    table = tmp_path / "rows.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_ingest(parse_collection({"name": name, "languages": ["german"], "source": {
        "kind": "tabular", "path": str(table), "id_column": "id", "text_column": "text"}}, where=name, base=tmp_path))

    def ids(q: str, mode: str = "keyword", **kw) -> set[str]:
        return {h.source_id for h in search(q, name, k=5, mode=mode, **kw)}

    assert ids("Häusern") == {"de-1"}, "every language the collection holds, by default"
    assert ids("Häusern", language="english") == set(), "English alone does not stem Häusern to haus"
    assert ids("Häusern", language="de") == ids("Häusern", language="german") == {"de-1"}, "ISO codes too"
    assert ids("houses", language="english") == {"en-1"}
    hybrid = conn.execute("SELECT source_id FROM ragpipe.hybrid_search(%s, 'Häusern', NULL, 5, language => 'english')",
                          (name,)).fetchall()
    assert hybrid == [], "hybrid_search passes its language to keyword_search"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="klingon.* is not a text search configuration"):
        conn.execute("SELECT * FROM ragpipe.keyword_search(%s, 'houses', 5, NULL, 'klingon')", (name,))
    assert conn.execute("SELECT count(*) FROM ragpipe.keyword_search(%s, 'houses')", (name,)).fetchone() == (1,), \
        "consumers' SQL without the argument still calls the one keyword_search"


def test_simple_matches_ids_exactly_and_a_missing_language_is_refused(tmp_path, name):
    folder = write(tmp_path / "ids", {"a.md": "Error XK-4021B when running the importer.",
                                      "b.md": "The runner stopped."})
    run_ingest(folder_spec(name, folder, language="simple"))
    assert keyword_ids(name, "xk-4021b") == ["a.md"]
    assert keyword_ids(name, "run") == [], "simple does not stem"
    with pytest.raises(ConfigError, match="no text search configuration klingon"):
        run_ingest(folder_spec(f"{name}_x", folder, language="klingon"))


def test_a_halfvec_collection_built_before_migrates_to_the_halfvec_column(db_url):
    """The upgrade (migration 016): a halfvec collection whose table held float32 vectors gets them in
    embedding_half, its index on the old column dropped (its next run builds one), and searches as before."""
    from pipelines.store.database import connect
    from pipelines.store.migrations import migrate
    from tests.conftest import database_at

    with database_at(db_url, "ragpipe_halfvec_upgrade", last="015_blocks_from_chunks.sql") as url:
        with connect(url, autocommit=True) as old:
            coll = old.execute("INSERT INTO ragpipe.collections (name, model, dimension, chunk_tokens, chunk_overlap, "
                               "family, settings) VALUES ('half', 'm', 3, 256, 32, 'half', "
                               "'{\"storage\": \"halfvec\"}') RETURNING id").fetchone()[0]
            doc = old.execute("INSERT INTO ragpipe.documents (collection_id, source_id, uri, content_hash, metadata) "
                              "VALUES (%s, 'd', 'mem://', 'h', '{}') RETURNING id", (coll,)).fetchone()[0]
            for i, vector in enumerate(["[1,0,0]", "[0.6,0.8,0]", "[0,0,1]"]):
                old.execute("INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, "
                            "char_start, char_end, content_hash, metadata, embedding) VALUES (%s, %s, %s, %s, 1, 0, 1, "
                            "%s, '{}', %s)", (coll, doc, i, f"chunk {i}", f"c{i}", vector))
            old.execute(f"CREATE INDEX chunks_hnsw_c{coll} ON ragpipe.chunks_c{coll} USING hnsw "
                        "((embedding::halfvec(3)) halfvec_cosine_ops)")
        migrate(url)
        with connect(url, autocommit=True) as new:
            assert new.execute("SELECT count(*) FILTER (WHERE embedding IS NULL AND embedding_half IS NOT NULL), "
                               "count(*) FROM ragpipe.chunks").fetchone() == (3, 3)
            assert new.execute("SELECT to_regclass(%s)", (f"ragpipe.chunks_hnsw_c{coll}",)).fetchone()[0] is None
            hits = new.execute("SELECT text FROM ragpipe.semantic_search('half', '[1,0.1,0]', 3)").fetchall()
            assert [h[0] for h in hits] == ["chunk 0", "chunk 1", "chunk 2"]
            assert new.execute("SELECT (ragpipe.build_hnsw_index(%s)).built", (coll,)).fetchone()[0]
            assert "embedding_half" in new.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                                   (f"chunks_hnsw_c{coll}",)).fetchone()[0]
