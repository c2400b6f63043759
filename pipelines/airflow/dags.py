"""The DAG factory: one ingestion DAG per collection of collections.yml, plus a retrieval smoke
check for each collection that declares `smoke_queries`, scheduled on the collection's Asset.

A dags folder needs three lines (this repo's dags/ragpipe_ingest.py is one):

    from pipelines.airflow import collection_dags

    globals().update(collection_dags())   # or collection_dags("/path/to/collections.yml")

Only the config is read at parse time (no model, no database connection).
"""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, TaskGroup, dag

from pipelines.airflow.lineage import ragpipe_task as task
from pipelines.airflow.lineage import register
from pipelines.config import CollectionSpec, load_collections
from pipelines.settings import Settings, load_settings


def collection_dags(collections_file: str | Path | None = None) -> dict[str, DAG]:
    """The DAGs of every collection in `collections_file` (default: RAGPIPE_COLLECTIONS), by dag_id."""
    settings = load_settings()
    dags: dict[str, DAG] = {}
    for spec in load_collections(Path(collections_file) if collections_file else settings.collections_file).values():
        dags[f"ragpipe_ingest_{spec.name}"] = ingest_dag(spec, settings)
        register(f"ragpipe_ingest_{spec.name}", spec)
        if spec.smoke_queries:
            dags[f"ragpipe_smoke_check_{spec.name}"] = smoke_check_dag(spec, settings)
            register(f"ragpipe_smoke_check_{spec.name}", spec)
    return dags


def default_args(settings: Settings) -> dict[str, Any]:
    return {
        "owner": "ragpipe",
        "retries": settings.retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    }


def timeout(settings: Settings, task: str) -> timedelta:
    """The task kind's execution_timeout: no task runs forever (RAGPIPE_<TASK>_TIMEOUT)."""
    return timedelta(seconds=settings.task_timeouts_s[task])
PARAMS = {
    "full_refresh": Param(False, type="boolean", description="Re-read and re-embed every document."),
    "limit": Param(None, type=["null", "integer"], minimum=1,
                   description="Process at most this many new/changed documents (empty: all)."),
    "dry_run": Param(False, type="boolean", description="Plan only: report what would change, write nothing."),
    "allow_mass_delete": Param(False, type="boolean", description="Delete documents gone from the source even "
                               "when they are more than RAGPIPE_MASS_DELETE_FRACTION of the collection."),
}


def collection_asset(name: str) -> Asset:
    return Asset(name=f"ragpipe_{name}", uri=f"ragpipe://collections/{name}", group="ragpipe")


def source_asset(spec: CollectionSpec, settings: Settings) -> Asset:
    """The watched collection's source, updated by its AssetWatcher at each burst of changes."""
    from airflow.sdk import AssetWatcher

    from pipelines.airflow.triggers import SourceChangeTrigger

    trigger = SourceChangeTrigger(collection=spec.name, collections_file=str(settings.collections_file))
    return Asset(name=f"ragpipe_source_{spec.name}", uri=f"ragpipe://sources/{spec.name}", group="ragpipe",
                 watchers=[AssetWatcher(name=f"ragpipe_watch_{spec.name}", trigger=trigger)])


def schedule_of(spec: CollectionSpec, settings: Settings) -> Any:
    """collections.yml's `schedule`; with `watch:`, also (or only) each change of the source."""
    if not spec.watch:
        return spec.schedule
    if spec.schedule is None:
        return [source_asset(spec, settings)]
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone="UTC"),
                               assets=source_asset(spec, settings))


