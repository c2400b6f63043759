"""The run in separate processes, as the Airflow DAGs run it (pipelines/airflow/dags.py): plan →
batches (mapped tasks) → finalize, for the active version or the one being built. Each step opens
its own connection; plan and finalize take the collection's lock exclusively, batches share it, so
a CLI run never writes the same collection at the same time as a DAG run. No Airflow import here."""

import logging
import time
from typing import Any

from pipelines.config import CollectionSpec
from pipelines.faults import armed, failpoint
from pipelines.sources import DocumentRef
from pipelines.store.connection import locked_connection
from pipelines.sync import BatchResult, Plan, finalize_run, plan_run, process_batch
from pipelines.versions import check_eval_set, conclude, plan_versions, spec_for

log = logging.getLogger(__name__)


def plan_step(spec: CollectionSpec, url: str | None = None, full_refresh: bool = False,
              limit: int | None = None, dry_run: bool = False, trigger: str = "airflow",
              target: str = "active", allow_mass_delete: bool = False) -> Plan | None:
    """Plan the run of the active version, or (target="candidate") of the version being built; None
    when no version is being built. The plan's `collection` names the version its batches write."""
    failpoint(f"plan_{spec.name}")  # tests: a task that fails (once, with RAGPIPE_FAILPOINT_DIR)
    check_eval_set(spec)
    with locked_connection(spec.family, url) as conn:
        with conn.transaction(force_rollback=dry_run):  # a dry run writes nothing
            targets = plan_versions(conn, spec)
            chosen = targets.active if target == "active" else targets.candidate
            if targets.note and target == "active":
                log.warning(targets.note)
            return plan_run(conn, chosen, full_refresh, limit, trigger, allow_mass_delete) if chosen else None


def batch_step(spec: CollectionSpec, run_id: int, refs: list[DocumentRef], url: str | None = None,
               full_refresh: bool = False, version: str | None = None) -> BatchResult:
    """One batch of a plan; `version` is the plan's collection (default: the active version)."""
    with locked_connection(spec.family, url, shared=True) as conn:
        if armed(f"slow_batch_{spec.name}"):  # tests: a batch that is surely running when its worker is killed
            time.sleep(20)
        return process_batch(conn, spec_for(conn, spec, version or spec.name), run_id, refs, full_refresh)


def finalize_step(spec: CollectionSpec, run_id: int, deleted: list[str], url: str | None = None,
                  failed_batches: int = 0, version: str | None = None, promote: str | None = None,
                  complete: bool = True) -> dict[str, Any]:
    """Close the run; a run with failed batches deletes nothing and is recorded as failed. A new
    version whose run completed is then scored and promoted (conclude)."""
    with locked_connection(spec.family, url) as conn:
        target = spec_for(conn, spec, version or spec.name)
        if failed_batches:
            return finalize_run(conn, target, run_id, [], "failed", f"{failed_batches} batch(es) failed")
        summary = dict(finalize_run(conn, target, run_id, deleted), collection=target.name)
        if target.name != spec.name and summary["status"] == "succeeded" and complete:
            summary.update(conclude(conn, target, promote))
        return summary
