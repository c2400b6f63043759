"""One ingest run, shared by the CLI and the DAGs: plan → process batches → finalize.

    plan:     list the source, diff fingerprints against the documents table
              → new / changed / unchanged / deleted, and a run row in ragpipe.ingest_runs
    batch:    read → hash (identical content: keep, just record the fingerprint) → extract → chunk
              → embed (reusing stored embeddings of identical chunks) → replace in one transaction
    finalize: delete what disappeared (complete listings only) → HNSW index → keyword and
              planner statistics (once 10% changed) → close the run
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg

from pipelines import store
from pipelines.chunking import Chunk, chunk_text, with_context
from pipelines.config import CollectionSpec, ConfigError
from pipelines.embed import Embedder, get_embedder, resolve_model
from pipelines.extract import ExtractionError
from pipelines.extract.worker import extract_isolated
from pipelines.faults import armed, failpoint
from pipelines.settings import load_settings
from pipelines.sources import (
    DocumentRef,
    Gone,
    NotModified,
    RawDocument,
    ReadResult,
    Source,
    make_source,
    same_fingerprint,
)
from pipelines.store.database import connect, database_url
from pipelines.store.migrations import migrate
from pipelines.versions import (
    build_key,
    chunk_tokens_for,
    conclude,
    key_of,
    plan_versions,
    spec_for,
    stored_settings,
    text_tokens,
)

log = logging.getLogger(__name__)
_migrated: set[str] = set()
COMMIT_EVERY = 16
"""Documents per load transaction inside a batch."""
EMBED_AT_LEAST = 1024
"""Chunk texts an in-process run gathers, from as many batches as it takes, before one encode call:
the model sorts a call's texts by length, so small calls pad more and leave more partial batches."""
READ_AHEAD_MAX = 16
"""Batches an in-process run reads ahead at most (the memory they hold is the bound)."""


@dataclass
class Plan:
    collection: str
    run_id: int
    listing_complete: bool
    listed: int
    new: int
    changed: int
    unchanged: int
    todo: list[DocumentRef]
    deleted: list[str]
    problems: list[str] = field(default_factory=list)

    def batches(self, size: int) -> list[list[DocumentRef]]:
        return [self.todo[i:i + size] for i in range(0, len(self.todo), size)]


@dataclass
class BatchResult:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    deleted: int = 0
    duplicates: int = 0
    processed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    """(source_id, stage, reason) of each failed document."""

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k not in ("failures", "processed")}

    def add(self, other: "BatchResult") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


@dataclass
class Prepared:
    raw: RawDocument
    content_hash: str
    title: str | None
    chunks: list[Chunk]
    body_hash: str | None = None


def open_database(url: str | None = None) -> str:
    """The database URL (default: RAGPIPE_DATABASE_URL or the embedded server), migrated once per process."""
    url = url or database_url()
    if url not in _migrated:
        migrate(url)
        _migrated.add(url)
    return url


def open_collection(conn: psycopg.Connection, spec: CollectionSpec) -> tuple[store.Collection, Embedder]:
    """The version's row (a collection's first is created on first use) and its embedder; the model
    loads only when needed. Settings that need no rebuild (search defaults, ef_search) are updated;
    other build settings are a new version (pipelines/versions.plan_versions decides which)."""
    existing = store.get_collection(conn, spec.name)
    spec = dataclasses.replace(spec, model=resolve_model(spec.model, existing.model if existing else None))
    embedder = get_embedder(spec.model, spec.batch_size)
    settings = stored_settings(spec)
    if existing is not None and existing.model == spec.model and (
            spec.chunk_tokens in (None, existing.chunk_tokens) and spec.chunk_overlap == existing.chunk_overlap
            and existing.settings == settings):
        return existing, embedder
    chunk_tokens = chunk_tokens_for(spec, embedder, existing)
    if existing is not None and key_of(existing) != build_key(spec.model, chunk_tokens, spec.chunk_overlap, settings):
        raise ConfigError(f"collection {spec.name!r} was built with other settings; a run builds the new ones as "
                          "a new version (pipelines.versions.plan_versions)")
    collection = store.ensure_collection(conn, spec.name, spec.model, embedder.dimension, chunk_tokens,
                                         spec.chunk_overlap, settings)
    return collection, embedder


