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
    GET  /api/chunks/C/CHUNK_ID?neighbours=2   a hit's chunk with the chunks around it
    POST /api/rag-context       {"collection", "q", "k", "max_tokens", "filter", "neighbours"}
    POST /api/ask               the same body; Server-Sent Events from RAGPIPE_LLM_URL
    POST /mcp                   MCP (streamable HTTP) for agents: the tools of `ragpipe mcp`
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


@click.command()
def mcp() -> None:
    """Serve ragpipe's tools to an MCP client (Claude Desktop, Cursor, an agent) over stdio.

    \b
    Tools: list_collections, search, fetch_chunk, fetch_document, rag_context.
    A client's config: {"command": "ragpipe", "args": ["mcp"], "env": {"RAGPIPE_DATABASE_URL": "..."}}.
    Over HTTP the same tools answer at /mcp of `ragpipe serve` (and of the Airflow plugin).

    Searches run as RAGPIPE_SERVE_ROLE (default ragpipe_reader), as over HTTP; with RAGPIPE_SERVE_TOKENS
    set, RAGPIPE_MCP_TOKEN names the token (and so the role, a tenant's for instance) this server uses.
    """
    import logging

    from pipelines.service.backend import SearchService
    from pipelines.service.mcp import run_stdio

    logging.basicConfig(level=logging.WARNING, force=True)  # stdout is the protocol's: logs go to stderr
    service = SearchService(load_settings())
    service.open()  # errors here are one line, before the client waits
    run_stdio(service)


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
