"""One ingest run in this process, the one entry point of the CLI, `ragpipe eval` and the Python API:
the versions it writes (pipelines/versions), each synced by the run core (pipelines/sync), then
a new version scored and promoted. The DAGs run the same in separate tasks (pipelines/airflow/steps.py).

    from pipelines.config import parse_collection
    from pipelines.ingest import run_ingest
    summary = run_ingest(parse_collection({"name": "notes", "source": {"kind": "folder", "path": "notes"}}))
"""

import logging
from collections.abc import Callable
from typing import Any

from pipelines.config import CollectionSpec
from pipelines.store.connection import locked_connection, open_database
from pipelines.sync import dry_run_plan, sync_collection
from pipelines.versions import check_eval_set, conclude, plan_versions

log = logging.getLogger(__name__)


def run_ingest(spec: CollectionSpec, full_refresh: bool = False, limit: int | None = None,
               dry_run: bool = False, trigger: str = "cli",
               progress: Callable[[int, int], None] | None = None, url: str | None = None,
               promote: str | None = None, allow_mass_delete: bool = False) -> dict[str, Any]:
    """A whole run in this process, holding the collection's write lock throughout: the active
    version is synced; when collections.yml asks for new build settings, the new version is then
    built (or resumed), scored and promoted (`promote`: auto, manual, force; default collections.yml).
    `progress(documents done, documents planned)` is called after each batch commits, from the
    thread that loads. Returns the active version's run summary, with the new version's under
    "new_version"."""
    check_eval_set(spec)
    url = open_database(url)
    with locked_connection(spec.family, url) as conn:
        if dry_run:
            with conn.transaction(force_rollback=True):
                targets = plan_versions(conn, spec)
            return dry_run_plan(conn, targets.active, full_refresh, limit, trigger, allow_mass_delete)
        targets = plan_versions(conn, spec)
        if targets.note:
            log.warning(targets.note)
        summary = sync_collection(conn, url, targets.active, full_refresh, limit, trigger, progress,
                                  allow_mass_delete)
        if targets.candidate is not None and summary["status"] == "succeeded":
            built = sync_collection(conn, url, targets.candidate, full_refresh, limit, trigger, progress,
                                    allow_mass_delete)
            if built["status"] == "succeeded" and limit is None:
                built.update(conclude(conn, targets.candidate, promote))
            summary["new_version"] = built
        return summary


RUN_COUNTS = ("listed", "new", "changed", "unchanged", "deleted", "failed", "duplicates", "chunks_embedded",
              "chunks_reused", "api_tokens", "api_tokens_estimated", "context_tokens", "context_tokens_estimated")
"""The counts of a run's summary (ragpipe.ingest_runs' columns)."""


def format_summary(summary: dict[str, Any]) -> str:
    """The one-line account of a run that the CLI and the DAG print (a dry run: what a run would do)."""
    if summary.get("status") == "dry_run":
        refused = summary.get("deletions_refused")
        return ("dry run (nothing written): listed {listed}, new {new}, changed {changed}, unchanged {unchanged}, "
                "would process {would_process}, would delete {would_delete}").format(**summary) + (
                    f" (refused {refused}: more than the mass-deletion guard allows)" if refused else "") + (
                    f", would send about {summary['would_send_tokens']:,} tokens to the embedding API"
                    if "would_send_tokens" in summary else "") + (
                    f", about {summary['would_send_context_tokens']:,} chat tokens for chunk context"
                    if "would_send_context_tokens" in summary else "")
    return ("run {id} {status}: listed {listed}, new {new}, changed {changed}, unchanged {unchanged}, "
            "deleted {deleted}, failed {failed}, duplicates {duplicates}, chunks embedded {chunks_embedded} "
            "(reused {chunks_reused}) in {seconds:.1f}s").format(**summary) + api_tokens_text(summary) + \
        api_tokens_text(summary, "context_tokens", "chat tokens for chunk context")


def api_tokens_text(summary: dict[str, Any], column: str = "api_tokens", what: str = "API tokens") -> str:
    """`, API tokens 1,234 (56 estimated)` when the run spent any (`column`: the counts' name)."""
    reported, estimated = summary.get(column) or 0, summary.get(f"{column}_estimated") or 0
    if not reported and not estimated:
        return ""
    return f", {what} {reported + estimated:,}" + (f" ({estimated:,} estimated)" if estimated else "")
