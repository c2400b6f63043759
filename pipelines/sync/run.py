"""One collection row synced with its source in this process: plan → batches (read ahead in a
thread, embedded in groups, loaded in a thread while the next group encodes) → finalize. The
Airflow DAGs run the same stages as separate tasks (pipelines/airflow/steps.py)."""

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import psycopg

from pipelines import store
from pipelines.collection import open_collection
from pipelines.config import CollectionSpec
from pipelines.embed import Embedder
from pipelines.sources import DocumentRef, make_source
from pipelines.store.database import connect
from pipelines.sync.encode import EMBED_AT_LEAST, embed_batch, embedding_groups, new_texts
from pipelines.sync.finalize import finalize_run
from pipelines.sync.load import BatchResult, write_batch, write_group
from pipelines.sync.plan import Plan, plan_run
from pipelines.sync.read import BatchWork, read_batch

READ_AHEAD_MAX = 16
"""Batches an in-process run reads ahead at most (the memory they hold is the bound)."""


def sync_collection(conn: psycopg.Connection, url: str, spec: CollectionSpec, full_refresh: bool, limit: int | None,
                    trigger: str, progress: Callable[[int, int], None] | None,
                    allow_mass_delete: bool = False) -> dict[str, Any]:
    """One run of the collection row `spec.name`: plan, batches (read ahead, embed, load), finalize."""
    plan = plan_run(conn, spec, full_refresh, limit, trigger, allow_mass_delete)
    done = 0

    def loaded(work: BatchWork) -> None:  # in the loading thread, after each batch's commit
        nonlocal done
        done += len(work.refs)
        if progress:
            progress(done, len(plan.todo))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragpipe-load") as loader:
        loading: Future[None] | None = None  # the previous group's load, on `conn`, while this one encodes
        try:
            collection, embedder = open_collection(conn, spec)
            for group in embedding_groups(_read_ahead(url, collection, embedder, spec, plan, full_refresh)):
                embed_batch(*group, embedder=embedder)
                if loading:
                    loading.result()
                loading = loader.submit(write_group, conn, collection, plan.run_id, group, loaded)
            if loading:
                loading.result()
        except BaseException as exc:
            if loading:  # a load in flight ends (commits or rolls back) before the run is closed
                wait([loading])
            if not conn.broken:
                store.finish_run(conn, plan.run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
    return dict(finalize_run(conn, spec, plan.run_id, plan.deleted), collection=spec.name)


def process_batch(conn: psycopg.Connection, spec: CollectionSpec, run_id: int, refs: list[DocumentRef],
                  full_refresh: bool = False) -> BatchResult:
    """Read, extract, chunk, embed and load a batch of documents, committing every COMMIT_EVERY
    documents; safe to retry: documents already committed are recognised by their content hash."""
    collection, embedder = open_collection(conn, spec)
    work = read_batch(conn, collection, embedder, make_source(spec.source), refs, run_id, full_refresh,
                      spec.duplicates == "skip")
    embed_batch(work, embedder=embedder)
    return write_batch(conn, collection, run_id, work)


def _read_ahead(url: str, collection: store.Collection, embedder: Embedder, spec: CollectionSpec, plan: Plan,
                full_refresh: bool) -> Iterator[BatchWork]:
    """Yield the plan's batches read and chunked, reading the following ones in a thread (on its
    own connection) while the caller embeds and loads: extraction overlaps embedding. The thread
    keeps as many batches ahead as the next encode call takes (EMBED_AT_LEAST new chunk texts, by
    the batches read so far), at least one and at most READ_AHEAD_MAX."""
    batches = plan.batches(spec.docs_per_batch)
    if not batches:
        return
    source = make_source(spec.source)
    with connect(url, autocommit=True) as reader, ThreadPoolExecutor(
            max_workers=1, initializer=_yield_to_embedding) as pool:
        def read(refs: list[DocumentRef]) -> BatchWork:
            return read_batch(reader, collection, embedder, source, refs, plan.run_id, full_refresh,
                              spec.duplicates == "skip")

        pending: deque[Future[BatchWork]] = deque()
        following = iter(batches)
        read_count = texts = 0

        def top_up() -> None:  # before each yield: the reads go on while the caller embeds
            per_batch = texts / read_count if read_count else 0
            ahead = min(READ_AHEAD_MAX, math.ceil(EMBED_AT_LEAST / per_batch)) if per_batch else 1
            while len(pending) < ahead and (refs := next(following, None)) is not None:
                pending.append(pool.submit(read, refs))

        try:
            top_up()
            while pending:
                work = pending.popleft().result()
                read_count, texts = read_count + 1, texts + len(new_texts(work))
                top_up()
                yield work
        finally:  # a run that stops early waits for the batch being read, not for the ones queued
            for future in pending:
                future.cancel()


def _yield_to_embedding() -> None:
    """Lower the read-ahead thread's priority: on a small machine the model's threads keep the CPU,
    and reading fills the gaps instead of stalling every parallel region of the encoder."""
    if hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