def plan_run(conn: psycopg.Connection, spec: CollectionSpec, full_refresh: bool = False,
             limit: int | None = None, trigger: str = "cli") -> Plan:
    """List the source and diff it against the collection; opens a run row."""
    collection, _ = open_collection(conn, spec)
    run_id = store.start_run(conn, collection.id, trigger)
    listing = make_source(spec.source).list()
    known = store.document_fingerprints(conn, collection.id)
    listed = {ref.source_id for ref in listing.refs}
    new = [r for r in listing.refs if r.source_id not in known]
    changed = [r for r in listing.refs
               if r.source_id in known and (full_refresh or not same_fingerprint(r.fingerprint, known[r.source_id]))]
    todo = new + changed
    if limit is not None:
        todo = todo[:limit]
    deleted = sorted(set(known) - listed) if listing.complete else []
    unchanged = len(listing.refs) - len(new) - len(changed)
    store.set_plan_counts(conn, run_id, listing.complete, len(listing.refs), unchanged,
                          leaving=deleted + [r.source_id for r in changed])
    for problem in listing.problems:
        log.warning("listing problem (nothing will be deleted this run): %s", problem)
    if listing.rejected:
        with conn.transaction():
            failed = sum(store.record_failure(conn, run_id, collection.id, where, None, "list", reason)
                         for where, reason in listing.rejected)
            store.add_run_counts(conn, run_id, failed=failed)
        for where, reason in listing.rejected:
            log.warning("skipped %s: %s", where, reason)
    return Plan(spec.name, run_id, listing.complete, len(listing.refs), len(new), len(changed), unchanged,
                todo, deleted, listing.problems)


def process_batch(conn: psycopg.Connection, spec: CollectionSpec, run_id: int, refs: list[DocumentRef],
                  full_refresh: bool = False) -> BatchResult:
    """Read, extract, chunk, embed and load a batch of documents, committing every COMMIT_EVERY
    documents; safe to retry: documents already committed are recognised by their content hash."""
    collection, embedder = open_collection(conn, spec)
    work = read_batch(conn, collection, embedder, make_source(spec.source), refs, run_id, full_refresh,
                      spec.duplicates == "skip")
    embed_batch(work, embedder=embedder)
    return write_batch(conn, collection, run_id, work)


@dataclass(frozen=True)
class Failure:
    stage: str
    reason: str


@dataclass(frozen=True)
class Duplicate:
    """The same content as another document of the collection: recorded, not indexed twice."""

    of: str


@dataclass(frozen=True)
class Touched:
    """Content unchanged: only the fingerprint is recorded."""

    fingerprint: str


@dataclass(frozen=True)
class Vanished:
    """The source says the document is gone (a 404/410): it is deleted with the batch."""


@dataclass(frozen=True)
class AlreadyWritten:
    """A retried batch finds the document already committed by this run: nothing to do."""


Outcome = Prepared | Touched | Failure | Duplicate | Vanished | AlreadyWritten
"""What a batch decided for one document; write_batch acts on each kind."""


@dataclass
class BatchWork:
    """A batch read, extracted and chunked; its vectors are filled in by embed_batch."""

    refs: list[DocumentRef]
    existing: dict[str, tuple[str, int | None, str | None]]
    outcome: dict[str, Outcome]
    vectors: dict[str, np.ndarray]
    fresh: set[str] = field(default_factory=set)
    """Chunk hashes embedded in this batch (the rest came from the database)."""
    skip_duplicates: bool = True

    def prepared(self) -> list[Prepared]:
        return [o for o in self.outcome.values() if isinstance(o, Prepared)]


