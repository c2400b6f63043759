"""Plan: list the source, diff its fingerprints against the collection's documents, open a run row."""

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pipelines import store
from pipelines.collection import open_collection
from pipelines.config import CollectionSpec
from pipelines.sources import DocumentRef, make_source, same_fingerprint

log = logging.getLogger(__name__)
LISTING = "(listing)"
"""The source id a run records a listing problem under (the part of the source it could not list)."""


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
    for where, reason in listing.rejected:
        log.warning("skipped %s: %s", where, reason)
    failures = listing.rejected + ([(LISTING, "; ".join(listing.problems))] if listing.problems else [])
    if failures:  # recorded: `ragpipe status --failures` says why
        with conn.transaction():
            failed = sum(store.record_failure(conn, run_id, collection.id, where, None, "list", reason)
                         for where, reason in failures)
            store.add_run_counts(conn, run_id, failed=failed)
    return Plan(spec.name, run_id, listing.complete, len(listing.refs), len(new), len(changed), unchanged,
                todo, deleted, listing.problems)


def dry_run_plan(conn: psycopg.Connection, spec: CollectionSpec, full_refresh: bool = False,
                 limit: int | None = None, trigger: str = "cli") -> dict[str, Any]:
    """What a run would do, in a transaction that is rolled back: a dry run writes nothing."""
    with conn.transaction(force_rollback=True):
        plan = plan_run(conn, spec, full_refresh, limit, trigger)
        return dict(store.finish_run(conn, plan.run_id, "dry_run"), would_delete=len(plan.deleted),
                    would_process=len(plan.todo))
