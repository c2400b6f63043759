"""Environment for running Airflow on the embedded PostgreSQL (used by `make run` and the tests)."""

from pathlib import Path

import psycopg

from .database import database_url
from .settings import PROJECT_ROOT, load_settings


def airflow_environment(home: Path | None = None) -> dict[str, str]:
    """AIRFLOW_* settings: metadata in database `airflow` of the same server, DAGs from dags/."""
    settings = load_settings()
    home = home or settings.home / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    url = database_url(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'").fetchone():
            conn.execute("CREATE DATABASE airflow")
    sa_url = psycopg.conninfo.conninfo_to_dict(url)
    sync = _sqlalchemy_url(sa_url, "postgresql+psycopg")
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sync,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": _sqlalchemy_url(sa_url, "postgresql+psycopg_async"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "RAGPIPE_HOME": str(settings.home),
        "RAGPIPE_COLLECTIONS": str(settings.collections_file),
    }


def _sqlalchemy_url(params: dict, driver: str) -> str:
    """A SQLAlchemy URL for database `airflow` (no %-escapes: Airflow's config would interpolate them)."""
    from urllib.parse import quote

    auth = quote(params.get("user") or "", safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host = str(params.get("host") or "")
    if host.startswith("/"):
        return f"{driver}://{auth}@/airflow?host={host}"
    return f"{driver}://{auth}@{host}:{params.get('port') or 5432}/airflow"

