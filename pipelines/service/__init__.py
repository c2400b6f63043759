"""The search service: an HTTP API and a search page over the SQL search API (`ragpipe serve`).

    from pipelines.service import create_app
    app = create_app()          # FastAPI; uvicorn serves it, Airflow mounts it as a plugin

Each request embeds the query with the collection's own model (loaded once per process) and calls
the SQL functions as the service role (ragpipe_reader by default, never the schema owner), so it
returns exactly what SQL returns."""

from pipelines.service.app import create_app

__all__ = ["create_app"]
