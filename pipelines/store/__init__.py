"""Everything that writes to PostgreSQL: collections, runs, document replacement by COPY, locks, indexes."""

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql
from psycopg.types.json import Jsonb

from pipelines.chunking import Chunk
from pipelines.store.languages import document_languages
from pipelines.store.sqlfiles import query

log = logging.getLogger(__name__)


class CollectionMismatch(ValueError):
    """The collection exists with another embedding model or dimension."""


class CollectionBusy(RuntimeError):
    """Another run holds the collection's write lock."""


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    model: str
    dimension: int
    chunk_tokens: int
    chunk_overlap: int
    settings: dict[str, Any]
    family: str = ""
    """The collection's stable name; `name` is it for the active version, `family@vN` for the others."""
    version: int = 1
    state: str = "active"
    """building, ready (built, not promoted), active, previous (kept for rollback) or rejected."""


@dataclass
class LoadedDocument:
    """A document ready to replace its previous version: row values, chunks and their vectors."""

    source_id: str
    uri: str
    title: str | None
    content_hash: str
    fingerprint: str
    metadata: dict[str, Any]
    chunks: list[Chunk]
    embeddings: np.ndarray
    body_hash: str | None = None
    """Hash of the content alone (not its name or metadata): finds duplicates under other names."""


def _q(name: str) -> sql.SQL:
    return query("store", name)


def ensure_collection(conn: psycopg.Connection, name: str, model: str, dimension: int, chunk_tokens: int,
                      chunk_overlap: int, settings: dict[str, Any], new_version_of: str | None = None) -> Collection:
    """Create the collection (or, with `new_version_of`, the family's next version, named `name` by
    the database), or check that the existing one uses the same model and dimension."""
    params = dict(name=name, model=model, dimension=dimension, chunk_tokens=chunk_tokens,
                  chunk_overlap=chunk_overlap, settings=json.dumps(settings), family=new_version_of)
    with conn.transaction():
        if new_version_of is not None:
            conn.execute(_q("lock_collection_creation"))
            name = conn.execute(_q("create_version"), params).fetchone()[0]
            params["name"] = name
        if get_collection(conn, name) is None:
            conn.execute(_q("lock_collection_creation"))
        conn.execute(_q("upsert_collection"), params)
        existing = get_collection(conn, name)
        assert existing is not None
        if (existing.model, existing.dimension) != (model, dimension):
            raise CollectionMismatch(
                f"collection {name!r} was built with model {existing.model!r} ({existing.dimension} dims); "
                f"it cannot take {model!r} ({dimension} dims): a new model is a new version (pipelines.versions)"
            )
        if (existing.chunk_tokens, existing.chunk_overlap, existing.settings) != (
                chunk_tokens, chunk_overlap, settings):
            conn.execute(_q("update_collection_settings"), dict(params, id=existing.id))
            existing = get_collection(conn, name)
    assert existing is not None
    return existing


def get_collection(conn: psycopg.Connection, name: str) -> Collection | None:
    row = conn.execute(_q("get_collection"), (name,)).fetchone()
    return Collection(*row) if row else None


@contextmanager
def collection_lock(conn: psycopg.Connection, name: str, timeout_s: float, shared: bool = False) -> Iterator[None]:
    """Hold the collection's advisory lock (exclusive for a whole run, shared for parallel batches)."""
    suffix = "_shared" if shared else ""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
    try:
        conn.execute(_q("lock_collection" + suffix), (name,))
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        raise CollectionBusy(
            f"collection {name!r} is being written by another run (waited {timeout_s:g}s); "
            "try again when it finishes, or raise RAGPIPE_LOCK_TIMEOUT"
        ) from None
    finally:
        conn.execute("SELECT set_config('lock_timeout', '0', false)")
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute(_q("unlock_collection" + suffix), (name,))


def start_run(conn: psycopg.Connection, collection_id: int, trigger: str) -> int:
    """Open a run record; earlier runs that can no longer be alive are closed as abandoned."""
    with conn.transaction():
        dead = ["cli", trigger]
        conn.execute(_q("abandon_runs"), (collection_id, dead))
        return conn.execute(_q("start_run"), (collection_id, trigger)).fetchone()[0]


def set_plan_counts(conn: psycopg.Connection, run_id: int, complete: bool, listed: int, unchanged: int,
                    leaving: list[str]) -> None:
    with conn.transaction():
        conn.execute(_q("set_plan_counts"), dict(run_id=run_id, complete=complete, listed=listed,
                                                 unchanged=unchanged, leaving=leaving))