def ingest_dag(spec: CollectionSpec, settings: Settings) -> Any:
    params = dict(PARAMS, promote=Param(
        spec.promote["mode"], enum=["auto", "manual"],
        description="A new version (model or chunking changed in collections.yml): auto promotes it when its "
                    "scores hold; manual leaves it for `ragpipe promote`."))

    @dag(
        dag_id=f"ragpipe_ingest_{spec.name}",
        schedule=schedule_of(spec, settings),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(settings),
        params=params,
        tags=["ragpipe", "ingest", spec.source["kind"]],
        doc_md=f"""### Ingest collection `{spec.name}`
{spec.description}

plan (list `{spec.source['kind']}` source, diff fingerprints) → `process_batch` mapped over batches of
{spec.docs_per_batch} document references → finalize (deletions, HNSW index, statistics, run record)
→ Asset `ragpipe_{spec.name}`. Trigger with `full_refresh`, `limit` or `dry_run` from the UI.
{"Also runs at each burst of changes of its source (`watch:`; Asset `ragpipe_source_" + spec.name + "`)."
 if spec.watch else ""}

When collections.yml changes the model, chunking or HNSW build settings, the task group
`build_version` then builds the new version the same way beside the active one (which keeps
serving searches), scores it and promotes it (`promote`: auto or manual); otherwise it is skipped.
""",
    )
    def ingest() -> None:
        synced = sync_stage(spec, settings, "active")
        with TaskGroup("build_version", tooltip="Build, score and promote a new version of the collection") as build:
            sync_stage(spec, settings, "candidate")
        synced >> build

    return ingest()


