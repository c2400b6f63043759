"""Upgrades: a database left by an earlier release is migrated in place without losing anything."""

import json

import psycopg
import pytest

from pipelines.store.database import connect
from pipelines.store.migrations import migrate

HYBRID_SEARCH = "ragpipe.hybrid_search(text, text, vector, int, jsonb, float8, float8, int, int, text, float8, text)"

CHUNKS = ("SELECT id, collection_id, document_id, ordinal, text, metadata, embedding::text, tsv::text, tenant "
          "FROM ragpipe.chunks ORDER BY id")


@pytest.fixture
def old_database(db_url: str):
    """A database of its own on the test server, migrated only as far as release 0.4 (shared chunks table)."""
    url = psycopg.conninfo.make_conninfo(db_url, dbname="ragpipe_upgrade")
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS ragpipe_upgrade WITH (FORCE)")
        admin.execute("CREATE DATABASE ragpipe_upgrade")
        admin.execute("DROP ROLE IF EXISTS old_app")
        admin.execute("CREATE ROLE old_app NOLOGIN")
    migrate(url, last="004_keyword_stats.sql")
    yield url
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE ragpipe_upgrade WITH (FORCE)")
        admin.execute("DROP ROLE old_app")


def fill_old_schema(conn: psycopg.Connection) -> tuple[int, int]:
    """Two collections in the shared chunks table, an HNSW partial index on the first, a grant."""
    ids = []
    for name in ("alpha", "beta"):
        coll = conn.execute("INSERT INTO ragpipe.collections (name, model, dimension, chunk_tokens, chunk_overlap) "
                            "VALUES (%s, 'm', 3, 256, 32) RETURNING id", (name,)).fetchone()[0]
        ids.append(coll)
        for d in range(4):
            doc = conn.execute("INSERT INTO ragpipe.documents (collection_id, source_id, uri, content_hash, metadata) "
                               "VALUES (%s, %s, 'mem://', 'h', %s) RETURNING id",
                               (coll, f"{name}-{d}", '{"tenant": "acme"}' if d == 0 else "{}")).fetchone()[0]
            for o in range(3):
                conn.execute("INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, "
                             "char_start, char_end, content_hash, metadata, embedding) "
                             "VALUES (%s, %s, %s, %s, 5, 0, 5, 'c', %s, %s)",
                             (coll, doc, o, f"{name} apples number {d} {o}", '{"tenant": "acme"}' if d == 0 else "{}",
                              f"[1,{d},{o + 1}]"))
    conn.execute(f"CREATE INDEX chunks_hnsw_c{ids[0]} ON ragpipe.chunks "
                 f"USING hnsw ((embedding::vector(3)) vector_cosine_ops) WHERE collection_id = {ids[0]}")
    conn.execute("GRANT SELECT, INSERT ON ragpipe.chunks TO old_app")
    conn.execute("CREATE VIEW ragpipe.chunk_sizes AS SELECT collection_id, sum(length(text)) AS chars "
                 "FROM ragpipe.chunks GROUP BY collection_id")  # a view of a user's own
    conn.execute("GRANT SELECT ON ragpipe.chunk_sizes TO old_app")
    return ids[0], ids[1]