def read_batch(conn: psycopg.Connection, collection: store.Collection, embedder: Embedder, source: Source,
               refs: list[DocumentRef], run_id: int, full_refresh: bool, skip_duplicates: bool = True) -> BatchWork:
    """Everything before embedding: read, compare content hashes, extract, chunk, find stored vectors."""
    existing = store.document_hashes(conn, collection.id, [r.source_id for r in refs])
    previous = {} if full_refresh else {sid: state[2] for sid, state in existing.items()}
    outcome: dict[str, Outcome] = {}
    bodies: dict[str, str] = {}  # body hash → the first document of this batch with that content
    for ref, read in source.read_many(refs, previous):
        sid = ref.source_id
        stored_hash, written_by, _ = existing.get(sid, (None, None, None))
        digest = content_hash(read) if isinstance(read, RawDocument) else None
        decided = classify(read, digest, stored_hash, written_by, run_id, full_refresh)
        if decided is not None:
            outcome[sid] = decided
            continue
        body = body_hash(read)
        original = skip_duplicates and (bodies.get(body)
                                        or store.duplicates_of(conn, collection.id, run_id, {sid: body}).get(sid))
        if original:
            outcome[sid] = Duplicate(original)
        else:
            outcome[sid] = _prepare_or_fail(read, digest, embedder, collection, body)
            if isinstance(outcome[sid], Prepared):  # copies of a failed file fail on their own
                bodies.setdefault(body, sid)
    work = BatchWork(refs, existing, outcome, {}, skip_duplicates=skip_duplicates)
    hashes = [c.content_hash for p in work.prepared() for c in p.chunks]
    if hashes and not full_refresh:
        work.vectors = store.cached_embeddings(conn, collection.model, hashes)
    return work


def classify(read: ReadResult, digest: str | None, stored_hash: str | None,
             written_by: int | None, run_id: int, full_refresh: bool) -> Outcome | None:
    """What a batch does with one document its source returned, before extracting it; None: extract
    and index it. `digest` is its content_hash, `stored_hash` and `written_by` what the database has."""
    if isinstance(read, Exception):
        return Failure("read", str(read))
    if isinstance(read, NotModified):
        return Touched(read.ref.fingerprint)
    if isinstance(read, Gone):
        return Vanished()
    if stored_hash != digest:
        return None
    if written_by == run_id:
        return AlreadyWritten()
    return None if full_refresh else Touched(read.ref.fingerprint)


def _prepare_or_fail(raw: RawDocument, digest: str, embedder: Embedder, collection: store.Collection,
                     body: str) -> Prepared | Failure:
    try:
        return dataclasses.replace(prepare(raw, digest, embedder, collection), body_hash=body)
    except ExtractionError as exc:
        return Failure("extract", str(exc))
    except Exception as exc:  # a parser bug on one document must not stop the run
        log.exception("unexpected error extracting %s", raw.ref.source_id)
        return Failure("extract", f"{type(exc).__name__}: {exc}")


def new_texts(work: BatchWork) -> dict[str, str]:
    """The batch's chunk texts with no stored vector, by content hash."""
    return {c.content_hash: c.embed_text for p in work.prepared() for c in p.chunks
            if c.content_hash not in work.vectors}


def embed_batch(*works: BatchWork, embedder: Embedder) -> None:
    """Embed the batches' new chunk texts in one call (the model sorts them by length); a text new
    to several of them is embedded once and counts as fresh in the first."""
    needed = [new_texts(work) for work in works]
    texts = {h: t for batch in needed for h, t in batch.items()}
    vectors = dict(zip(texts, embedder.encode(list(texts.values())), strict=True))
    for work, batch in zip(works, needed, strict=True):
        work.vectors.update((h, vectors[h]) for h in batch)
        work.fresh = {h for h in batch if texts.pop(h, None) is not None}


def embedding_groups(works: Iterator[BatchWork], at_least: int = EMBED_AT_LEAST) -> Iterator[list[BatchWork]]:
    """Consecutive batches whose new chunk texts add up to `at_least`; but the first batch and the
    last go alone, so that the model starts while the next batches are read, and the last load
    (the one no encoding overlaps) is a single batch's."""
    group: list[BatchWork] = []
    texts = 0
    for i, work in enumerate(works):
        group.append(work)
        texts += len(new_texts(work))
        if texts >= at_least or i == 0:
            yield group
            group, texts = [], 0
    if len(group) > 1:
        yield group[:-1]
    if group:
        yield group[-1:]


