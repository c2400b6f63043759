"""OpenLineage for the DAGs' tasks, emitted by Airflow's OpenLineage provider
(apache-airflow-providers-openlineage) the way it emits any operator's: through the operator's
`get_openlineage_facets_on_start/complete/failure` methods.

Each task names its input (the collection's source) and its output (the collection's chunk
table, `ragpipe.chunks_c<id>`), and carries a `ragpipe` run facet with what it counted (documents
listed/new/changed/deleted/failed, chunks written). Nothing here runs unless the provider is
installed and configured (AIRFLOW__OPENLINEAGE__TRANSPORT): off costs nothing. docs/lineage.md.
"""

import functools
import logging
import os
import socket
from typing import Any, ClassVar
from urllib.parse import urlsplit

import psycopg
from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk.bases.decorator import task_decorator_factory

from pipelines.config import CollectionSpec
from pipelines.store.database import first_line

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/ragpipe/ragpipe"
FACET = "ragpipe"
"""The run facet's key: {collection, task, ingest_run, counts}."""
SCHEMA_URL = f"{PRODUCER}/blob/main/docs/lineage.md#the-ragpipe-run-facet"
_specs: dict[str, CollectionSpec] = {}
_reported: dict[str, Any] = {}
"""What the task running in this process counted (one task per process under Airflow)."""


def register(dag_id: str, spec: CollectionSpec) -> None:
    """The collection of a DAG, for its tasks' lineage (called when the DAG file is parsed)."""
    _specs[dag_id] = spec


def report(spec: CollectionSpec, collection: str, url: str | None, ingest_run: int | None, **counts: int) -> None:
    """Record what this task did (`collection`: the version written), for its COMPLETE or FAIL
    event. Datasets are resolved here, in the task: the provider's listener runs in a forked
    process that must not open connections of its own. Does nothing with OpenLineage off."""
    if not enabled():
        return
    try:
        _reported.clear()
        _reported.update(collection=collection, ingest_run=ingest_run, counts={k: int(v) for k, v in counts.items()},
                         inputs=source_datasets(spec.source), output=chunk_table(collection, url))
    except Exception as exc:  # lineage never fails a task
        log.warning("OpenLineage: could not name this task's datasets: %s", first_line(str(exc)))


def enabled() -> bool:
    """Whether Airflow's OpenLineage provider is installed and configured to emit."""
    try:
        from airflow.providers.openlineage.conf import is_disabled
    except ImportError:
        return False
    return not is_disabled()


class RagpipeTaskOperator(_PythonDecoratedOperator):
    """`@task` with lineage: the source in, the chunk table out, and the task's counts."""

    custom_operator_name = "@task"

    def execute(self, context: Any) -> Any:
        _reported.clear()  # a process that runs several tasks (dag.test) never reports the last one's
        return super().execute(context)

    def get_openlineage_facets_on_start(self) -> Any:
        return task_lineage(self.dag_id, self.task_id, {})

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return task_lineage(self.dag_id, self.task_id, _reported)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return task_lineage(self.dag_id, self.task_id, _reported)


def ragpipe_task(**kwargs: Any) -> Any:
    """Like `airflow.sdk.task(**kwargs)`, with RagpipeTaskOperator."""
    return task_decorator_factory(decorated_operator_class=RagpipeTaskOperator, **kwargs)