def test_upgrade_to_partitioned_chunks_keeps_every_chunk_index_and_grant(old_database):
    with connect(old_database, autocommit=True, vector_types=False) as conn:
        alpha, beta = fill_old_schema(conn)
        before = conn.execute(CHUNKS).fetchall()
        sizes = conn.execute("SELECT * FROM ragpipe.chunk_sizes ORDER BY 1").fetchall()
    assert len(before) == 24

    assert "migrations/005_chunk_partitions.sql" in migrate(old_database)

    with connect(old_database, autocommit=True) as conn:
        assert conn.execute(CHUNKS).fetchall() == before, "every chunk kept, ids and all"
        assert conn.execute("SELECT DISTINCT language::text FROM ragpipe.chunks").fetchall() == [("english",)], \
            "migration 010: chunks made before languages stay english, their tsvectors unchanged"
        leaves = {r[0]: r[1] for r in conn.execute(
            "SELECT relid::regclass::text, (SELECT count(*) FROM ragpipe.chunks c WHERE c.tableoid = relid) "
            "FROM pg_partition_tree('ragpipe.chunks') WHERE isleaf")}
        assert leaves == {f"ragpipe.chunks_c{alpha}": 12, f"ragpipe.chunks_c{beta}": 12}
        hnsw = conn.execute("SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid::regclass::text LIKE "
                            "'ragpipe.chunks_hnsw_c%'").fetchall()
        assert hnsw == [(f"ragpipe.chunks_c{alpha}",)], "the index that existed is rebuilt on its partition"
        assert [conn.execute("SELECT has_table_privilege('old_app', 'ragpipe.chunks', %s)", (p,)).fetchone()[0]
                for p in ("SELECT", "INSERT", "DELETE")] == [True, True, False]
        assert conn.execute("SELECT * FROM ragpipe.chunk_sizes ORDER BY 1").fetchall() == sizes
        assert conn.execute("SELECT has_table_privilege('old_app', 'ragpipe.chunk_sizes', 'SELECT')").fetchone()[0]
        assert conn.execute("SELECT collection, chunks FROM ragpipe.collection_stats ORDER BY 1").fetchall() == [
            ("alpha", 12), ("beta", 12)]
        assert conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'ragpipe.chunks'::regclass").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'chunks'").fetchone()[0] == 2
        hits = conn.execute("SELECT text FROM ragpipe.semantic_search('alpha', '[1,3,3]', 3)").fetchall()
        assert [h[0] for h in hits] == nearest("alpha", [1, 3, 3], 3)
        assert conn.execute("SELECT chunk_id FROM ragpipe.keyword_search('beta', 'apples', 50)").rowcount == 12
        new_id = conn.execute(
            "INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, char_start, "
            "char_end, content_hash, embedding) SELECT collection_id, document_id, 9, 'x', 1, 0, 1, 'c', embedding "
            "FROM ragpipe.chunks WHERE collection_id = %s LIMIT 1 RETURNING id", (beta,)).fetchone()[0]
        assert new_id > max(r[0] for r in before), "ids continue from the old sequence"


def nearest(name: str, query: list[float], k: int) -> list[str]:
    """The texts fill_old_schema gave the k chunks nearest to query by cosine, computed here."""
    import numpy as np

    q = np.array(query) / np.linalg.norm(query)
    scored = [(-float(np.dot(q, v / np.linalg.norm(v))), f"{name} apples number {d} {o}")
              for d in range(4) for o in range(3) for v in [np.array([1, d, o + 1])]]
    return [text for _, text in sorted(scored)[:k]]


