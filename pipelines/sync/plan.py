"""Plan: list the source, diff its fingerprints against the collection's documents, open a run row."""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pipelines import store
from pipelines.collection import open_collection
from pipelines.config import CollectionSpec
from pipelines.sources import DocumentRef, make_source, same_fingerprint
from pipelines.store.database import first_line

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
    refused_deletes: int = 0
    """Documents gone from the source that the mass-deletion guard kept (mass_deletion)."""

    def batches(self, size: int) -> list[list[DocumentRef]]:
        return [self.todo[i:i + size] for i in range(0, len(self.todo), size)]


def mass_deletion(deleting: int, documents: int, collection: str) -> str | None:
    """Why a run may not delete `deleting` of `documents` without confirmation (None: it may)."""
    from pipelines.settings import load_settings

    settings = load_settings()
    if deleting < settings.mass_delete_min or deleting <= settings.mass_delete_fraction * documents:
        return None
    return (f"refused to delete {deleting} of {documents} documents in one run (more than "
            f"{settings.mass_delete_fraction:.0%}: an emptied or unmounted source?); nothing was deleted. If they "
            f"are gone for good: ragpipe ingest -c {collection} --allow-mass-delete (Airflow: trigger with "
            "allow_mass_delete), or raise RAGPIPE_MASS_DELETE_FRACTION")


def plan_run(conn: psycopg.Connection, spec: CollectionSpec, full_refresh: bool = False,
             limit: int | None = None, trigger: str = "cli", allow_mass_delete: bool = False) -> Plan:
    """List the source and diff it against the collection; opens a run row. Deletions past the
    mass-deletion guard are refused (and recorded) unless `allow_mass_delete`."""
    collection, _ = open_collection(conn, spec)
    run_id = store.start_run(conn, collection.id, trigger)
    try:
        listing = make_source(spec.source).list()
    except Exception as exc:  # a missing or unreachable source: the run says why, it is not left running
        store.finish_run(conn, run_id, "failed", f"{type(exc).__name__}: {first_line(exc)}")
        raise
    forgotten = store.forgotten_ids(conn, spec.family)
    if forgotten:  # tombstoned by `ragpipe forget`: as if the source did not hold them
        kept = [r for r in listing.refs if r.source_id not in forgotten]
        if len(kept) < len(listing.refs):
            log.info("skipped %d forgotten documents (`ragpipe forget %s --list`)", len(listing.refs) - len(kept),
                     spec.family)
        listing = dataclasses.replace(listing, refs=kept)
    known = store.document_fingerprints(conn, collection.id)
    listed = {ref.source_id for ref in listing.refs} | {where for where, _ in listing.rejected}
    new = [r for r in listing.refs if r.source_id not in known]
    changed = [r for r in listing.refs
               if r.source_id in known and (full_refresh or not same_fingerprint(r.fingerprint, known[r.source_id]))]
    todo = new + changed
    if limit is not None:
        todo = todo[:limit]
    deleted = sorted(set(known) - listed) if listing.complete else []
    refusal = None if allow_mass_delete else mass_deletion(len(deleted), len(known), spec.family)
    refused = len(deleted) if refusal else 0
    if refusal:
        log.warning(refusal)
        deleted = []
    unchanged = len(listing.refs) - len(new) - len(changed)
    store.set_plan_counts(conn, run_id, listing.complete, len(listing.refs), unchanged,
                          leaving=deleted + [r.source_id for r in changed])
    for problem in listing.problems:
        log.warning("listing problem (nothing will be deleted this run): %s", problem)
    for where, reason in listing.rejected:
        log.warning("skipped %s: %s", where, reason)
    failures = listing.rejected + ([(LISTING, "; ".join(listing.problems))] if listing.problems else []) + (
        [(LISTING, refusal)] if refusal else [])
    if failures:  # recorded: `ragpipe status --failures` says why
        with conn.transaction():
            failed = sum(store.record_failure(conn, run_id, collection.id, where, None, "list", reason)
                         for where, reason in failures)
            store.add_run_counts(conn, run_id, failed=failed)
    return Plan(spec.name, run_id, listing.complete, len(listing.refs), len(new), len(changed), unchanged,
                todo, deleted, listing.problems, refused)


def dry_run_plan(conn: psycopg.Connection, spec: CollectionSpec, full_refresh: bool = False,
                 limit: int | None = None, trigger: str = "cli", allow_mass_delete: bool = False) -> dict[str, Any]:
    """What a run would do, in a transaction that is rolled back: a dry run writes nothing. Its counts
    are the plan's (new and changed as listed; duplicates are found only by reading)."""
    with conn.transaction(force_rollback=True):
        plan = plan_run(conn, spec, full_refresh, limit, trigger, allow_mass_delete)
        tokens, context = tokens_to_send(conn, spec, plan, full_refresh)
        return dict(store.finish_run(conn, plan.run_id, "dry_run"), listed=plan.listed, new=plan.new,
                    changed=plan.changed, unchanged=plan.unchanged, deleted=0, would_delete=len(plan.deleted),
                    would_process=len(plan.todo), deletions_refused=plan.refused_deletes,
                    **({"would_send_tokens": tokens} if tokens is not None else {}),
                    **({"would_send_context_tokens": context} if context is not None else {}))


def tokens_to_send(conn: psycopg.Connection, spec: CollectionSpec, plan: Plan,
                   full_refresh: bool) -> tuple[int | None, int | None]:
    """What a run would send to API endpoints, from the documents to process (read and chunked here,
    no model asked): for an API embedder, the tokens of the new chunk texts (the collection's chunk
    tokenizer, special tokens included; texts with a stored or cached vector are not sent; a written
    context counted at its max_tokens); with enrich.context, the chat tokens of the contexts not
    cached (estimated, 3 characters a token). None for what the collection does not use."""
    from pipelines.collection import context_options
    from pipelines.embed import is_api_model
    from pipelines.sync.encode import new_texts
    from pipelines.sync.enrich import context_tokens_to_send
    from pipelines.sync.read import read_batch

    collection, embedder = open_collection(conn, spec)
    api, written = is_api_model(collection.model), context_options(collection.settings)
    if not api and not written:
        return None, None
    source, texts, chat = make_source(spec.source), {}, 0
    for refs in plan.batches(spec.docs_per_batch):
        work = read_batch(conn, collection, embedder, source, refs, plan.run_id, full_refresh, enrich=False)
        texts.update(new_texts(work))
        chat += context_tokens_to_send(conn, collection, work.prepared()) if written else 0
    tokenizer = embedder.chunk_tokenizer
    prompt = embedder.document_prompt
    reserve = written["max_tokens"] + 1 if written else 0
    embedded = sum(len(tokenizer(prompt + t, verbose=False)["input_ids"]) + reserve for t in texts.values())
    return (embedded if api else None), (chat if written else None)