def task_lineage(dag_id: str, task_id: str, reported: dict[str, Any]) -> Any:
    """The OperatorLineage of one task: the source in and the chunk table out once the task
    reported them (at START, the source when naming it needs no connection), and the run facet."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    spec = _specs.get(dag_id)
    if spec is None:
        return OperatorLineage()
    collection = reported.get("collection") or spec.name
    counts = reported.get("counts") or {}
    chunks, facets = reported.get("output"), run_facet(collection, task_id, reported.get("ingest_run"), counts)
    if task_id.split(".")[-1] == "run_queries":  # the smoke check reads the chunk table
        return OperatorLineage(inputs=[InputDataset(*chunks)] if chunks else [], run_facets=facets)
    sources = reported.get("inputs")
    if sources is None:
        sources = [] if spec.source.get("conn_id") else source_datasets(spec.source)
    out_facets = {}
    if "chunks_embedded" in counts:  # the chunk rows written: embedded now, or with a vector reused
        written = counts["chunks_embedded"] + counts.get("chunks_reused", 0)
        out_facets["outputStatistics"] = stats.OutputStatisticsOutputDatasetFacet(rowCount=written)
    return OperatorLineage(inputs=[InputDataset(namespace, name) for namespace, name in sources],
                           outputs=[OutputDataset(*chunks, outputFacets=out_facets)] if chunks else [],
                           run_facets=facets)


def run_facet(collection: str, task_id: str, ingest_run: int | None, counts: dict[str, int]) -> dict[str, Any]:
    return {FACET: ragpipe_facet_class()(collection=collection, task=task_id, ingest_run=ingest_run, counts=counts)}


@functools.cache
def ragpipe_facet_class() -> type:
    """The `ragpipe` run facet (an attrs class like OpenLineage's own facets, made when first used)."""
    import attr
    from openlineage.client.facet_v2 import RunFacet

    @attr.define
    class RagpipeRunFacet(RunFacet):
        collection: str = attr.field(default="")
        """The collection (or the version being built, `name@vN`) the task wrote."""
        task: str = attr.field(default="")
        ingest_run: int | None = attr.field(default=None)
        """The run's id in ragpipe.ingest_runs (`ragpipe status`)."""
        counts: dict[str, int] = attr.field(factory=dict)
        """What the task counted: documents listed/new/changed/unchanged/deleted/failed, chunks_embedded."""
        _additional_skip_redact: ClassVar[list[str]] = ["collection", "task", "ingest_run", "counts"]

        @staticmethod
        def _get_schema() -> str:
            return SCHEMA_URL

    return RagpipeRunFacet


def source_datasets(source: dict[str, Any]) -> list[tuple[str, str]]:
    """(namespace, name) of a source, by OpenLineage's naming: file://host + path, s3:// or gs://bucket +
    prefix, wasbs:// or abfss://container@account + prefix, scheme://host + path,
    postgres://host:port + db.schema.table (the query's tables)."""
    kind = source["kind"]
    if kind in ("folder", "tabular"):
        return [(f"file://{socket.gethostname()}", str(source["path"]))]
    if kind in ("s3", "gcs"):
        parts = urlsplit(str(source["path"]))
        return [(f"{'s3' if kind == 's3' else 'gs'}://{parts.netloc}", parts.path.strip("/") or "/")]
    if kind == "azure":
        from pipelines.sources.azure import AzureSource

        blob = AzureSource(path=str(source["path"]), account_name=source.get("account_name"))
        container, _, prefix = blob.prefix.partition("/")
        service = "dfs" if blob.scheme.startswith("abfs") else "blob"
        host = f"@{blob.account_name}.{service}.core.windows.net" if blob.account_name else ""
        return [(f"{'abfss' if service == 'dfs' else 'wasbs'}://{container}{host}", prefix or "/")]
    if kind == "web":
        parts = urlsplit(str(source.get("url_prefix") or source["sitemap"]))
        return [(f"{parts.scheme}://{parts.netloc}", parts.path or "/")]
    if kind == "sql":
        url = (connection_url(source["conn_id"]) if source.get("conn_id")
               else os.path.expandvars(str(source.get("url") or "")))
        namespace, db = postgres_namespace(url)
        return [(namespace, f"{db}.{table}") for table in query_tables(str(source["query"]))]
    return []


def query_tables(query: str) -> list[str]:
    """schema.table of each table a SQL source's query reads (OpenLineage's own SQL parser)."""
    import openlineage_sql

    meta = openlineage_sql.parse([query], dialect="postgres", default_schema="public")
    return sorted(t.qualified_name for t in meta.in_tables) if meta else []


def postgres_namespace(url: str) -> tuple[str, str]:
    """postgres://host:port and the database name of a conninfo (never its user or password)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    host = str(params.get("host") or "localhost")
    host = "localhost" if host.startswith("/") else host.split(",")[0]
    return f"postgres://{host}:{params.get('port') or 5432}", str(params.get("dbname") or params.get("user") or "")


def chunk_table(collection: str, url: str | None) -> tuple[str, str] | None:
    """(namespace, db.ragpipe.chunks_c<id>) of a collection, or None before its first run made it."""
    from pipelines.settings import load_settings
    from pipelines.store.database import database_url

    url = url or database_url(load_settings())
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        row = conn.execute("SELECT ragpipe.chunk_partition(id) FROM ragpipe.collections WHERE name = %s",
                           (collection,)).fetchone()
    if row is None:
        return None
    namespace, db = postgres_namespace(url)
    return namespace, f"{db}.ragpipe.{row[0]}"


def connection_url(conn_id: str) -> str:
    from pipelines.airflow.connections import connection_url as url

    return url(conn_id)
