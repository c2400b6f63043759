"""`ragpipe verify NAME`: an audit that a collection's source, documents, chunks, BM25 postings,
statistics and HNSW index agree, and `--repair` for what a normal run can fix.

Each check is a Finding with a count and a few examples. The source checks list the source (the
collection must be in collections.yml); a document the last run recorded as failed or as a
duplicate is accounted for, not a finding."""

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from pipelines import store
from pipelines.config import CollectionSpec
from pipelines.sources import make_source
from pipelines.store.connection import locked_connection, open_database
from pipelines.store.database import connect
from pipelines.store.sqlfiles import query
from pipelines.sync.plan import mass_deletion

EXAMPLES = 5
STATS_TOLERANCE = 0.1
"""Statistics are refreshed once 10% of the collection changed: a smaller drift is by design."""


@dataclass
class Finding:
    check: str
    """not_indexed, gone_from_source, changed_in_source, missing_chunks, wrong_dimension,
    wrong_postings, stale_statistics, missing_index, invalid_index, forgotten_traces"""
    count: int
    examples: list[str]
    meaning: str
    repair: str
    """What --repair does about it."""


@dataclass
class Report:
    collection: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "clean": self.clean, "findings": [asdict(f) for f in self.findings],
                "notes": self.notes, "repaired": self.repaired}


def _q(name: str):
    return query("verify", name)


def verify(name: str, spec: CollectionSpec | None, url: str | None = None) -> Report:
    """Every check on the active version of collection `name` (`spec`: its collections.yml entry, for
    the source checks; None skips them with a note)."""
    report = Report(name)
    with connect(open_database(url), autocommit=True) as conn:
        coll = store.get_collection(conn, name)
        if coll is None:
            raise LookupError(f"no collection named {name!r}; `ragpipe status` lists them")
        if spec is None:
            report.notes.append("not in collections.yml: the source was not compared (declare it to check that)")
        else:
            _source_checks(conn, coll, spec, report)
        _row_checks(conn, coll, report)
    return report


def _add(report: Report, check: str, items: list[Any], meaning: str, repair: str) -> None:
    if items:
        report.findings.append(Finding(check, len(items), [str(x) for x in items[:EXAMPLES]], meaning, repair))


def _source_checks(conn: psycopg.Connection, coll: store.Collection, spec: CollectionSpec, report: Report) -> None:
    listing = make_source(spec.source).list()
    forgotten = store.forgotten_ids(conn, coll.family)
    listed = {r.source_id: r.fingerprint for r in listing.refs if r.source_id not in forgotten}
    if len(listed) < len(listing.refs):
        report.notes.append(f"{len(listing.refs) - len(listed)} documents of the source are forgotten (tombstones: "
                            f"`ragpipe forget {coll.family} --list`) and not indexed, as they should not be")
    unreadable = {where for where, _ in listing.rejected}
    indexed = dict(conn.execute(_q("indexed_documents"), (coll.id,)).fetchall())
    recorded = {r[0] for r in conn.execute(_q("recorded_failures"), (coll.id,)).fetchall()}
    _add(report, "not_indexed", sorted(set(listed) - set(indexed) - recorded),
         "in the source, not indexed, and not recorded as failed by the last run", "a run indexes them")
    _add(report, "changed_in_source", sorted(s for s in set(listed) & set(indexed) if listed[s] != indexed[s]),
         "changed in the source since the last run (searches return the old text)", "a run re-reads them")
    if listing.complete:
        gone = sorted(set(indexed) - set(listed) - unreadable)
        _add(report, "gone_from_source", gone, "indexed, but no longer in the source", "a run deletes them")
        if gone and (refusal := mass_deletion(len(gone), len(indexed), coll.name)):
            report.notes.append(f"a run would refuse these deletions: {refusal}")
    else:
        _add(report, "incomplete_listing", listing.problems,
             "part of the source could not be listed, so no run deletes anything: documents gone from the source "
             "stay searchable", "nothing: make those parts readable (or exclude them), then run again")


