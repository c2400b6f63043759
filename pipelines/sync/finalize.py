"""Finalize: delete what left a completely listed source, build the HNSW index, refresh keyword and
planner statistics (once 10% changed), prune the embedding cache, close the run."""

import logging
import time
from typing import Any

import psycopg

from pipelines import store
from pipelines.config import CollectionSpec
from pipelines.settings import load_settings

log = logging.getLogger(__name__)


def finalize_run(conn: psycopg.Connection, spec: CollectionSpec, run_id: int, deleted: list[str],
                 status: str = "succeeded", error: str | None = None) -> dict[str, Any]:
    """Delete documents gone from a completely listed source, build the index, close the run."""
    collection = store.get_collection(conn, spec.name)
    assert collection is not None, f"collection {spec.name!r} vanished during the run"
    started = time.perf_counter()
    if status == "succeeded" and store.run_failed_everything(conn, run_id):
        status, error = "failed", ("every document this run read failed, or the source could not be listed; "
                          "see `ragpipe status --failures`")
    if status == "succeeded":
        with conn.transaction():
            removed = store.delete_documents(conn, collection, deleted)
            store.add_run_counts(conn, run_id, deleted=removed)
        with conn.transaction():
            if store.ensure_hnsw_index(conn, collection):
                log.info("built HNSW index for collection %s", spec.name)
        # Keyword (BM25) and planner statistics are refreshed together, once the runs since the
        # last refresh changed 10% of the collection.
        if store.has_keyword_index(collection):  # the run's postings into blocks (ragpipe.compact_postings)
            with conn.transaction():
                log.info("collection %s: postings %s", spec.name, store.compact_postings(conn, collection.id))
        if store.has_keyword_index(collection) and store.run_wrote(conn, run_id) and \
                store.refresh_text_stats(conn, collection.id, run_id):
            store.analyze_collection(conn, collection.id)
            log.info("refreshed keyword and planner statistics for collection %s", spec.name)
        settings = load_settings()
        store.prune_cache(conn, settings.cache_max_rows, settings.cache_max_age_days)
    return dict(store.finish_run(conn, run_id, status, error), finalize_seconds=time.perf_counter() - started)
