"""The SQL search API through SQL and Python: modes, filters, similarity, RAG context, roles, hostile input."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from pipelines import search as api
from pipelines.ingest import run_ingest
from tests.conftest import folder_spec, load_random_collection, ragpipe


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_every_mode_finds_the_obvious_document(sample, mode):
    hits = api.search("walnuts semen quality sperm", collection=sample, k=5, mode=mode)
    assert hits and hits[0].source_id.startswith("nuts/walnuts")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_fuses_both_rankings(sample):
    text = "Does coffee affect blood vessel function?"
    sem = [h.chunk_id for h in api.search(text, collection=sample, k=50, mode="semantic")]
    kw = [h.chunk_id for h in api.search(text, collection=sample, k=50, mode="keyword")]
    hybrid = api.search(text, collection=sample, k=10, mode="hybrid")
    for h in hybrid:
        expected = sum(1 / (60 + ranking.index(h.chunk_id) + 1) for ranking in (sem, kw) if h.chunk_id in ranking)
        assert h.score == pytest.approx(expected, rel=1e-6)
    only_keyword = api.search(text, collection=sample, k=10, mode="hybrid", semantic_weight=0.0)
    assert [h.chunk_id for h in only_keyword] == kw[:10]


def test_convex_fusion_equals_an_independent_computation(sample, conn, embedder):
    """hybrid_search(fusion => 'convex'): alpha * minmax(semantic) + (1 - alpha) * minmax(keyword) over
    the same candidates, computed here from the two rankings."""
    text = "Does coffee affect blood vessel function?"
    vector = embedder.encode([text])[0]
    n, alpha = 50, 0.3

    def ranking(function: str, arg) -> dict[int, float]:
        return dict(conn.execute(f"SELECT chunk_id, score FROM ragpipe.{function}(%s, %s, %s)", (sample, arg, n)))

    def minmax(scores: dict[int, float]) -> dict[int, float]:
        lo, hi = min(scores.values()), max(scores.values())
        return {c: (s - lo) / (hi - lo) if hi > lo else 1.0 for c, s in scores.items()}

    sem, kw = minmax(ranking("semantic_search", vector)), minmax(ranking("keyword_search", text))
    fused = {c: alpha * sem.get(c, 0) + (1 - alpha) * kw.get(c, 0) for c in sem.keys() | kw.keys()}
    want = sorted(fused.items(), key=lambda cs: (-cs[1], cs[0]))[:10]
    got = conn.execute("SELECT chunk_id, score FROM ragpipe.hybrid_search(%s, %s, %s, 10, candidates => %s, "
                       "fusion => 'convex', alpha => %s)", (sample, text, vector, n, alpha)).fetchall()
    assert [c for c, _ in got] == [c for c, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-9)
    rrf = [h.chunk_id for h in api.search(text, collection=sample, k=10, mode="hybrid")]
    assert [c for c, _ in got] != rrf, "the two fusions rank differently here (else this test proves little)"


def test_a_collections_search_defaults_apply_when_a_call_leaves_them_out(corpus, name, conn, embedder):
    text = "Does coffee affect blood vessel function?"
    run_ingest(folder_spec(name, corpus, search={"fusion": "convex", "alpha": 0.7}))
    assert api.search(text, collection=name, k=5) == api.search(text, collection=name, k=5, fusion="convex",
                                                                 alpha=0.7)
    assert api.search(text, collection=name, k=5) != api.search(text, collection=name, k=5, fusion="rrf")
    run_ingest(folder_spec(name, corpus))  # back to the SQL defaults: rrf, k 60, weights 1
    assert api.search(text, collection=name, k=5) == api.search(text, collection=name, k=5, fusion="rrf",
                                                                 rrf_k=60)


def bm25_reference(conn, collection: str, query_text: str) -> dict[int, float]:
    """BM25 (k1 1.2, b 0.75) of every chunk computed here from the chunks' tsvectors, not the stats tables."""
    import math
    from collections import Counter, defaultdict

    rows = conn.execute("SELECT c.id, u.lexeme, cardinality(u.positions) FROM ragpipe.chunks c "
                        "JOIN ragpipe.collections k ON k.id = c.collection_id, unnest(c.tsv) u "
                        "WHERE k.name = %s", (collection,)).fetchall()
    tf: dict[int, dict[str, int]] = defaultdict(dict)
    for chunk_id, lexeme, count in rows:
        tf[chunk_id][lexeme] = count
    df = Counter(lexeme for _, lexeme, _ in rows)
    n, avg_len = len(tf), len(rows) / len(tf)
    words = [r[0] for r in conn.execute("SELECT lexeme FROM unnest(to_tsvector('english', %s))", (query_text,))]
    scores = {}
    for chunk_id, terms in tf.items():
        norm = 1.2 * (0.25 + 0.75 * len(terms) / avg_len)
        score = sum(math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) * terms[w] * 2.2 / (terms[w] + norm)
                    for w in words if w in terms)
        if score:
            scores[chunk_id] = score
    return scores


def test_keyword_search_is_bm25_whatever_its_round_settings(sample, conn):
    text = "Does coffee affect blood vessel function?"
    reference = bm25_reference(conn, sample, text)
    expected = sorted(reference.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    hits = api.search(text, collection=sample, k=10, mode="keyword")
    assert [h.chunk_id for h in hits] == [c for c, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], rel=1e-9)
    filtered = api.search(text, collection=sample, k=10, mode="keyword", filter={})
    assert [h.chunk_id for h in filtered] == [h.chunk_id for h in hits]
    assert [h.score for h in filtered] == pytest.approx([h.score for h in hits], rel=1e-9)
    [settings] = conn.execute("SELECT settings -> 'index' FROM ragpipe.collections WHERE name = %s",
                              (sample,)).fetchone()
    conn.execute("UPDATE ragpipe.collections SET settings = settings || jsonb_build_object('index', "
                 "(settings -> 'index') || '{\"keyword_candidates\": 1, \"keyword_rescore\": 1}') WHERE name = %s",
                 (sample,))
    try:  # one posting a word a round, one chunk scored by probes: more rounds, the same ranking
        one = api.search(text, collection=sample, k=10, mode="keyword")
    finally:
        conn.execute("UPDATE ragpipe.collections SET settings = jsonb_set(settings, '{index}', %s) WHERE name = %s",
                     (psycopg.types.json.Jsonb(settings), sample))
    assert [h.chunk_id for h in one] == [h.chunk_id for h in hits]
    assert [h.score for h in one] == pytest.approx([h.score for h in hits], rel=1e-9)