def write_batch(conn: psycopg.Connection, collection: store.Collection, run_id: int, work: BatchWork) -> BatchResult:
    """Load the batch in transactions of COMMIT_EVERY documents, each with its own run counts."""
    total = BatchResult()
    counted: set[str] = set()
    for i in range(0, len(work.refs), COMMIT_EVERY):
        group = work.refs[i:i + COMMIT_EVERY]
        result = BatchResult(processed=len(group))
        docs, touched, gone, duplicates = [], {}, [], []
        with conn.transaction():  # the copy check and the load, under the bodies' locks
            late = copies_written_since_read(conn, collection, run_id, work, group)
            for ref in group:
                outcome = late.get(ref.source_id) or work.outcome.get(ref.source_id)
                if isinstance(outcome, Prepared):
                    vectors = np.stack([work.vectors[c.content_hash] for c in outcome.chunks])
                    docs.append(store.LoadedDocument(ref.source_id, outcome.raw.ref.uri, outcome.title,
                                                     outcome.content_hash, outcome.raw.ref.fingerprint,
                                                     outcome.raw.metadata, outcome.chunks, vectors, outcome.body_hash))
                    if ref.source_id in work.existing:
                        result.changed += 1
                    else:
                        result.new += 1
                    for c in outcome.chunks:
                        fresh = c.content_hash in work.fresh and c.content_hash not in counted
                        counted.add(c.content_hash)
                        result.chunks_embedded += fresh
                        result.chunks_reused += not fresh
                elif isinstance(outcome, Touched):
                    touched[ref.source_id] = outcome.fingerprint
                elif isinstance(outcome, Failure):
                    result.failures.append((ref.source_id, outcome.stage, outcome.reason))
                elif isinstance(outcome, Duplicate):
                    duplicates.append((ref.source_id, outcome.of))
                    if ref.source_id in work.existing:  # it changed into a copy of another document
                        gone.append(ref.source_id)
                elif isinstance(outcome, Vanished):
                    gone.append(ref.source_id)
            result.unchanged = len(touched)
            uris = {r.source_id: r.uri for r in group}
            store.replace_documents(conn, collection, run_id, docs)
            failpoint("load_before_commit")
            store.touch_documents(conn, collection.id, run_id, touched)
            result.deleted = store.delete_documents(conn, collection, gone)
            for source_id, stage, reason in result.failures:  # counted once even when a batch is retried
                result.failed += store.record_failure(conn, run_id, collection.id, source_id, uris.get(source_id),
                                                      stage, reason)
            for source_id, original in duplicates:
                result.duplicates += store.record_failure(conn, run_id, collection.id, source_id, uris.get(source_id),
                                                          "duplicate", f"same content as {original}; indexed once")
            store.add_run_counts(conn, run_id, **result.counts())
        for source_id, stage, reason in result.failures:
            log.warning("failed %s (%s): %s", source_id, stage, reason)
        for source_id, original in duplicates:
            log.info("duplicate %s: same content as %s, not indexed twice", source_id, original)
        total.add(result)
        failpoint("batch_after_commit")
    return total


def copies_written_since_read(conn: psycopg.Connection, collection: store.Collection, run_id: int, work: BatchWork,
                              refs: list[DocumentRef]) -> dict[str, Duplicate]:
    """The batch's documents that copy one an earlier batch of this run loaded after this batch was
    read (batches are read ahead of loading, and Airflow loads batches in parallel): they are
    recorded as duplicates, not indexed twice. Call inside the load's transaction."""
    if not work.skip_duplicates:
        return {}
    bodies = {r.source_id: o.body_hash for r in refs
              if isinstance(o := work.outcome.get(r.source_id), Prepared) and o.body_hash}
    store.lock_bodies(conn, collection.id, list(bodies.values()))  # parallel batches (Airflow) load copies in turn
    return {sid: Duplicate(of) for sid, of in store.duplicates_of(conn, collection.id, run_id, bodies).items()}