def test_managed_postgres_owner_without_superuser_or_createrole(tmp_path, corpus):
    """As on RDS, Cloud SQL or Azure: the owner is no superuser and cannot create roles; an admin
    created the vector extension. What needs more says what to run, and nothing is half done."""
    import re

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from pipelines.store.database import connect, embedded_server, stop_embedded_server
    from tests.conftest import ragpipe

    pgdata = tmp_path / "managed-pgdata"
    admin_url = embedded_server(pgdata).get_uri()
    try:
        with connect(admin_url, autocommit=True, vector_types=False) as admin:
            admin.execute("CREATE ROLE app_owner LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
            admin.execute("CREATE DATABASE managed OWNER app_owner")
        with connect(make_conninfo(admin_url, dbname="managed"), autocommit=True, vector_types=False) as admin:
            admin.execute("CREATE EXTENSION vector")
        params = conninfo_to_dict(admin_url)
        owner = {"RAGPIPE_DATABASE_URL": make_conninfo(host=params["host"], port=params.get("port"),
                                                       user="app_owner", dbname="managed")}

        refused = ragpipe("db", "migrate", check=False, env=owner)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "nothing was changed" in refused.stderr
        admin_sql = re.search(r"`([^`]+)`", refused.stderr).group(1)
        assert admin_sql == ("CREATE ROLE ragpipe_reader NOLOGIN; CREATE ROLE ragpipe_loader NOLOGIN; "
                         "CREATE ROLE ragpipe_tenant_reader NOLOGIN;")
        with connect(make_conninfo(admin_url, dbname="managed"), autocommit=True, vector_types=False) as admin:
            assert admin.execute("SELECT to_regnamespace('ragpipe')").fetchone() == (None,), "nothing half done"
            admin.execute(admin_sql)

        ragpipe("db", "migrate", env=owner)
        summary = json.loads(ragpipe("ingest", str(corpus), "-c", "managed", "--json", env=owner).stdout)
        assert summary["status"] == "succeeded" and summary["new"] > 0
        hits = json.loads(ragpipe("search", "coffee and blood vessels", "-c", "managed", "--json", env=owner).stdout)
        assert hits

        needs_admin = ragpipe("db", "grant-reader", "app_reader", check=False, env=owner)
        assert needs_admin.returncode == 1 and "CREATE ROLE app_reader NOLOGIN;" in needs_admin.stderr
        with connect(make_conninfo(admin_url, dbname="managed"), autocommit=True, vector_types=False) as admin:
            admin.execute("CREATE ROLE app_reader NOLOGIN")
        ragpipe("db", "grant-reader", "app_reader", env=owner)
        with connect(make_conninfo(admin_url, dbname="managed"), autocommit=True) as admin:
            assert admin.execute("SELECT has_function_privilege('app_reader', 'ragpipe.keyword_search(text, text, int, "
                                 "jsonb, text)', 'EXECUTE')").fetchone() == (True,)
    finally:
        stop_embedded_server(pgdata)


def test_search_functions_get_one_result_type_and_keep_their_grants(old_database):
    """Migration 006: the search functions return ragpipe.search_hit (source_id, not document_id);
    the functions replaced keep every role's EXECUTE grant, build_hnsw_index's included."""
    with connect(old_database, autocommit=True, vector_types=False) as conn:
        fill_old_schema(conn)
    migrate(old_database, last="005_chunk_partitions.sql")  # the schema of the last release, without its API
    with connect(old_database, autocommit=True, vector_types=False) as conn:
        conn.execute("""CREATE FUNCTION ragpipe.semantic_search(collection text, query_embedding vector,
                            k int DEFAULT 10, filter jsonb DEFAULT NULL)
                        RETURNS TABLE (chunk_id bigint, document_id text, uri text, title text, text text,
                                       metadata jsonb, score double precision)
                        LANGUAGE sql AS 'SELECT NULL::bigint, NULL, NULL, NULL, NULL, NULL::jsonb, 0::float8'""")
        conn.execute("""CREATE FUNCTION ragpipe.hybrid_search(collection text, query_text text, query_embedding vector,
                            k int, filter jsonb, semantic_weight float8, keyword_weight float8, rrf_k int,
                            candidates int)
                        RETURNS TABLE (chunk_id bigint, document_id text, uri text, title text, text text,
                                       metadata jsonb, score double precision)
                        LANGUAGE sql AS 'SELECT NULL::bigint, NULL, NULL, NULL, NULL, NULL::jsonb, 0::float8'""")
        conn.execute("GRANT EXECUTE ON FUNCTION ragpipe.semantic_search(text, vector, int, jsonb), "
                     "ragpipe.build_hnsw_index(int, int), "
                     "ragpipe.hybrid_search(text, text, vector, int, jsonb, float8, float8, int, int) TO old_app")

    assert "migrations/006_search_hit.sql" in migrate(old_database)

    with connect(old_database, autocommit=True) as conn:
        def may(function: str) -> bool:
            return conn.execute("SELECT has_function_privilege('old_app', %s, 'EXECUTE')", (function,)).fetchone()[0]

        assert may("ragpipe.semantic_search(text, vector, int, jsonb)")
        assert may("ragpipe.build_hnsw_index(int)")
        assert may(HYBRID_SEARCH)
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'hybrid_search'").fetchone() == (1,)
        assert conn.execute("SELECT to_regprocedure('ragpipe.build_hnsw_index(int, int)')").fetchone() == (None,)
        results = conn.execute("SELECT DISTINCT pg_get_function_result(oid) FROM pg_proc WHERE proname IN "
                               "('semantic_search', 'keyword_search', 'hybrid_search', 'similar_chunks', "
                               "'similar_documents', 'tenant_search')").fetchall()
        assert results == [("SETOF ragpipe.search_hit",)]
        hit = conn.execute("SELECT * FROM ragpipe.semantic_search('alpha', '[1,0,1]', 1)")
        assert [c.name for c in hit.description][:2] == ["chunk_id", "source_id"]
        assert hit.fetchone()[1] == "alpha-0"


def test_the_language_argument_replaces_the_search_functions_and_keeps_their_grants(old_database):
    """A database of the release before `language`: keyword_search(text, text, int, jsonb) and the
    11-argument hybrid_search are replaced by one function each, granted to the same roles."""
    migrate(old_database)
    hit = "SELECT NULL::bigint, NULL, NULL, NULL, NULL, NULL::jsonb, 0::float8"
    with connect(old_database, autocommit=True, vector_types=False) as conn:
        conn.execute("DROP FUNCTION ragpipe.keyword_search(text, text, int, jsonb, text)")
        conn.execute("DROP FUNCTION ragpipe.hybrid_search(text, text, vector, int, jsonb, float8, float8, int, int, "
                     "text, float8, text)")
        conn.execute(f"""CREATE FUNCTION ragpipe.keyword_search(collection text, query_text text, k int DEFAULT 10,
                             filter jsonb DEFAULT NULL) RETURNS SETOF ragpipe.search_hit LANGUAGE sql AS '{hit}'""")
        conn.execute(f"""CREATE FUNCTION ragpipe.hybrid_search(collection text, query_text text, query_embedding vector,
                             k int DEFAULT 10, filter jsonb DEFAULT NULL, semantic_weight float8 DEFAULT NULL,
                             keyword_weight float8 DEFAULT NULL, rrf_k int DEFAULT NULL, candidates int DEFAULT NULL,
                             fusion text DEFAULT NULL, alpha float8 DEFAULT NULL)
                         RETURNS SETOF ragpipe.search_hit LANGUAGE sql AS '{hit}'""")
        conn.execute("GRANT EXECUTE ON FUNCTION ragpipe.keyword_search(text, text, int, jsonb), "
                     "ragpipe.hybrid_search(text, text, vector, int, jsonb, float8, float8, int, int, text, float8) "
                     "TO old_app")
        conn.execute("DELETE FROM ragpipe.schema_migrations WHERE name LIKE 'api/%'")  # the API of that release

    assert "api/010_search.sql" in migrate(old_database)
    with connect(old_database, autocommit=True) as conn:
        def may(function: str) -> bool:
            return conn.execute("SELECT has_function_privilege('old_app', %s, 'EXECUTE')", (function,)).fetchone()[0]

        assert may("ragpipe.keyword_search(text, text, int, jsonb, text)")
        assert may(HYBRID_SEARCH)
        functions = conn.execute("SELECT proname, count(*) FROM pg_proc WHERE proname IN ('keyword_search', "
                                 "'hybrid_search') GROUP BY 1 ORDER BY 1").fetchall()
        assert functions == [("hybrid_search", 1), ("keyword_search", 1)]