BM25_WORDS = ("heron marsh river stone forest winter coffee pepper garden silver engine rocket violin harbor "
              "desert glacier lantern meadow orchard pebble canyon falcon tunnel island thunder crystal velvet "
              "copper bamboo saddle walnut cherry kettle ribbon anchor beacon comet dragon ember fossil").split()


def bm25_chunks(rng, documents: int, chunks_per_doc: int, longer: int = 0) -> list[list[str]]:
    """Chunk texts of 3 to 40 (+ `longer`) words drawn with Zipf-like weights from BM25_WORDS: every
    word is in hundreds of chunks, the commonest in most, many chunks repeat a word."""
    import numpy as np

    weights = 1 / np.arange(1, len(BM25_WORDS) + 1) ** 0.8
    return [[" ".join(rng.choice(BM25_WORDS, size=rng.integers(3, 41 + longer), p=weights / weights.sum()))
             for _ in range(chunks_per_doc)] for _ in range(documents)]


def assert_bm25_top(hits, reference: dict[int, float], k: int, what: str) -> None:
    """The hits are BM25's top k: the same scores in order, and the same chunks above the k-th score (ties aside)."""
    want = sorted(reference.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    assert [h.score for h in hits] == pytest.approx([s for _, s in want], rel=1e-9), what
    kth = want[-1][1] * (1 + 1e-9) if len(want) == k else -1
    assert {h.chunk_id for h in hits if h.score > kth} == {c for c, s in want if s > kth}, what


def test_keyword_search_is_exact_bm25_when_every_word_has_far_more_postings_than_a_round_reads(conn, name):
    """3,000 chunks where every query word is in hundreds to thousands of chunks, searched with rounds of
    5 postings a word (so every list is cut, many times): the top k equals BM25 computed here, for 1 to
    30 words, k 10 and 50, with and without a filter, and again after edits (longer chunks, so the mean
    length drifts from the one the stored impacts use) and deletes."""
    import numpy as np

    from pipelines import store
    from pipelines.chunking import Chunk

    rng = np.random.default_rng(7)
    coll = store.ensure_collection(conn, name, "sentence-transformers/all-MiniLM-L6-v2", 8, 256, 32, {"index": {}})

    def load(ids: range, texts: list[list[str]]) -> None:
        docs = []
        for i, chunks in zip(ids, texts, strict=True):
            vectors = rng.normal(size=(len(chunks), 8)).astype(np.float32)
            docs.append(store.LoadedDocument(f"doc-{i}", f"mem://{i}", None, str(i), "", {"group": i % 4},
                                             [Chunk(j, t, 0, 1, 3) for j, t in enumerate(chunks)], vectors))
        with conn.transaction():
            store.replace_documents(conn, coll, None, docs)
        store.refresh_text_stats(conn, coll.id, min_change=0)
        store.analyze_collection(conn, coll.id)

    load(range(600), bm25_chunks(rng, 600, 5))
    store.set_index_settings(conn, coll.id, keyword_candidates=5, keyword_rescore=3)
    [fewest] = conn.execute("SELECT min(chunks) FROM ragpipe.term_stats WHERE collection_id = %s",
                            (coll.id,)).fetchone()
    assert fewest > 200, "every word has far more postings than a round reads"
    groups = dict(conn.execute("SELECT c.id, (d.metadata ->> 'group')::int FROM ragpipe.chunks c JOIN "
                               "ragpipe.documents d ON d.id = c.document_id WHERE c.collection_id = %s", (coll.id,)))
    queries = [" ".join(rng.choice(BM25_WORDS, size=n, replace=False)) for n in (1, 1, 2, 3, 5, 8, 13, 20, 30)]
    queries.append("zebra " + queries[3])  # a word no chunk has

    def check(phase: str) -> None:
        for text in queries:
            reference = bm25_reference(conn, name, text)
            for k in (10, 50):
                assert_bm25_top(api.search(text, collection=name, k=k, mode="keyword"), reference, k,
                                f"{phase}: {text!r}, k={k}")
            only = {c: s for c, s in reference.items() if groups.get(c) == 2}
            hits = api.search(text, collection=name, k=10, mode="keyword", filter={"group": 2})
            assert_bm25_top(hits, only, 10, f"{phase}, filter group 2: {text!r}")

    check("first load (all in the delta)")
    assert "compacted" in store.compact_postings(conn, coll.id)
    blocks, longest = conn.execute("SELECT count(*), max(block) + 1 FROM ragpipe.posting_blocks "
                                   "WHERE collection_id = %s", (coll.id,)).fetchone()
    assert longest >= 10, f"lists many blocks long ({blocks} blocks, the longest {longest})"
    check("in blocks")
    load(range(0, 100), bm25_chunks(rng, 100, 5, longer=30))  # edited: longer chunks
    with conn.transaction():
        store.delete_documents(conn, coll, [f"doc-{i}" for i in range(500, 600)])
    store.refresh_text_stats(conn, coll.id, min_change=0)
    groups = dict(conn.execute("SELECT c.id, (d.metadata ->> 'group')::int FROM ragpipe.chunks c JOIN "
                               "ragpipe.documents d ON d.id = c.document_id WHERE c.collection_id = %s", (coll.id,)))
    mean, used = conn.execute("SELECT avg_length, impact_length FROM ragpipe.text_stats WHERE collection_id = %s",
                              (coll.id,)).fetchone()
    assert mean > used * 1.05, "the stored impacts use an older mean length: the bound's slack is exercised"
    delta, dead = conn.execute("SELECT (SELECT count(*) FROM ragpipe.keyword_postings WHERE collection_id = %(c)s "
                               "AND segment IS NULL), "
                               "(SELECT count(*) FROM ragpipe.dead_chunks WHERE collection_id = %(c)s)",
                               {"c": coll.id}).fetchone()
    assert delta > 0 and dead == 1000, (delta, dead)
    check("after edits and deletes (a delta, and deleted chunks in blocks)")
    assert "rebuilt: segment 2" in store.compact_postings(conn, coll.id), "deleted chunks past 10%: a rebuild"
    assert conn.execute("SELECT count(*) FROM ragpipe.dead_chunks WHERE collection_id = %s", (coll.id,)
                        ).fetchone()[0] == 0, "a merge drops the deleted chunks' postings"
    check("merged into one segment")
    load(range(600, 640), bm25_chunks(rng, 40, 5))
    assert "compacted: segment 3" in store.compact_postings(conn, coll.id)
    groups = dict(conn.execute("SELECT c.id, (d.metadata ->> 'group')::int FROM ragpipe.chunks c JOIN "
                               "ragpipe.documents d ON d.id = c.document_id WHERE c.collection_id = %s", (coll.id,)))
    check("two segments")
    for batch in range(6):  # a segment a run: at the 8th, the small ones merge, the largest stays
        load(range(640 + 10 * batch, 650 + 10 * batch), bm25_chunks(rng, 10, 5))
        done = store.compact_postings(conn, coll.id)
        assert ("merged 6 segments" in done) == (batch == 5), done
    assert [s for s, in conn.execute("SELECT segment FROM ragpipe.posting_segments WHERE collection_id = %s "
                                     "ORDER BY 1", (coll.id,))] == [2, 9]
    groups = dict(conn.execute("SELECT c.id, (d.metadata ->> 'group')::int FROM ragpipe.chunks c JOIN "
                               "ragpipe.documents d ON d.id = c.document_id WHERE c.collection_id = %s", (coll.id,)))
    check("segments merged log-structured")
    # A word's chunk ids 2^31 and more apart: kept whole (wide_ids), not as 4-byte offsets.
    conn.execute("SELECT setval('ragpipe.chunks_id_seq', (SELECT max(id) FROM ragpipe.chunks) + 3000000000)")
    load(range(0, 50), bm25_chunks(rng, 50, 5))
    assert "rebuilt" in store.compact_postings(conn, coll.id, full_merge=True)
    assert conn.execute("SELECT count(*) FILTER (WHERE wide_ids IS NOT NULL) > 0 FROM ragpipe.posting_blocks "
                        "WHERE collection_id = %s", (coll.id,)).fetchone()[0]
    groups = dict(conn.execute("SELECT c.id, (d.metadata ->> 'group')::int FROM ragpipe.chunks c JOIN "
                               "ragpipe.documents d ON d.id = c.document_id WHERE c.collection_id = %s", (coll.id,)))
    check("wide blocks")


def test_similar_chunks_and_documents(sample):
    anchor = api.search("tart cherry juice melatonin", collection=sample, k=1, mode="semantic")[0]
    similar = api.similar_chunks(anchor.chunk_id, k=5)
    assert len(similar) == 5 and anchor.chunk_id not in {h.chunk_id for h in similar}
    docs = api.similar_documents(sample, "coffee/coffee-tea-and-mortality.html", k=5)
    ids = [d.source_id for d in docs]
    assert len(ids) == len(set(ids)) == 5 and "coffee/coffee-tea-and-mortality.html" not in ids
    assert any(i.startswith(("coffee/", "green-tea/")) for i in ids[:2])


def test_rag_context_merges_neighbours_and_cites_documents(sample, conn):
    ctx = api.rag_context("Does coffee affect blood vessel function?", collection=sample, k=6, max_tokens=2000)
    assert ctx.context.startswith("[1] ")
    numbers = [c["n"] for c in ctx.citations]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len({c["source_id"] for c in ctx.citations}) == len(ctx.citations), "one citation per document"
    for c in ctx.citations:
        assert f"[{c['n']}] " in ctx.context and c["uri"].startswith("file://")
    # overlapping chunks of one document appear once, merged: the text they share is in the context once
    hits = api.search("Does coffee affect blood vessel function?", collection=sample, k=6, mode="hybrid")
    spans = conn.execute("SELECT document_id, char_start, char_end, text FROM ragpipe.chunks WHERE id = ANY(%s) "
                         "ORDER BY document_id, char_start", ([h.chunk_id for h in hits],)).fetchall()
    pairs = [(a, b) for a, b in zip(spans[:-1], spans[1:], strict=True) if a[0] == b[0] and b[1] < a[2]]
    assert pairs, "the query hits overlapping chunks of one document (the case under test)"
    for a, b in pairs:
        shared = a[3][b[1] - a[1]:]
        assert len(shared) > 20 and ctx.context.count(shared) == 1, shared
    assert len(ctx.context.split("\n\n[")) == len(hits) - len(pairs), "each overlapping pair is one passage"
    small = api.rag_context("Does coffee affect blood vessel function?", collection=sample, k=6, max_tokens=300)
    assert len(small.context) < len(ctx.context)


def neighbour_collection(conn, name: str):
    """Two documents of 10 adjacent chunks each ("a0 ..." to "a9 ...", "b0 ..." to "b9 ..."), 8-dim vectors."""
    import numpy as np

    from pipelines import store
    from pipelines.chunking import Chunk

    rng = np.random.default_rng(3)
    coll = store.ensure_collection(conn, name, "sentence-transformers/all-MiniLM-L6-v2", 8, 256, 32, {"index": {}})
    docs = []
    for prefix in ("a", "b"):
        texts = [f"{prefix}{i}word filler{i} text{i}" for i in range(10)]
        starts = [sum(len(t) + 1 for t in texts[:i]) for i in range(10)]
        chunks = [Chunk(i, t, starts[i], starts[i] + len(t), 10) for i, t in enumerate(texts)]
        docs.append(store.LoadedDocument(f"doc-{prefix}", f"mem://{prefix}", f"Doc {prefix}", prefix, "", {}, chunks,
                                         rng.normal(size=(10, 8)).astype(np.float32)))
    with conn.transaction():
        store.replace_documents(conn, coll, None, docs)
    store.refresh_text_stats(conn, coll.id, min_change=0)
    return coll


def test_rag_context_brings_each_hits_neighbours_within_the_budget(conn, name):
    """neighbours => n (#44.2): up to n chunks before and after each hit from its document, clipped at the
    document's edges, overlapping windows merged into one passage, passages kept within max_tokens."""
    neighbour_collection(conn, name)

    def context(text: str, k: int, neighbours: int, max_tokens: int = 1000) -> tuple[str, list]:
        return conn.execute("SELECT context, citations FROM ragpipe.rag_context(%s, %s, NULL, %s, %s, NULL, %s)",
                            (name, text, k, max_tokens, neighbours)).fetchone()

    def words(passage: str) -> list[str]:
        return [w.removesuffix("word") for w in passage.split() if w.endswith("word")]

    bare, cites = context("a0word", 1, 0)
    assert words(bare) == ["a0"] and [c["source_id"] for c in cites] == ["doc-a"]
    edge, _ = context("a0word", 1, 2)  # the document's first chunk: nothing before it
    assert words(edge) == ["a0", "a1", "a2"] and edge.count("[1] Doc a") == 1, edge
    end, _ = context("b9word", 1, 3)
    assert words(end) == ["b6", "b7", "b8", "b9"], end
    merged, cites = context("a3word a5word", 2, 1)  # windows 2-4 and 4-6 overlap: one passage, chunk 4 once
    assert words(merged) == ["a2", "a3", "a4", "a5", "a6"] and merged.count("[1]") == 1 and len(cites) == 1, merged
    assert "a3word filler3 text3 a4word filler4" in merged, "adjacent chunks joined in document order"
    both, cites = context("a3word b5word", 2, 1)
    assert sorted(words(both)) == ["a2", "a3", "a4", "b4", "b5", "b6"] and len(cites) == 2, both
    budget, cites = context("a3word b5word", 2, 1, max_tokens=45)  # a passage of 3 chunks is 30 tokens
    assert len(cites) == 1 and len(words(budget)) == 3, "the second passage does not fit in 45 tokens"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="neighbours must be between 0 and 20"):
        context("a3word", 2, 21)
    ids = dict(conn.execute("SELECT c.text, c.id FROM ragpipe.chunks c JOIN ragpipe.collections k "
                            "ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchall())

    def around(word: str, neighbours: int) -> list[tuple[str, bool]]:
        chunk = next(i for t, i in ids.items() if t.startswith(word))
        return [(t.split()[0].removesuffix("word"), hit) for t, hit in conn.execute(
            "SELECT text, hit FROM ragpipe.chunk_context(%s, %s, %s)", (name, chunk, neighbours))]

    assert around("a5word", 2) == [("a3", False), ("a4", False), ("a5", True), ("a6", False), ("a7", False)]
    assert around("b0word", 1) == [("b0", True), ("b1", False)]
    assert conn.execute("SELECT count(*) FROM ragpipe.chunk_context(%s, -1, 2)", (name,)).fetchone()[0] == 0


def test_rag_context_merges_overlapping_chunks_exactly(ragpipe_home, db_url, tmp_path):
    """One long document in small overlapping chunks: neighbouring hits become one exact passage."""
    text = " ".join(f"Sentence {i} is about the blue heron nesting season in the marsh." for i in range(60))
    (tmp_path / "heron.txt").write_text(text)
    run_ingest(folder_spec("heron", tmp_path, chunk_tokens=64, chunk_overlap=16))
    ctx = api.rag_context("blue heron nesting season", collection="heron", k=30, max_tokens=10_000)
    assert len(ctx.citations) == 1
    body = ctx.context.split("\n", 1)[1]
    assert body in text and len(body) > len(text) * 0.9, "all chunks merged back into the document text"


def test_selective_filters_still_return_k_rows_in_every_mode(conn, name):
    load_random_collection(conn, name, documents=1000, chunks_per_doc=5)
    for mode in ("semantic", "hybrid"):
        hits = api.search("doc chunk", collection=name, k=10, filter={"group": 7}, mode=mode)
        assert len(hits) == 10 and {h.metadata["group"] for h in hits} == {7}
    hits = api.search("doc", collection=name, k=10, filter={"group": 7}, mode="keyword")
    assert len(hits) == 10 and {h.metadata["group"] for h in hits} == {7}


def test_reader_role_can_search_and_nothing_else(sample, db_url):
    admin = psycopg.connect(db_url, autocommit=True)
    admin.execute("DROP ROLE IF EXISTS app_reader")
    admin.execute("CREATE ROLE app_reader LOGIN PASSWORD 'reader-pass'")
    ragpipe("db", "grant-reader", "app_reader")
    reader_url = psycopg.conninfo.make_conninfo(db_url, user="app_reader", password="reader-pass")
    literal = ragpipe("embed", "coffee").stdout.strip()
    with psycopg.connect(reader_url, autocommit=True) as reader:
        assert reader.execute("SELECT count(*) FROM ragpipe.semantic_search(%s, %s::vector, 3)",
                              (sample, literal)).fetchone()[0] == 3
        assert reader.execute("SELECT count(*) FROM ragpipe.hybrid_search(%s, 'coffee', %s::vector, 3)",
                              (sample, literal)).fetchone()[0] == 3
        assert reader.execute("SELECT context FROM ragpipe.rag_context(%s, 'coffee', %s::vector)",
                              (sample, literal)).fetchone()[0]
        assert reader.execute("SELECT count(*) FROM ragpipe.collection_stats").fetchone()[0] >= 1
        refused = [
            "SELECT * FROM ragpipe.chunks LIMIT 1",
            "SELECT * FROM ragpipe.documents LIMIT 1",
            "SELECT * FROM ragpipe.ingest_failures LIMIT 1",
            "SELECT * FROM ragpipe.ingest_runs LIMIT 1",
            "DELETE FROM ragpipe.chunks",
            "UPDATE ragpipe.documents SET title = 'x'",
            "INSERT INTO ragpipe.collections (name, model, dimension, chunk_tokens, chunk_overlap) "
            "VALUES ('x', 'm', 3, 1, 0)",
            "SELECT ragpipe.grant_reader('app_reader')",
            "CREATE TABLE ragpipe.evil (x int)",
        ]
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
    admin.close()


HOSTILE_COLLECTIONS = ["x'; DROP TABLE ragpipe.chunks; --", 'a"b', "", "名前", "%s", "{}"]
HOSTILE_FILTERS = [{"a'); DROP TABLE ragpipe.chunks; --": "y"}, {"path": {"$ne": None}}, {"": ""},
                   {"x": "' OR 1=1 --"}, {"nested": {"deep": ["list", 1, None]}}]
HOSTILE_TEXT = ["!:*&|()'", "' OR 1=1; --", "\\", "a & b | !c", "<script>", "日本語", ""]


def test_hostile_input_breaks_nothing(sample, conn):
    before = conn.execute("SELECT count(*) FROM ragpipe.chunks").fetchone()[0]
    for collection in HOSTILE_COLLECTIONS:
        with pytest.raises(api.UnknownCollection):
            api.search("x", collection=collection)
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT * FROM ragpipe.keyword_search(%s, 'x')", (collection,))
    for filt in HOSTILE_FILTERS:
        for mode in ("semantic", "keyword", "hybrid"):
            assert api.search("coffee", collection=sample, filter=filt, mode=mode) == []
    for text in HOSTILE_TEXT:
        for mode in ("semantic", "keyword", "hybrid"):
            api.search(text, collection=sample, mode=mode)
    assert conn.execute("SELECT count(*) FROM ragpipe.chunks").fetchone()[0] == before


class FakeLLM(BaseHTTPRequestHandler):
    """A loopback server speaking the OpenAI chat completions streaming API."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ["Coffee ", "improves ", "FMD [1]."]:
            chunk = {"choices": [{"delta": {"content": piece}, "index": 0}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args) -> None:
        pass


def test_ask_streams_an_answer_with_citations(sample):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        out = ragpipe("ask", "Does coffee affect blood vessel function?", "-c", sample,
                      env={"RAGPIPE_LLM_URL": url, "RAGPIPE_LLM_API_KEY": "sk-test", "RAGPIPE_LLM_MODEL": "m1"})
    finally:
        server.shutdown()
    assert "Coffee improves FMD [1]." in out.stdout
    assert "Sources:" in out.stdout and "[1] " in out.stdout.split("Sources:")[1]
    request = FakeLLM.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "m1" and request["body"]["stream"] is True
    assert "[1] " in request["body"]["messages"][-1]["content"]


def test_ask_without_an_endpoint_prints_the_prompt(sample):
    out = ragpipe("ask", "coffee and mortality", "-c", sample, env={"RAGPIPE_LLM_URL": ""})
    assert "Question: coffee and mortality" in out.stdout and "RAGPIPE_LLM_URL" in out.stderr


def test_eval_on_a_small_beir_dataset(tmp_path, ragpipe_home):
    """A BEIR-layout data set built from the sample records: metrics per mode, as JSON."""
    from tests.conftest import CORPUS

    records = [json.loads(line) for line in (CORPUS / "records.jsonl").read_text().splitlines()]
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": r["id"], "title": r["title"], "text": r["text"]}) + "\n" for r in records))
    picked = records[::4]
    (tmp_path / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": r["title"]}) + "\n" for i, r in enumerate(picked)))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\n" + "".join(
        f"q{i}\t{r['id']}\t2\r\n" for i, r in enumerate(picked)))
    report = json.loads(ragpipe("eval", str(tmp_path), "--json", "--collection", "tiny_beir").stdout)
    assert report["queries"] == len(picked) and report["documents"] == 20
    assert set(report["modes"]) == {"semantic", "keyword", "hybrid", "exact"}
    for mode, m in report["modes"].items():
        assert set(m) == {"ndcg@10", "recall@100", "mrr@10", "p50_ms", "p95_ms"}
        assert m["mrr@10"] >= 0.8, (mode, m)  # the query is the document's own title
        assert m["recall@100"] == 1.0


def test_a_huge_query_is_bounded_and_readers_have_a_statement_timeout(sample, conn, db_url):
    """Defect: a 14 kB query of 3,000 distinct words took 19 s at 100k chunks, and the reader role
    had no statement_timeout. Now a query's words are capped (its 32 rarest that occur, within its
    first 16 kB) and readers get a default timeout that a later migration never overrides."""
    import random

    from pipelines.store.migrations import migrate

    rng = random.Random(1)
    noise = " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(9)) for _ in range(3000))
    real = "walnuts semen quality sperm"
    conn.execute("SET statement_timeout = '20s'")  # a blow-up fails here instead of hanging the suite
    want = [r[0] for r in conn.execute("SELECT chunk_id FROM ragpipe.keyword_search(%s, %s, 10)", (sample, real))]
    got = [r[0] for r in conn.execute("SELECT chunk_id FROM ragpipe.keyword_search(%s, %s, 10)",
                                      (sample, f"{real} {noise}"))]
    assert want and got == want, "words that occur nowhere do not crowd out the ones that do"
    huge = f"{real} " + "x" * 600_000  # 600 kB: only its first 16 kB are read
    assert [r[0] for r in conn.execute("SELECT chunk_id FROM ragpipe.keyword_search(%s, %s, 10)",
                                       (sample, huge))] == want
    assert api.search(f"{real} {noise}", collection=sample, k=5, mode="hybrid")
    conn.execute("RESET statement_timeout")

    def reader_timeout() -> list[str]:
        return [c for (cfg,) in conn.execute("SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = 0 "
                                             "AND setrole = 'ragpipe_reader'::regrole") for c in cfg
                if c.startswith("statement_timeout=")]

    assert reader_timeout() == ["statement_timeout=30s"]
    conn.execute("ALTER ROLE ragpipe_reader SET statement_timeout = '45s'")
    try:
        conn.execute("DELETE FROM ragpipe.schema_migrations WHERE name LIKE 'api/%'")  # force the API to re-apply
        migrate(db_url)
        assert reader_timeout() == ["statement_timeout=45s"], "the owner's choice survives migrations"
    finally:
        conn.execute("ALTER ROLE ragpipe_reader SET statement_timeout = '30s'")


@pytest.mark.parametrize("call, message", [
    ("semantic_search(%(c)s, NULL, 5)", "query_embedding is NULL"),
    ("semantic_search(%(c)s, %(v)s, NULL)", "k must be between 1 and 10000, got NULL"),
    ("semantic_search(%(c)s, %(v)s, 1000000000)", "k must be between 1 and 10000"),
    ("keyword_search(%(c)s, 'coffee', 0)", "k must be between 1 and 10000, got 0"),
    ("hybrid_search(%(c)s, 'coffee', %(v)s, NULL)", "k must be between 1 and 2500"),
    ("hybrid_search(%(c)s, 'coffee', %(v)s, 5, NULL, 'NaN')", "semantic_weight must be a finite number"),
    ("hybrid_search(%(c)s, 'coffee', %(v)s, 5, NULL, 1, 'NaN')", "keyword_weight must be a finite number"),
    ("similar_documents(%(c)s, 'coffee/coffee-tea-and-mortality.html', -1)", "k must be between 1 and 1000"),
    ("hybrid_search(%(c)s, 'coffee', %(v)s, 5, fusion => 'max')", "fusion must be 'rrf' or 'convex', got max"),
    ("hybrid_search(%(c)s, 'coffee', %(v)s, 5, fusion => 'convex', alpha => 1.5)", "alpha must be between 0 and 1"),
])
def test_null_nan_and_unbounded_arguments_are_clear_errors(sample, conn, embedder, call, message):
    """Defect: a NULL embedding returned arbitrary chunks, k => NULL or 1e9 the whole collection,
    NaN weights NaN scores."""
    vector = embedder.encode(["coffee"])[0]
    with pytest.raises(psycopg.Error) as err:
        conn.execute(f"SELECT * FROM ragpipe.{call}", {"c": sample, "v": vector})
    assert message in str(err.value)


@pytest.mark.parametrize("args", [["search", "coffee", "--k", "-5"], ["search", "coffee", "--k", "1000000000"],
                                  ["similar", "x.md", "--k", "-1"]])
def test_out_of_range_k_is_one_clear_line_in_the_cli(args, sample):
    result = ragpipe(*args, "-c", sample, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "1<=x<=1000" in result.stderr


def test_tune_measures_the_recall_curve_and_changes_nothing(conn, name):
    import numpy as np

    from pipelines.search.tuning import choose_ef_search, recall_curve, sample_queries

    coll = load_random_collection(conn, name, documents=2000, chunks_per_doc=5)  # random 384-d: a hard set
    before = conn.execute("SELECT settings FROM ragpipe.collections WHERE id = %s", (coll.id,)).fetchone()[0]
    curve = recall_curve(conn, name, queries=20, ladder=(10, 40, 1000))
    assert [p.ef_search for p in curve] == [10, 40, 1000]
    assert curve[0].recall < curve[-1].recall and curve[-1].recall >= 0.99
    # the recall at ef 10 recomputed independently: numpy's exact top 10 against the SQL function's answers
    asked = sample_queries(conn, coll.id, 20)
    ids, vectors = zip(*conn.execute("SELECT id, embedding FROM ragpipe.chunks WHERE collection_id = %s",
                                     (coll.id,)).fetchall(), strict=True)
    matrix, ids = np.stack([v.to_numpy() for v in vectors]), np.array(ids)
    hits = []
    with conn.transaction() as tx:
        conn.execute("UPDATE ragpipe.collections SET settings = jsonb_set(settings, '{index,ef_search}', '10') "
                     "WHERE id = %s", (coll.id,))
        for chunk_id, v in asked:
            order = [i for i in ids[np.argsort(-(matrix @ v))][:11] if i != chunk_id][:10]
            got = [r[0] for r in conn.execute("SELECT chunk_id FROM ragpipe.semantic_search(%s, %s, 11)",
                                              (name, v)).fetchall() if r[0] != chunk_id][:10]
            hits.append(len(set(order) & set(got)) / 10)
        raise psycopg.Rollback(tx)
    assert abs(np.mean(hits) - curve[0].recall) < 1e-6
    assert choose_ef_search(curve, 0.99).ef_search == 1000 and choose_ef_search(curve, 1.01) is None
    assert conn.execute("SELECT settings FROM ragpipe.collections WHERE id = %s", (coll.id,)).fetchone()[0] == before
    out = ragpipe("tune", name, "--recall", "0.99", "--queries", "5", "--json")
    assert json.loads(out.stdout)["ef_search"] in (40, 64, 100, 160, 240, 320, 480, 640, 1000)


def test_a_reader_that_lifts_statement_timeout_still_cannot_run_keyword_search_unbounded(conn, name):
    """Defect (#42.18): ragpipe_reader could `SET statement_timeout = 0`, so its 30 s bound was only a default;
    keyword search now checks its own time each round (30 s, or a collection's index.max_search_s)."""
    load_random_collection(conn, name, documents=50, chunks_per_doc=2)
    with psycopg.connect(conn.info.dsn, autocommit=True) as reader:
        reader.execute("SET ROLE ragpipe_reader")
        reader.execute("SET statement_timeout = 0")
        assert reader.execute("SELECT count(*) FROM ragpipe.keyword_search(%s, 'doc chunk', 5)",
                              (name,)).fetchone()[0] == 5
        conn.execute("UPDATE ragpipe.collections SET settings = jsonb_set(settings, '{index,max_search_s}', '0') "
                     "WHERE name = %s", (name,))
        with pytest.raises(psycopg.errors.QueryCanceled, match="keyword search stopped after 0 s"):
            reader.execute("SELECT count(*) FROM ragpipe.keyword_search(%s, 'doc chunk', 5)", (name,))


def test_a_collection_without_a_keyword_index_writes_no_postings_and_says_so(corpus, name, conn):
    """keyword: false (#43.4): no postings or BM25 statistics are written; keyword and hybrid searches are a
    one-line error naming the setting; semantic search and RAG context are those of the same collection with one."""
    from pipelines.config import parse_collection

    def declared(collection: str, **extra) -> object:
        return parse_collection({"name": collection, "source": {"kind": "folder", "path": str(corpus)}, **extra},
                                where=collection, base=corpus)

    run_ingest(declared(name, keyword=False))
    run_ingest(declared(f"{name}_kw"))
    counts = conn.execute(
        "SELECT k.name, (SELECT count(*) FROM ragpipe.keyword_postings p WHERE p.collection_id = k.id) + (SELECT "
        "count(*) FROM ragpipe.posting_blocks b WHERE b.collection_id = k.id), "
        "(SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) FROM ragpipe.collections k "
        "WHERE k.name IN (%s, %s) ORDER BY k.name", (name, f"{name}_kw")).fetchall()
    assert counts[0][0] == name and counts[0][1] == 0 and counts[0][2] > 0, counts
    assert counts[1][1] > 0 and counts[1][2] == counts[0][2], counts
    for mode in ("keyword", "hybrid"):
        failed = ragpipe("search", "coffee", "-c", name, "--mode", mode, check=False)
        assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "keyword: false" in failed.stderr and "mode semantic" in failed.stderr, failed.stderr
    question = "does coffee raise blood pressure?"
    same = [(h.source_id, round(h.score, 5)) for h in api.search(question, name, k=8, mode="semantic")]
    assert same == [(h.source_id, round(h.score, 5)) for h in api.search(question, f"{name}_kw", k=8,
                                                                           mode="semantic")]
    context = api.rag_context(question, name, k=4)
    assert context.citations and context.citations[0]["source_id"] == same[0][0]
    assert ragpipe("verify", name).returncode == 0
    built = run_ingest(declared(f"{name}_kw", keyword=False))["new_version"]  # a change is a new version
    assert built["status"] == "succeeded", built
    failed = ragpipe("search", "coffee", "-c", f"{name}_kw", "--mode", "keyword", check=False)
    assert failed.returncode == 1 and "keyword: false" in failed.stderr, (built, failed.stderr)


def bm25_collection(conn, name: str, documents: int = 300, seed: int = 11):
    """A collection of BM25_WORDS chunks loaded through the real loader (in the delta until compacted)."""
    import numpy as np

    from pipelines import store
    from pipelines.chunking import Chunk

    rng = np.random.default_rng(seed)
    coll = store.ensure_collection(conn, name, "sentence-transformers/all-MiniLM-L6-v2", 8, 256, 32, {"index": {}})
    docs = [store.LoadedDocument(f"doc-{i}", f"mem://{i}", None, str(i), "", {"group": i % 4},
                                 [Chunk(j, t, 0, 1, 3) for j, t in enumerate(chunks)],
                                 rng.normal(size=(len(chunks), 8)).astype(np.float32))
            for i, chunks in enumerate(bm25_chunks(rng, documents, 5))]
    with conn.transaction():
        store.replace_documents(conn, coll, None, docs)
    store.refresh_text_stats(conn, coll.id, min_change=0)
    store.set_index_settings(conn, coll.id, keyword_candidates=5, keyword_rescore=3)
    return coll


def keyword_hits(conn, name: str, text: str, k: int = 10) -> list:
    """ragpipe.keyword_search on this connection (its database, its lock_timeout)."""
    return [api.SearchResult(*row) for row in conn.execute("SELECT * FROM ragpipe.keyword_search(%s, %s, %s)",
                                                           (name, text, k)).fetchall()]


def assert_exact(conn, name: str, what: str) -> None:
    for text in ("heron marsh", "coffee pepper garden silver", "walnut cherry kettle ribbon anchor beacon comet"):
        assert_bm25_top(keyword_hits(conn, name, text), bm25_reference(conn, name, text), 10, f"{what}: {text!r}")


def test_searches_during_a_compaction_are_exact_and_never_wait(conn, name, db_url):
    """A compaction is one transaction: searches while it runs (uncommitted, then committed) are exact BM25."""
    from pipelines import store

    coll = bm25_collection(conn, name)
    assert_exact(conn, name, "all in the delta")
    with psycopg.connect(db_url) as compactor:  # not autocommit: the compaction stays open
        assert "compacted" in compactor.execute("SELECT ragpipe.compact_postings(%s)", (coll.id,)).fetchone()[0]
        conn.execute("SET lock_timeout = '2s'")  # a search that waited for the compaction would fail here
        assert_exact(conn, name, "while a compaction is open")
        compactor.commit()
    assert_exact(conn, name, "after the compaction")
    with conn.transaction():
        store.delete_documents(conn, coll, [f"doc-{i}" for i in range(0, 300, 3)])
    store.refresh_text_stats(conn, coll.id, min_change=0)
    assert_exact(conn, name, "deleted chunks masked in the blocks")
    errors: list[BaseException] = []
    stop = threading.Event()

    def searching() -> None:
        try:
            while not stop.is_set():
                api.search("coffee pepper garden silver", collection=name, k=10, mode="keyword")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=searching, daemon=True)
    thread.start()
    try:
        with psycopg.connect(db_url, autocommit=True) as compactor:
            assert "rebuilt" in compactor.execute("SELECT ragpipe.compact_postings(%s, true)", (coll.id,)).fetchone()[0]
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    conn.execute("RESET lock_timeout")
    assert_exact(conn, name, "after a merge that dropped deleted chunks")


def test_a_database_left_by_the_row_layout_migrates_and_stays_exact(db_url):
    """The upgrade: a collection whose postings are rows (migrations up to 012) is exact after `migrate`,
    which made blocks of the same postings from its chunks and dropped the rows and the tsvector GIN index."""
    import numpy as np

    from pipelines import store
    from pipelines.store.database import connect
    from pipelines.store.migrations import migrate
    from tests.conftest import database_at

    with database_at(db_url, "ragpipe_row_layout", last="012_postings_scores.sql") as url:
        with connect(url, autocommit=True) as old:  # loaded as that release did: rows of chunks, then postings
            coll_id = old.execute("INSERT INTO ragpipe.collections (name, model, dimension, chunk_tokens, "
                                  "chunk_overlap, family, settings) VALUES ('upgraded', 'm', 3, 256, 32, 'upgraded', "
                                  "'{\"index\": {\"keyword_candidates\": 5, \"keyword_rescore\": 3}}') "
                                  "RETURNING id").fetchone()[0]
            texts = bm25_chunks(np.random.default_rng(5), 200, 5)
            for i, chunks in enumerate(texts):
                doc = old.execute("INSERT INTO ragpipe.documents (collection_id, source_id, uri, content_hash, "
                                  "metadata) VALUES (%s, %s, 'mem://', 'h', '{}') RETURNING id",
                                  (coll_id, f"doc-{i}")).fetchone()[0]
                for j, text in enumerate(chunks):
                    old.execute("INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, "
                                "char_start, char_end, content_hash, metadata, embedding) "
                                "VALUES (%s, %s, %s, %s, 5, 0, 5, 'c', '{}', '[1,0,0]')", (coll_id, doc, j, text))
            old.execute("SELECT ragpipe.add_postings(%s, NULL)", (coll_id,))
            old.execute("SELECT ragpipe.refresh_text_stats(%s, NULL, 0)", (coll_id,))
            rows = old.execute("SELECT count(*) FROM ragpipe.postings").fetchone()[0]
        migrate(url)
        with connect(url, autocommit=True) as new:
            assert new.execute("SELECT count(*) FROM ragpipe.keyword_postings WHERE segment = 1").fetchone()[0] == rows
            assert new.execute("SELECT to_regclass('ragpipe.postings') IS NULL AND "
                               "to_regclass('ragpipe.chunks_tsv_idx') IS NULL").fetchone()[0]
            want = {t: bm25_reference(new, "upgraded", t) for t in ("heron marsh", "walnut cherry kettle ribbon")}
            for text, reference in want.items():
                assert_bm25_top(keyword_hits(new, "upgraded", text), reference, 10, f"migrated: {text!r}")
            assert store.compact_postings(new, coll_id) == "nothing to compact"


def test_a_compaction_killed_with_sigkill_leaves_the_old_postings_and_the_next_one_completes(conn, name, db_url):
    """kill -9 of the process running a compaction: its transaction never commits, searches stay exact on
    the old postings, and the next compaction (a run's finalize, or verify --repair) does the work."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipelines import store

    coll = bm25_collection(conn, name)
    script = ("import sys, psycopg\n"
              "with psycopg.connect(sys.argv[1], options='-c client_connection_check_interval=100') as c:\n"
              "    print(c.execute('SELECT ragpipe.compact_postings(%s)', (int(sys.argv[2]),)).fetchone()[0], "
              "flush=True)\n"
              "    c.execute('SELECT pg_sleep(600)')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, db_url, str(coll.id)], stdout=subprocess.PIPE, text=True)
    try:
        assert "compacted" in proc.stdout.readline(), "the compaction ran, uncommitted"
        assert_exact(conn, name, "while the compaction waits to commit")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 30
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' "
                       "AND pid <> pg_backend_pid()").fetchone()[0]:
        assert time.monotonic() < deadline, "the killed client's backend ended"
        time.sleep(0.1)
    assert conn.execute("SELECT count(*) FROM ragpipe.posting_segments WHERE collection_id = %s",
                        (coll.id,)).fetchone()[0] == 0, "nothing of the killed compaction is left"
    assert_exact(conn, name, "after the kill")
    assert "compacted: segment 1" in store.compact_postings(conn, coll.id)
    assert_exact(conn, name, "after the next compaction")
