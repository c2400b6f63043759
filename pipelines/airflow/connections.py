"""The few things the DAGs need from Airflow itself; imported only by code running under Airflow."""

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import make_conninfo

from pipelines.settings import load_settings

CONNECTION_ID = "ragpipe_db"


def vector_db_url() -> str | None:
    """The Airflow connection `ragpipe_db` as a libpq conninfo, or None when it is not defined
    (then RAGPIPE_DATABASE_URL or the embedded server is used, like the CLI)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return connection_url(CONNECTION_ID)
    except AirflowNotFoundException:
        return None


def connection_url(conn_id: str) -> str:
    """A PostgreSQL Airflow connection as a libpq conninfo string."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    extra = {k: str(v) for k, v in (conn.extra_dejson or {}).items() if k in ("sslmode", "options", "sslrootcert")}
    params = dict(host=conn.host, port=conn.port, user=conn.login, password=conn.password,
                  dbname=conn.schema, **extra)
    return make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


def aws_credentials(conn_id: str) -> dict[str, str]:
    """s3fs options from an Airflow AWS connection (login = key id, password = secret)."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    options = {"key": conn.login, "secret": conn.password}
    token = (conn.extra_dejson or {}).get("aws_session_token")
    if token:
        options["token"] = token
    return {k: v for k, v in options.items() if v}


def gcp_credentials(conn_id: str, project: str | None) -> tuple[object, str | None]:
    """gcsfs's token and the project from an Airflow Google Cloud connection: its extra `keyfile_dict`
    (the service account's JSON) or `key_path`; neither: Application Default Credentials."""
    import json

    from airflow.sdk import Connection

    extra = Connection.get(conn_id).extra_dejson or {}
    keyfile = extra.get("keyfile_dict") or extra.get("extra__google_cloud_platform__keyfile_dict")
    path = extra.get("key_path") or extra.get("extra__google_cloud_platform__key_path")
    token: object = (json.loads(keyfile) if isinstance(keyfile, str) else keyfile) if keyfile else path or None
    return token, project or extra.get("project") or extra.get("extra__google_cloud_platform__project")


def azure_credentials(conn_id: str) -> dict[str, str]:
    """adlfs options from an Airflow Azure Blob (wasb) connection: login = account name, password =
    account key, or extra `connection_string` / `sas_token`."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    extra = conn.extra_dejson or {}
    options = {"account_name": conn.login, "account_key": conn.password,
               "connection_string": extra.get("connection_string"), "sas_token": extra.get("sas_token")}
    return {k: v for k, v in options.items() if v}


TIMEOUT_ADVICE = {
    "plan": "a slow source listing: raise the limit, or check the source",
    "batch": "lower docs_per_batch in collections.yml or raise the limit; one stuck parser is already "
             "stopped after RAGPIPE_EXTRACT_TIMEOUT",
    "finalize": "a large HNSW build: raise the limit",
    "smoke_check": "slow searches: check the database",
}


@contextmanager
def explained_timeout(task: str) -> Iterator[None]:
    """Turn Airflow's bare "Timeout, PID: n" into a message that says which limit to change."""
    from airflow.sdk.exceptions import AirflowTaskTimeout

    try:
        yield
    except AirflowTaskTimeout as exc:
        seconds = load_settings().task_timeouts_s[task]
        raise AirflowTaskTimeout(f"{task} ran longer than its execution_timeout of {seconds:g} s "
                                 f"(RAGPIPE_{task.upper()}_TIMEOUT): {TIMEOUT_ADVICE[task]}") from exc
