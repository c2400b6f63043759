"""Airflow glue: the DAG factory, Airflow connections and environment, a REST client. Importing
this package does not import Airflow; calling `collection_dags` does."""

from pathlib import Path
from typing import Any


def collection_dags(collections_file: str | Path | None = None) -> dict[str, Any]:
    """One ingest DAG per collection of collections.yml (see pipelines/airflow/dags.py)."""
    from pipelines.airflow.dags import collection_dags as build

    return build(collections_file)


SEARCH_URL_PREFIX = "/ragpipe"
"""Where the search plugin (pipelines/airflow/plugin.py) mounts the search service on Airflow's API server."""
