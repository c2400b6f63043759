"""Load: an embedded batch replaces its documents in transactions of COMMIT_EVERY documents, each
with its own run counts; copies, failures and deletions are recorded in the same transaction."""

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import psycopg

from pipelines import store
from pipelines.faults import failpoint
from pipelines.sources import DocumentRef
from pipelines.sync.read import BatchWork, Duplicate, Failure, Prepared, Touched, Vanished

log = logging.getLogger(__name__)
COMMIT_EVERY = 16
"""Documents per load transaction inside a batch."""


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
    api_tokens: int = 0
    """Tokens an API embedder reported for the batch's new chunks (estimated ones apart)."""
    api_tokens_estimated: int = 0
    """Tokens estimated (text length / 3) where the endpoint reported none."""
    context_tokens: int = 0
    """Tokens the chat model that wrote the chunks' context reported (enrich.context)."""
    context_tokens_estimated: int = 0
    processed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    """(source_id, stage, reason) of each failed document."""

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k not in ("failures", "processed")}

    def add(self, other: "BatchResult") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def write_batch(conn: psycopg.Connection, collection: store.Collection, run_id: int, work: BatchWork) -> BatchResult:
    """Load the batch in transactions of COMMIT_EVERY documents, each with its own run counts."""
    total = BatchResult()
    counted: set[str] = set()
    for i in range(0, len(work.refs), COMMIT_EVERY):
        group = work.refs[i:i + COMMIT_EVERY]
        result = BatchResult(processed=len(group))
        if i == 0:  # what embedding the batch spent, recorded with its first documents
            result.api_tokens, result.api_tokens_estimated = work.api_tokens.reported, work.api_tokens.estimated
            result.context_tokens = work.context_tokens.reported
            result.context_tokens_estimated = work.context_tokens.estimated
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


def write_group(conn: psycopg.Connection, collection: store.Collection, run_id: int, group: list[BatchWork],
                loaded: Callable[[BatchWork], None]) -> None:
    """Load embedded batches in order, calling `loaded` after each."""
    for work in group:
        write_batch(conn, collection, run_id, work)
        loaded(work)