def finalize_run(conn: psycopg.Connection, spec: CollectionSpec, run_id: int, deleted: list[str],
                 status: str = "succeeded", error: str | None = None) -> dict[str, Any]:
    """Delete documents gone from a completely listed source, build the index, close the run."""
    collection = store.get_collection(conn, spec.name)
    assert collection is not None, f"collection {spec.name!r} vanished during the run"
    started = time.perf_counter()
    if status == "succeeded" and store.run_failed_everything(conn, run_id):
        status, error = "failed", "every document this run read failed; see `ragpipe status --failures`"
    if status == "succeeded":
        with conn.transaction():
            removed = store.delete_documents(conn, collection, deleted)
            store.add_run_counts(conn, run_id, deleted=removed)
        with conn.transaction():
            if store.ensure_hnsw_index(conn, collection):
                log.info("built HNSW index for collection %s", spec.name)
        # Keyword (BM25) and planner statistics are refreshed together, once the runs since the
        # last refresh changed 10% of the collection.
        if store.run_wrote(conn, run_id) and store.refresh_text_stats(conn, collection.id, run_id):
            store.analyze_collection(conn, collection.id)
            log.info("refreshed keyword and planner statistics for collection %s", spec.name)
        settings = load_settings()
        store.prune_cache(conn, settings.cache_max_rows, settings.cache_max_age_days)
    return dict(store.finish_run(conn, run_id, status, error), finalize_seconds=time.perf_counter() - started)


@contextmanager
def locked_connection(spec: CollectionSpec, url: str | None = None, shared: bool = False
                      ) -> Iterator[psycopg.Connection]:
    """A connection to the (migrated) database holding the collection's lock: exclusive for a run,
    its plan and its finalize; shared for parallel batches. Every writer starts here."""
    with connect(open_database(url), autocommit=True) as conn, store.collection_lock(
            conn, spec.family, load_settings().lock_timeout_s, shared=shared):
        yield conn


def format_summary(summary: dict[str, Any]) -> str:
    """The one-line account of a run that the CLI and the DAG print."""
    return ("run {id} {status}: listed {listed}, new {new}, changed {changed}, unchanged {unchanged}, "
            "deleted {deleted}, failed {failed}, duplicates {duplicates}, chunks embedded {chunks_embedded} "
            "(reused {chunks_reused}) in {seconds:.1f}s").format(**summary)


def run_ingest(spec: CollectionSpec, full_refresh: bool = False, limit: int | None = None,
               dry_run: bool = False, trigger: str = "cli",
               progress: Callable[[int, int], None] | None = None, url: str | None = None,
               promote: str | None = None) -> dict[str, Any]:
    """A whole run in this process, holding the collection's write lock throughout: the active
    version is synced; when collections.yml asks for new build settings, the new version is then
    built (or resumed), scored and promoted (`promote`: auto, manual, force; default collections.yml).
    `progress(documents done, documents planned)` is called after each batch commits, from the
    thread that loads. Returns the active version's run summary, with the new version's under
    "new_version"."""
    url = open_database(url)
    with locked_connection(spec, url) as conn:
        if dry_run:
            with conn.transaction(force_rollback=True):
                targets = plan_versions(conn, spec)
            return dry_run_plan(conn, targets.active, full_refresh, limit, trigger)
        targets = plan_versions(conn, spec)
        if targets.note:
            log.warning(targets.note)
        summary = sync_version(conn, url, targets.active, full_refresh, limit, trigger, progress)
        if targets.candidate is not None and summary["status"] == "succeeded":
            built = sync_version(conn, url, targets.candidate, full_refresh, limit, trigger, progress)
            if built["status"] == "succeeded" and limit is None:
                built.update(conclude(conn, targets.candidate, promote))
            summary["new_version"] = built
        return summary