def sync_stage(spec: CollectionSpec, settings: Settings, target: str) -> Any:
    """plan → process_batch (mapped) → finalize, for the active version or the one being built."""

    # The build starts after the active version's finalize, also when that was skipped (a dry run).
    @task(execution_timeout=timeout(settings, "plan"), trigger_rule="none_failed" if target == "candidate"
          else "all_success")
    def plan(params: dict[str, Any] | None = None, ti: Any = None) -> list[dict[str, Any]]:
        """List the source and decide what to process; returns one entry per batch to map over."""
        from pipelines.airflow.connections import explained_timeout, vector_db_url
        from pipelines.airflow.lineage import report
        from pipelines.airflow.steps import plan_step

        params = params or {}
        dry_run, full_refresh = bool(params.get("dry_run")), bool(params.get("full_refresh"))
        with explained_timeout("plan"):
            p = plan_step(spec, vector_db_url(), full_refresh, params.get("limit"), dry_run, target=target,
                          allow_mass_delete=bool(params.get("allow_mass_delete")))
        if p is None:
            print("no new version to build: collections.yml has the active version's settings")
            ti.xcom_push(key="plan", value={"version": None})
            return []
        report(spec, p.collection, vector_db_url(), p.run_id, listed=p.listed, new=p.new, changed=p.changed,
               unchanged=p.unchanged, deleted=len(p.deleted))
        batches = [] if dry_run else p.batches(spec.docs_per_batch)
        print(f"{p.collection}: listed {p.listed} (complete: {p.listing_complete}): new {p.new}, changed {p.changed}, "
              f"unchanged {p.unchanged}, to delete {len(p.deleted)}; processing "
              f"{sum(map(len, batches))} documents in {len(batches)} batches")
        for problem in p.problems:
            print(f"listing problem (no deletions this run): {problem}")
        ti.xcom_push(key="plan", value={"ingest_run_id": p.run_id, "dry_run": dry_run, "deleted": p.deleted,
                                        "documents": sum(map(len, batches)), "would_process": len(p.todo),
                                        "version": p.collection, "complete": params.get("limit") is None})
        return [{"refs": [vars(r) for r in b], "ingest_run_id": p.run_id, "full_refresh": full_refresh,
                 "version": p.collection} for b in batches]

    @task(queue=settings.embed_queue, execution_timeout=timeout(settings, "batch"))
    def process_batch(refs: list[dict[str, str]], ingest_run_id: int, full_refresh: bool,
                      version: str | None = None) -> dict[str, int]:
        """Read, extract, chunk, embed and load one batch (document references only in XCom)."""
        from pipelines.airflow.connections import explained_timeout, vector_db_url
        from pipelines.airflow.lineage import report
        from pipelines.airflow.steps import batch_step
        from pipelines.sources import DocumentRef

        with explained_timeout("batch"):
            result = batch_step(spec, ingest_run_id, [DocumentRef(**r) for r in refs], vector_db_url(),
                                full_refresh, version)
        report(spec, version or spec.name, vector_db_url(), ingest_run_id, **result.counts())
        print("batch: " + ", ".join(f"{k} {v}" for k, v in result.counts().items()))
        for source_id, stage, reason in result.failures:
            print(f"FAILED {source_id} ({stage}): {reason}")
        return dict(result.counts(), processed=result.processed)

    @task(trigger_rule="all_done", outlets=[collection_asset(spec.name)],
          execution_timeout=timeout(settings, "finalize"))
    def finalize(planned: dict[str, Any], results: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delete what disappeared, build the index, record the run; fail if a batch failed. A new
        version is then scored and promoted."""
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.airflow.connections import explained_timeout, vector_db_url
        from pipelines.airflow.lineage import report
        from pipelines.airflow.steps import finalize_step
        from pipelines.ingest import RUN_COUNTS, format_summary

        if planned.get("version") is None:
            raise AirflowSkipException("no new version to build")
        if planned["dry_run"]:
            raise AirflowSkipException(f"dry run: would process {planned['would_process']} documents "
                                       f"and delete {len(planned['deleted'])}")
        done = [r for r in (results or []) if r]
        missing = planned["documents"] - sum(r["processed"] for r in done)
        with explained_timeout("finalize"):
            summary = finalize_step(spec, planned["ingest_run_id"], planned["deleted"], vector_db_url(),
                                    failed_batches=int(missing > 0), version=planned["version"],
                                    promote=(params or {}).get("promote"), complete=planned["complete"])
        report(spec, planned["version"], vector_db_url(), planned["ingest_run_id"],
               **{key: summary[key] for key in RUN_COUNTS})
        print(f"{planned['version']}: {format_summary(summary)}")
        if "promoted" in summary:
            verdict = summary.get("evaluation") or {}
            print(f"version {summary['version']}: {summary['state']}; {verdict.get('reason', '')}")
        if missing:
            raise RuntimeError(f"{missing} documents were not processed because a batch failed; "
                               "nothing was deleted. Clear the failed batch to retry it.")
        if summary["status"] == "failed":
            raise RuntimeError(f"run {summary['id']}: every document it read failed, or its source could not be "
                               "listed; nothing was deleted. See `ragpipe status --failures`")
        return summary

    batches = plan()
    results = process_batch.expand_kwargs(batches)
    return finalize(batches["plan"], results)


def smoke_check_dag(spec: CollectionSpec, settings: Settings) -> Any:
    @dag(
        dag_id=f"ragpipe_smoke_check_{spec.name}",
        schedule=[collection_asset(spec.name)],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=dict(default_args(settings), retries=0),
        tags=["ragpipe", "smoke-check"],
        doc_md=f"Runs the known queries of `{spec.name}` whenever it is refreshed; fails on empty results.",
    )
    def smoke_check() -> None:
        @task(execution_timeout=timeout(settings, "smoke_check"))
        def run_queries() -> dict[str, str]:
            from pipelines.airflow.connections import explained_timeout, vector_db_url
            from pipelines.airflow.lineage import report
            from pipelines.search import search

            report(spec, spec.name, vector_db_url(), None, queries=len(spec.smoke_queries))
            top = {}
            for query in spec.smoke_queries:
                with explained_timeout("smoke_check"):
                    hits = search(query, collection=spec.name, k=3, url=vector_db_url())
                if not hits:
                    raise RuntimeError(f"smoke check: no results for {query!r} in {spec.name!r}")
                print(f"{query!r} → {hits[0].source_id} ({hits[0].score:.3f})")
                top[query] = hits[0].source_id
            return top

        run_queries()

    return smoke_check()
