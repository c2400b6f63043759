"""`ragpipe serve` (the search API and page) and `ragpipe config` (collections.yml)."""

import click

from pipelines.config import load_collections
from pipelines.settings import load_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: put TLS and tokens in front).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
def serve(host: str, port: int) -> None:
    """Serve the search API and the search page (FastAPI on uvicorn) until Ctrl-C.

    \b
    GET  /                      the search page (the query lives in the URL)
    GET  /api/collections       name, model, documents, chunks, last run
    GET  /api/search?collection=C&q=TEXT&k=10&mode=hybrid|semantic|keyword&filter=JSON
    GET  /api/similar/C/SOURCE_ID
    POST /api/rag-context       {"collection", "q", "k", "max_tokens", "filter"}
    POST /api/ask               the same body; Server-Sent Events from RAGPIPE_LLM_URL
    GET  /healthz, /docs        health, OpenAPI

    Searches run as RAGPIPE_SERVE_ROLE (default ragpipe_reader), never as the schema owner.
    RAGPIPE_SERVE_TOKENS (JSON {token: role}) or RAGPIPE_SERVE_TOKENS_FILE require a bearer token and
    map it to a database role, e.g. a tenant role. RAGPIPE_SERVE_CORS_ORIGINS allows browser origins.
    It answers to localhost and --host only; RAGPIPE_SERVE_ALLOWED_HOSTS adds names (a proxy's, a LAN name).
    """
    import uvicorn

    from pipelines.service import create_app

    app = create_app(bind=host)
    app.state.service.open()  # errors here are one line, before anything listens
    app.state.service.warm()
    click.echo(f"ragpipe search on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops it", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


@click.group()
def config() -> None:
    """collections.yml: the declared collections."""


@config.command("check")
def config_check() -> None:
    """Validate collections.yml; errors name the collection and the key."""
    path = load_settings().collections_file
    from pipelines.versions import check_eval_set

    specs = load_collections(path)
    for spec in specs.values():
        check_eval_set(spec)
    for spec in specs.values():
        click.echo(f"ok  {spec.name}: {spec.source['kind']} source, schedule {spec.schedule}, model {spec.model}")
