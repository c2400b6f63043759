"""ragpipe's ingestion DAGs, one per collection in collections.yml (RAGPIPE_COLLECTIONS)."""
from pipelines.airflow import collection_dags

globals().update(collection_dags())