def add_run_counts(conn: psycopg.Connection, run_id: int, **counts: int) -> None:
    names = ("new", "changed", "unchanged", "failed", "deleted", "duplicates", "chunks_embedded", "chunks_reused",
             "api_tokens", "api_tokens_estimated", "context_tokens", "context_tokens_estimated")
    conn.execute(_q("add_run_counts"), dict({n: counts.get(n, 0) for n in names}, run_id=run_id))


def run_failed_everything(conn: psycopg.Connection, run_id: int) -> bool:
    """True when the run had documents and not one of them loaded or stayed (then it must not report success)."""
    return bool(conn.execute(_q("run_failed_everything"), (run_id,)).fetchone()[0])


def finish_run(conn: psycopg.Connection, run_id: int, status: str, error: str | None = None) -> dict[str, Any]:
    with conn.transaction():
        cur = conn.execute(_q("finish_run"), dict(run_id=run_id, status=status, error=error))
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description], row, strict=True))


def document_fingerprints(conn: psycopg.Connection, collection_id: int) -> dict[str, str | None]:
    return dict(conn.execute(_q("document_fingerprints"), (collection_id,)).fetchall())


def forgotten_ids(conn: psycopg.Connection, family: str) -> set[str]:
    """The source ids forgotten in collection `family` (tombstones: never indexed again)."""
    return {row[0] for row in conn.execute(_q("forgotten_ids"), (family,)).fetchall()}


def document_hashes(conn: psycopg.Connection, collection_id: int,
                    source_ids: list[str]) -> dict[str, tuple[str, int | None, str | None]]:
    """source_id → (content hash, id of the run that last wrote the document, fingerprint)."""
    rows = conn.execute(_q("document_hashes"), (collection_id, source_ids)).fetchall()
    return {source_id: (digest, run_id, fingerprint) for source_id, digest, run_id, fingerprint in rows}


def touch_documents(conn: psycopg.Connection, collection_id: int, run_id: int, fingerprints: dict[str, str]) -> None:
    """Record new fingerprints for documents whose content did not change."""
    if fingerprints:
        conn.execute(_q("touch_documents"), (run_id, list(fingerprints), list(fingerprints.values()), collection_id))


def cached_embeddings(conn: psycopg.Connection, model: str, dimension: int,
                      hashes: Iterable[str], half: bool = False) -> dict[str, np.ndarray]:
    """Embeddings of these chunk hashes by the same model at the same width: stored in any collection
    or version, or kept in the embedding cache. A halfvec collection's 2-byte vectors serve only
    another (`half`)."""
    rows = conn.execute(_q("cached_embeddings"), dict(model=model, dimension=dimension, half=half,
                                                      hashes=list(set(hashes)))).fetchall()
    return {h: np.asarray(v, dtype=np.float32) if not hasattr(v, "to_numpy") else v.to_numpy() for h, v in rows}


def replace_documents(conn: psycopg.Connection, collection: Collection, run_id: int,
                      docs: list[LoadedDocument]) -> None:
    """Replace each document's row and chunks (delete + upsert + COPY). Call inside a transaction."""
    if not docs:
        return
    ids = [d.source_id for d in docs]
    delete_chunks_of(conn, collection, ids)
    rows = conn.execute(_q("upsert_documents"), (
        collection.id, run_id, ids, [d.uri for d in docs], [d.title for d in docs], [d.content_hash for d in docs],
        [d.fingerprint for d in docs], [json.dumps(d.metadata) for d in docs], [len(d.chunks) for d in docs],
        [d.body_hash for d in docs],
    )).fetchall()
    languages, fell_back = document_languages(conn, collection, docs)
    # keyword search reads new chunks as its delta: nothing to write for it here
    copy_chunks(conn, collection.id, dict(rows), docs, languages, half=stores_halfvec(collection))
    for d, reason in fell_back:  # indexed, with a note: `ragpipe status --failures` lists it
        record_failure(conn, run_id, collection.id, d.source_id, d.uri, "language", reason)


def stores_halfvec(collection: Collection) -> bool:
    """`storage: halfvec`: the table holds the vectors as halfvec (embedding_half), not float32."""
    return collection.settings.get("storage") == "halfvec"