def _row_checks(conn: psycopg.Connection, coll: store.Collection, report: Report) -> None:
    params = {"collection": coll.id, "dimension": coll.dimension}
    _add(report, "forgotten_traces", [f"{kind} {key}" for kind, key in conn.execute(
             _q("forgotten_traces"), {"family": coll.family})],
         "what is left of documents `ragpipe forget` erased (in any version): document rows (or a copy of the "
         "same content under another source id), failure records, cached vectors of their texts",
         "forgotten again (and copies tombstoned)")
    _add(report, "missing_chunks", [r[0] for r in conn.execute(_q("missing_chunks"), params)],
         "documents with fewer (or more) chunk rows than were loaded", "re-read and re-embedded by a run")
    _add(report, "wrong_dimension", [r[0] for r in conn.execute(_q("wrong_dimension"), params)],
         f"documents with vectors that are not {coll.dimension}-dimensional", "re-read and re-embedded by a run")
    keyword = store.has_keyword_index(coll)
    if keyword:
        _add(report, "wrong_postings", [r[0] for r in conn.execute(_q("wrong_postings"), params)],
             "chunks whose BM25 postings do not match their text (keyword search misranks them)",
             "their postings are written again")
    else:
        report.notes.append("keyword: false: the collection has no keyword index to check")
    stats, actual = conn.execute(_q("statistics"), params).fetchone()
    if keyword and actual and (stats is None or abs(actual - stats) > STATS_TOLERANCE * max(stats, 1)):
        _add(report, "stale_statistics", [f"statistics count {stats or 0} chunks, the collection has {actual}"],
             "BM25 statistics older than the data (more than 10% changed since they were refreshed)",
             "refreshed")
    exists, valid = conn.execute(_q("index_state"), (coll.id,)).fetchone()
    if actual and not exists:
        _add(report, "missing_index", [f"ragpipe.{_index_name(conn, coll)}"],
             "no HNSW index: semantic search scans every chunk", "built")
    elif exists and not valid:
        _add(report, "invalid_index", [f"ragpipe.{_index_name(conn, coll)}"],
             "the HNSW index is invalid (a build was interrupted): searches do not use it", "dropped and rebuilt")


def _forget_traces(conn: psycopg.Connection, family: str) -> str:
    """Erase what verify found left of forgotten documents (ragpipe.forget of their source ids, under the lock held)."""
    traces = conn.execute(_q("forgotten_traces"), {"family": family}).fetchall()
    ids = sorted({key for kind, key in traces if kind in ("document", "failure")})
    with conn.transaction():
        if ids:
            conn.execute(query("forget", "forget"), dict(collection=family, source_ids=ids, filter=None,
                                                         requested_by="verify --repair"))
        cache = [key for kind, key in traces if kind == "cache"]
        conn.execute(_q("drop_forgotten_cache"), (cache,))
    from pipelines.forget import vacuum_after

    vacuum_after(conn, family)
    return f"forgot {len(ids)} documents again and dropped {len(cache)} cached vectors of forgotten texts"


def _index_name(conn: psycopg.Connection, coll: store.Collection) -> str:
    return conn.execute("SELECT ragpipe.hnsw_index_name(%s)", (coll.id,)).fetchone()[0]


def repair(report: Report, spec: CollectionSpec | None, url: str | None = None,
           allow_mass_delete: bool = False) -> Report:
    """Fix what a normal run can, under the collection's lock, then run the collection once when
    documents need it (and collections.yml declares it); returns the report of a second verify."""
    found = {f.check: f for f in report.findings}
    requeue: set[str] = set()
    url = open_database(url)
    with locked_connection(report.collection, url) as conn:
        coll = store.get_collection(conn, report.collection)
        assert coll is not None
        params = {"collection": coll.id, "dimension": coll.dimension}
        for check in ("missing_chunks", "wrong_dimension"):
            if check in found:
                requeue |= {r[0] for r in conn.execute(_q(check), params)}
        if requeue:
            with conn.transaction():
                conn.execute(_q("drop_chunks"), {**params, "source_ids": sorted(requeue)})
                conn.execute(_q("requeue_documents"), (coll.id, sorted(requeue)))
            report.repaired.append(f"{len(requeue)} documents' chunks dropped, to be read and embedded again")
        if "forgotten_traces" in found:
            report.repaired.append(_forget_traces(conn, coll.family))
        if "wrong_postings" in found:
            with conn.transaction():
                store.compact_postings(conn, coll.id, full_merge=True)
            report.repaired.append(f"postings rebuilt from the chunks ({found['wrong_postings'].count} chunks "
                                   "were wrong)")
        if "invalid_index" in found:
            conn.execute(conn.execute(_q("drop_invalid_index"), (coll.id,)).fetchone()[0])
        if "invalid_index" in found or "missing_index" in found:
            with conn.transaction():
                store.ensure_hnsw_index(conn, coll)
            if conn.execute(_q("index_state"), (coll.id,)).fetchone() == (True, True):
                report.repaired.append("HNSW index built")
            else:
                report.notes.append("the HNSW index was not built (a collection without chunks has none)")
        if "stale_statistics" in found:
            store.refresh_text_stats(conn, coll.id, min_change=0)
            report.repaired.append("BM25 statistics refreshed")
    needs_run = requeue or {"not_indexed", "changed_in_source", "gone_from_source"} & set(found)
    if needs_run and spec is not None:
        from pipelines.ingest import format_summary, run_ingest

        report.repaired.append("ran the collection: " + format_summary(
            run_ingest(spec, trigger="verify", allow_mass_delete=allow_mass_delete)))
    elif needs_run:
        report.notes.append("documents need a run, and the collection is not in collections.yml: "
                            "run `ragpipe ingest SOURCE -c NAME`")
    after = verify(report.collection, spec, url)
    after.repaired, after.notes = report.repaired, report.notes + after.notes
    return after