def sync_version(conn: psycopg.Connection, url: str, spec: CollectionSpec, full_refresh: bool, limit: int | None,
                 trigger: str, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    """One version's run: plan, batches (read ahead, embed, load), finalize."""
    plan = plan_run(conn, spec, full_refresh, limit, trigger)
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


def write_group(conn: psycopg.Connection, collection: store.Collection, run_id: int, group: list[BatchWork],
                loaded: Callable[[BatchWork], None]) -> None:
    """Load embedded batches in order, calling `loaded` after each."""
    for work in group:
        write_batch(conn, collection, run_id, work)
        loaded(work)


def dry_run_plan(conn: psycopg.Connection, spec: CollectionSpec, full_refresh: bool = False,
                 limit: int | None = None, trigger: str = "cli") -> dict[str, Any]:
    """What a run would do, in a transaction that is rolled back: a dry run writes nothing."""
    with conn.transaction(force_rollback=True):
        plan = plan_run(conn, spec, full_refresh, limit, trigger)
        return dict(store.finish_run(conn, plan.run_id, "dry_run"), would_delete=len(plan.deleted),
                    would_process=len(plan.todo))


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


def body_hash(raw: RawDocument) -> str:
    """Hash of the content and title only: equal for the same file under another name."""
    h = hashlib.sha256(raw.content)
    h.update(json.dumps(raw.title).encode())
    return h.hexdigest()


def content_hash(raw: RawDocument) -> str:
    """Hash of everything that makes a document: bytes, title and metadata."""
    h = hashlib.sha256(raw.content)
    h.update(json.dumps([raw.title, raw.metadata], sort_keys=True, default=str).encode())
    return h.hexdigest()


def prepare(raw: RawDocument, digest: str, embedder: Embedder, collection: store.Collection) -> Prepared:
    """Extract and chunk one document; raises ExtractionError when there is nothing to index."""
    extracted = extract_isolated(raw.content, raw.suffix)
    context = bool(collection.settings.get("chunk_context"))
    chunks = chunk_text(extracted.text, embedder.chunk_tokenizer, text_tokens(collection.chunk_tokens, context),
                        collection.chunk_overlap)
    if not chunks:
        raise ExtractionError("document has no extractable text")
    raw = dataclasses.replace(raw, metadata=storable(raw.metadata))
    title = storable(raw.title or extracted.title)
    if context:
        chunks = [dataclasses.replace(c, context=storable(c.context))
                  for c in with_context(chunks, title, embedder.chunk_tokenizer)]
    return Prepared(raw, digest, title, chunks)


def storable(value: Any) -> Any:
    """The value without NUL characters, which PostgreSQL text and jsonb cannot hold (keys included)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


# Steps for orchestrators whose tasks run in separate processes (the Airflow DAGs). Each opens its
# own connection; plan and finalize take the collection's lock exclusively, batches share it, so a
# CLI run never writes the same collection at the same time as a DAG run.

def plan_step(spec: CollectionSpec, url: str | None = None, full_refresh: bool = False,
              limit: int | None = None, dry_run: bool = False, trigger: str = "airflow",
              target: str = "active") -> Plan | None:
    """Plan the run of the active version, or (target="candidate") of the version being built; None
    when no version is being built. The plan's `collection` names the version its batches write."""
    with locked_connection(spec, url) as conn:
        with conn.transaction(force_rollback=dry_run):  # a dry run writes nothing
            targets = plan_versions(conn, spec)
            chosen = targets.active if target == "active" else targets.candidate
            if targets.note and target == "active":
                log.warning(targets.note)
            return plan_run(conn, chosen, full_refresh, limit, trigger) if chosen else None


def batch_step(spec: CollectionSpec, run_id: int, refs: list[DocumentRef], url: str | None = None,
               full_refresh: bool = False, version: str | None = None) -> BatchResult:
    """One batch of a plan; `version` is the plan's collection (default: the active version)."""
    with locked_connection(spec, url, shared=True) as conn:
        if armed(f"slow_batch_{spec.name}"):  # tests: a batch that is surely running when its worker is killed
            time.sleep(20)
        return process_batch(conn, spec_for(conn, spec, version or spec.name), run_id, refs, full_refresh)


def finalize_step(spec: CollectionSpec, run_id: int, deleted: list[str], url: str | None = None,
                  failed_batches: int = 0, version: str | None = None, promote: str | None = None,
                  complete: bool = True) -> dict[str, Any]:
    """Close the run; a run with failed batches deletes nothing and is recorded as failed. A new
    version whose run completed is then scored and promoted (conclude)."""
    with locked_connection(spec, url) as conn:
        target = spec_for(conn, spec, version or spec.name)
        if failed_batches:
            return finalize_run(conn, target, run_id, [], "failed", f"{failed_batches} batch(es) failed")
        summary = dict(finalize_run(conn, target, run_id, deleted), collection=target.name)
        if target.name != spec.name and summary["status"] == "succeeded" and complete:
            summary.update(conclude(conn, target, promote))
        return summary