def copy_chunks(conn: psycopg.Connection, collection_id: int, doc_ids: dict[str, int],
                docs: list[LoadedDocument], languages: dict[str, int], half: bool = False) -> None:
    """Stream the documents' chunks and vectors into ragpipe.chunks with COPY ... (FORMAT BINARY);
    with `half`, the vectors into embedding_half (2 bytes a dimension).

    PostgreSQL refuses COPY FROM into a table whose row-level security applies to the caller (a
    loader role that is not the table owner, once tenants exist): then the rows are copied into a
    temporary table and moved over with one INSERT ... SELECT, which the policies check."""
    staged = conn.execute(_q("row_security_active")).fetchone()[0]
    if staged:
        conn.execute(_q("create_chunk_stage"))
    with conn.cursor().copy(_q("copy_chunk_stage" if staged else "copy_chunks")) as copy:
        copy.set_types(["int4", "int8", "int4", "text", "int4", "int4", "int4", "text[]", "text", "jsonb",
                        "vector", "halfvec", "oid", "text"])  # regconfig travels as its oid
        for d in docs:
            meta = Jsonb(d.metadata)
            for chunk, vector in zip(d.chunks, d.embeddings, strict=True):
                copy.write_row((collection_id, doc_ids[d.source_id], chunk.ordinal, chunk.text, chunk.token_count,
                                chunk.char_start, chunk.char_end, list(chunk.heading_path), chunk.content_hash,
                                meta, None if half else vector, HalfVector(vector) if half else None,
                                languages[d.source_id], chunk.written_context or None))
    if staged:
        conn.execute(_q("insert_chunk_stage"))


def has_keyword_index(collection: Collection) -> bool:
    """False for a collection declared `keyword: false`: no postings, no BM25 statistics."""
    return collection.settings.get("keyword", True) is not False


def compact_postings(conn: psycopg.Connection, collection_id: int, full_merge: bool = False) -> str:
    """Turn the chunks loaded since the last compaction (keyword search's delta) into a segment of
    BM25 postings in blocks, merging segments as they pile up; `full_merge` makes them all again from
    the chunks (ragpipe.compact_postings). Returns what it did."""
    return conn.execute(_q("compact_postings"), (collection_id, full_merge)).fetchone()[0]


def record_failure(conn: psycopg.Connection, run_id: int | None, collection_id: int, source_id: str,
                   uri: str | None, stage: str, error: str) -> bool:
    """Record why a document was not loaded; False if this run had already recorded it (a retry)."""
    return conn.execute(_q("record_failure"), (run_id, collection_id, source_id, uri, stage, error[:2000])
                        ).fetchone() is not None


def lock_bodies(conn: psycopg.Connection, collection_id: int, body_hashes: list[str]) -> None:
    """Hold, until the transaction ends, a lock on each content in the collection: a parallel load of
    the same content waits, then sees this one. Call inside a transaction."""
    if body_hashes:
        conn.execute(_q("lock_bodies"), (collection_id, body_hashes))


def duplicates_of(conn: psycopg.Connection, collection_id: int, run_id: int, bodies: dict[str, str]) -> dict[str, str]:
    """For documents (source id → body hash), the other document of the collection with exactly the
    same content that this run keeps, for those that have one: source id → that document."""
    if not bodies:
        return {}
    return dict(conn.execute(_q("duplicates_of"), dict(
        collection_id=collection_id, run_id=run_id, source_ids=list(bodies), body_hashes=list(bodies.values()),
    )).fetchall())


def delete_chunks_of(conn: psycopg.Connection, collection: Collection, source_ids: list[str]) -> None:
    """Delete the documents' chunks, keeping their vectors in the embedding cache."""
    conn.execute(_q("delete_chunks_of"), dict(collection_id=collection.id, source_ids=source_ids,
                                              model=collection.model))


def delete_documents(conn: psycopg.Connection, collection: Collection, source_ids: list[str]) -> int:
    """Delete documents and their chunks (vectors kept in the cache). Returns how many were deleted."""
    if not source_ids:
        return 0
    delete_chunks_of(conn, collection, source_ids)
    return conn.execute(_q("delete_documents"), (collection.id, source_ids)).rowcount


def ensure_hnsw_index(conn: psycopg.Connection, collection: Collection) -> bool:
    """Build the collection's HNSW (cosine) index if it is missing; True when it was built now.

    ragpipe.build_hnsw_index (sql/api/010_search.sql) names it and sizes its memory."""
    built, needed_mb, memory_mb = conn.execute(_q("build_hnsw_index"), (collection.id,)).fetchone()
    if built and needed_mb > memory_mb:
        log.warning("the HNSW graph of %s needed ~%d MB but maintenance_work_mem was capped at %d MB: it was "
                    "built on disk, slowly; raise index.maintenance_work_mem_cap_mb", collection.name, needed_mb,
                    memory_mb)
    return bool(built)


