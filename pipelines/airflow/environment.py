"""Environment for running Airflow on the embedded PostgreSQL (used by `make run` and the tests)."""

import os
from pathlib import Path

import psycopg
import psycopg.sql

from pipelines.settings import PROJECT_ROOT, load_settings
from pipelines.store.database import database_url


def airflow_environment(home: Path | None = None, metadata_db: str = "airflow") -> dict[str, str]:
    """AIRFLOW_* settings: metadata in database `metadata_db` of the same server, DAGs from dags/."""
    settings = load_settings()
    home = home or settings.home / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    url = database_url(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (metadata_db,)).fetchone():
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(metadata_db)))
    sa_url = psycopg.conninfo.conninfo_to_dict(url)
    sync = _sqlalchemy_url(sa_url, "postgresql+psycopg", metadata_db)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sync,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": _sqlalchemy_url(sa_url, "postgresql+psycopg_async", metadata_db),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "RAGPIPE_HOME": str(settings.home),
        "RAGPIPE_COLLECTIONS": str(settings.collections_file),
        **sized_to_machine(),
    }


def sized_to_machine() -> dict[str, str]:
    """Worker counts for this machine: Airflow's defaults (32 LocalExecutor workers, 4 API server
    workers) would hold gigabytes of idle processes on a laptop. Set the variables to raise them."""
    cpus = os.cpu_count() or 2
    defaults = {"AIRFLOW__CORE__PARALLELISM": str(max(4, 2 * cpus)),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(max(2, cpus))}
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def _sqlalchemy_url(params: dict, driver: str, dbname: str) -> str:
    """A SQLAlchemy URL for database `dbname` (no %-escapes: Airflow's config would interpolate them)."""
    from urllib.parse import quote

    auth = quote(params.get("user") or "", safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host = str(params.get("host") or "")
    if host.startswith("/"):
        return f"{driver}://{auth}@/{dbname}?host={host}"
    return f"{driver}://{auth}@{host}:{params.get('port') or 5432}/{dbname}"

