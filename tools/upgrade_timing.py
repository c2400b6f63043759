"""How long an upgrade from the row layout of the keyword index takes, and what it holds meanwhile.

    python -m tools.upgrade_timing --chunks 1000000 [--record docs/benchmarks-large.json]

Builds a database of its own on the embedded server as the release before postings in blocks left it
(migrations up to 012: BM25 postings one row each, the tsvector GIN index), loads `--chunks` chunks of
the bench corpus (as tools.keyword_layouts makes them, 8-dimension vectors) and writes their postings
as that release did, then times `migrate` one migration at a time (013 to the newest, then the SQL
API). Searches of the collection wait for the migrations that lock its tables (015 rebuilds the
keyword index from the chunks, 020 rewrites the chunks for their context column); the printout says
how long each took. The database is dropped afterwards."""

import argparse
import time

import numpy as np
import psycopg

from pipelines.settings import SQL_DIR
from pipelines.store.connection import open_database
from pipelines.store.migrations import migrate
from tools.synthetic import nearby_sentences, sentences

ROW_LAYOUT = "012_postings_scores.sql"
"""The last migration of the release whose keyword index was one row a posting."""


def load_row_layout(url: str, chunks: int) -> tuple[int, float, float]:
    """`chunks` chunks (one a document) and their postings as rows: the collection id, the COPY's
    seconds and the postings' (ragpipe.add_postings, as that release's loads called it)."""
    pool = sentences(limit=1_000_000)
    rng = np.random.default_rng(2)
    with psycopg.connect(url, autocommit=True) as conn:
        coll = conn.execute("INSERT INTO ragpipe.collections (name, model, dimension, chunk_tokens, chunk_overlap, "
                            "family, settings) VALUES ('upgraded', 'm', 8, 256, 32, 'upgraded', '{}') "
                            "RETURNING id").fetchone()[0]
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy("COPY ragpipe.documents (id, collection_id, source_id, uri, content_hash, metadata) "
                          "FROM STDIN") as copy:
                for i in range(1, chunks + 1):
                    copy.write_row((i, coll, f"s{i}", f"mem://{i}", "h", f'{{"shard": {i % 50}}}'))
            with cur.copy("COPY ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, char_start, "
                          "char_end, content_hash, metadata, embedding) FROM STDIN") as copy:
                for i in range(1, chunks + 1):
                    text = " ".join(pool[j] for j in nearby_sentences(rng, len(pool)))
                    vector = "[" + ",".join(f"{x:.4f}" for x in rng.normal(size=8)) + "]"
                    copy.write_row((coll, i, 0, text, 80, 0, len(text), "c", f'{{"shard": {i % 50}}}', vector))
        conn.execute("SELECT setval(pg_get_serial_sequence('ragpipe.documents', 'id'), %s)", (chunks,))
        copy_s = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("SELECT ragpipe.add_postings(%s, NULL)", (coll,))
        conn.execute("SELECT ragpipe.refresh_text_stats(%s, NULL, 0)", (coll,))
        postings_s = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE")
    return coll, copy_s, postings_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--record", help="a results file (docs/benchmarks*.json) to merge the figures into")
    args = parser.parse_args()
    from pipelines.embed.hardware import cpu_model_and_flags

    print(f"machine: {cpu_model_and_flags()[0]}")
    server = open_database()
    url = psycopg.conninfo.make_conninfo(server, dbname="ragpipe_upgrade_timing")
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute('DROP DATABASE IF EXISTS "ragpipe_upgrade_timing" WITH (FORCE)')
        admin.execute('CREATE DATABASE "ragpipe_upgrade_timing"')
    try:
        migrate(url, last=ROW_LAYOUT)
        coll, copy_s, postings_s = load_row_layout(url, args.chunks)
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT count(*) FROM ragpipe.postings").fetchone()[0]
        print(f"{args.chunks} chunks as the row layout: COPY {copy_s:.1f} s, {rows} postings written as rows "
              f"in {postings_s:.1f} s")
        took = {}
        for path in sorted((SQL_DIR / "migrations").glob("*.sql")):
            if path.name > ROW_LAYOUT:
                started = time.perf_counter()
                migrate(url, last=path.name)
                took[path.stem] = time.perf_counter() - started
                print(f"  {path.name}: {took[path.stem]:.1f} s", flush=True)
        started = time.perf_counter()
        migrate(url)
        took["api"] = time.perf_counter() - started
        print(f"  the SQL API: {took['api']:.1f} s")
        with psycopg.connect(url, autocommit=True) as conn:
            segments = conn.execute("SELECT count(*), coalesce(sum(postings), 0) FROM ragpipe.posting_segments "
                                    "WHERE collection_id = %s", (coll,)).fetchone()
            hits = conn.execute("SELECT count(*) FROM ragpipe.keyword_search('upgraded', 'asthma diet', 10)"
                                ).fetchone()[0]
        total = sum(took.values())
        print(f"upgrade of {args.chunks} chunks: {total:.1f} s in all; afterwards {segments[0]} segment of "
              f"{segments[1]} postings in blocks, a search returns {hits} hits")
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "ragpipe_upgrade_timing" WITH (FORCE)')
    if args.record:
        from pathlib import Path

        from tools.benchmarks.report import scale_label
        from tools.keyword_layouts import record

        scale = scale_label(args.chunks)
        record(Path(args.record), f"python -m tools.upgrade_timing --chunks {args.chunks}", {
            f"upgrade.{scale}.seconds": round(total, 1),
            f"upgrade.{scale}.blocks_seconds": round(took.get("015_blocks_from_chunks", 0), 1),
            f"upgrade.{scale}.chunk_context_seconds": round(took.get("020_chunk_context", 0), 1),
            f"upgrade.{scale}.row_postings_seconds": round(postings_s, 1)})


if __name__ == "__main__":
    main()