def analyze_collection(conn: psycopg.Connection, collection_id: int) -> None:
    """VACUUM the collection's chunk and postings partitions (delta and blocks), then refresh their planner statistics
    and the documents table's. The VACUUM sets the visibility map, without which keyword_search's
    index-only scans read the heap for every posting (4x slower at 1M chunks just after a load). It
    needs an autocommit connection and the tables' owner (or MAINTAIN); a role without either
    leaves it to autovacuum."""
    if conn.autocommit:
        try:
            names = conn.execute(_q("collection_partitions"), {"id": collection_id}).fetchone()
            conn.execute(sql.SQL("VACUUM (SKIP_LOCKED) {}").format(
                sql.SQL(", ").join(sql.Identifier("ragpipe", n) for n in names)))
        except psycopg.Error as exc:
            log.info("VACUUM of collection %s left to autovacuum: %s", collection_id, str(exc).strip())
    conn.execute(_q("analyze_collection"), (collection_id,))


def set_index_settings(conn: psycopg.Connection, collection_id: int, **index: int) -> None:
    """Store some of the collection's `index` settings that searches read (ef_search,
    keyword_candidates, keyword_rescore); the next run resets them from collections.yml."""
    conn.execute(_q("set_index_settings"), (Jsonb(index), collection_id))


def refresh_text_stats(conn: psycopg.Connection, collection_id: int, run_id: int | None = None,
                       min_change: float = 0.1) -> bool:
    """Refresh the collection's keyword (BM25) statistics if missing or `min_change` of it changed since,
    and then its postings' impacts if the mean chunk length drifted (ragpipe.refresh_impacts)."""
    params = dict(collection=collection_id, run=run_id, min_change=min_change)
    refreshed = bool(conn.execute(_q("refresh_text_stats"), params).fetchone()[0])
    if refreshed and conn.execute(_q("refresh_impacts"), params).fetchone()[0]:
        log.info("recomputed the keyword impacts of collection %s for its new mean chunk length", collection_id)
    return refreshed


def run_wrote(conn: psycopg.Connection, run_id: int) -> bool:
    """Did the run add, change or delete any document? (If not, statistics need no refresh.)"""
    return conn.execute(_q("run_wrote"), (run_id,)).fetchone()[0]


# Versions of a collection (sql/migrations/007_versions.sql, sql/api/015_versions.sql).

def versions(conn: psycopg.Connection, family: str) -> list[dict[str, Any]]:
    """Every version of the collection, oldest first, with its size and evaluation."""
    cur = conn.execute(_q("versions"), (family,))
    return [dict(zip([c.name for c in cur.description], row, strict=True)) for row in cur.fetchall()]


def set_version_state(conn: psycopg.Connection, collection: Collection, state: str,
                      evaluation: dict[str, Any] | None = None) -> None:
    """Mark a version that is not the active one (building → ready or rejected)."""
    conn.execute(_q("set_version_state"), dict(id=collection.id, state=state,
                                               evaluation=Jsonb(evaluation) if evaluation else None))


def set_evaluation(conn: psycopg.Connection, collection: Collection, evaluation: dict[str, Any]) -> None:
    conn.execute(_q("set_evaluation"), dict(id=collection.id, evaluation=Jsonb(evaluation)))


def promote_version(conn: psycopg.Connection, family: str, version: int) -> int:
    """Make `version` the active one, atomically; returns the version that was active."""
    with conn.transaction():
        return conn.execute(_q("promote_version"), (family, version)).fetchone()[0]


def rollback_version(conn: psycopg.Connection, family: str) -> int:
    """Activate the version that was active before; returns it."""
    with conn.transaction():
        return conn.execute(_q("rollback_version"), (family,)).fetchone()[0]


def drop_version(conn: psycopg.Connection, collection_id: int) -> None:
    """Drop a version that is not active (its vectors stay in the embedding cache)."""
    with conn.transaction():
        conn.execute(_q("cache_vectors_of_collection"), dict(id=collection_id))
        conn.execute(_q("lock_collection_creation"))
        conn.execute(_q("drop_version"), (collection_id,))


def prune_cache(conn: psycopg.Connection, max_rows: int, max_age_days: float) -> tuple[int, int]:
    """Apply the embedding cache's retention; returns (entries removed, entries kept)."""
    with conn.transaction():
        removed = conn.execute(_q("prune_cache"), dict(max_rows=max_rows, max_age_days=max_age_days)).fetchone()[0]
    return int(removed), int(conn.execute(_q("count_cache")).fetchone()[0])


def cached_contexts(conn: psycopg.Connection, keys: list[str]) -> dict[str, str]:
    """Written chunk contexts already cached, by key (pipelines/sync/enrich.py)."""
    return dict(conn.execute(_q("cached_contexts"), (keys,)).fetchall()) if keys else {}


def cache_contexts(conn: psycopg.Connection, family: str, source_id: str, contexts: dict[str, str]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(_q("cache_context"), [(k, family, source_id, v) for k, v in contexts.items()])
