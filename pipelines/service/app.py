"""The FastAPI app: JSON routes under /api, the search page at /, /healthz, OpenAPI at /docs."""

import json
import logging
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

import psycopg
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipelines.embed.errors import EmbeddingFailed
from pipelines.search import MODES, Mode
from pipelines.service.access import Unauthorized
from pipelines.service.admission import RETRY_AFTER_S, Admission, Limits
from pipelines.service.backend import SearchService
from pipelines.service.database import Busy
from pipelines.service.guards import Guards, allowed_hosts
from pipelines.service.mcp import McpEndpoint
from pipelines.service.page import render_page
from pipelines.service.requests import (
    MAX_BODY_BYTES,
    MAX_K,
    MAX_NEIGHBOURS,
    BadRequest,
    Forbidden,
    NotFound,
    RagContextRequest,
    error_status,
    parse_filter,
)
from pipelines.settings import Settings, load_settings
from pipelines.store.database import DatabaseError, first_line, mask_url

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, warm: bool = False, bind: str | None = None) -> FastAPI:
    """The search service as an ASGI app. Nothing connects or loads a model until the first request
    (or start-up, with warm=True), so mounting it in Airflow costs nothing at import time. It answers
    to the localhost names, `bind` (the address it listens on) and RAGPIPE_SERVE_ALLOWED_HOSTS."""
    service = SearchService(settings or load_settings())

    mcp = McpEndpoint(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm:
            service.open()
            service.warm()
        yield
        mcp.stop()
        if service._opened:
            service.db.close()

    app = FastAPI(title="ragpipe search", version="1", lifespan=lifespan,
                  description="Semantic, keyword and hybrid search over ragpipe collections in PostgreSQL.")
    app.state.service = service
    origins = [o.strip() for o in service.settings.serve_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Admission, limits=_limits(service.settings), on_shed=service.metrics.shed.inc)
    app.add_middleware(Guards, hosts=allowed_hosts(service.settings.serve_allowed_hosts, bind),
                       max_body_bytes=MAX_BODY_BYTES)
    _add_error_handlers(app)
    _add_request_metrics(app, service)
    Auth = Annotated[str | None, Header(include_in_schema=False)]

    import anyio

    operations = anyio.CapacityLimiter(4)
    """Threads of their own for /healthz and /metrics: they answer while every search thread is busy."""

    # MCP (streamable HTTP) for agents: the same tools as `ragpipe mcp`, the same tokens as the API
    app.router.routes.append(Route("/mcp", endpoint=mcp, methods=["GET", "POST", "DELETE"], include_in_schema=False))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Up, and the database answers (on a connection of its own when the pool has none free)."""
        def check() -> None:
            service.open()
            with service.db.probe_session() as conn:
                conn.execute("SELECT 1")

        await anyio.to_thread.run_sync(check, limiter=operations)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(authorization: Auth = None) -> Response:
        """Prometheus text format: the service's requests, and every collection's state (docs/metrics.md);
        with tokens configured, the collections' series need a reader's token (a tenant's is not one)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        def scrape() -> bytes:
            return service.metrics.text(collections=service.may_see_every_collection(authorization))

        return Response(await anyio.to_thread.run_sync(scrape, limiter=operations), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/collections")
    def collections(authorization: Auth = None) -> list[dict[str, Any]]:
        """Every collection: name, model, documents, chunks and its last run."""
        role = service.role(authorization)
        return service.collections(role)

    @app.get("/api/search")
    def search(collection: Annotated[str, Query(min_length=1, max_length=200)],
               q: Annotated[str, Query(min_length=1)],
               k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
               mode: Annotated[Mode, Query()] = "hybrid",
               filter: Annotated[str | None, Query(description='JSON object, e.g. {"topic": "soy"}')] = None,
               language: Annotated[str | None, Query(max_length=64, description="the query's language (german, de); "
                                                     "default: every language of the collection")] = None,
               rerank: Annotated[bool | None, Query(description="re-rank the best candidates with the collection's "
                                                    "reranker (default: when it has one)")] = None,
               authorization: Auth = None) -> dict[str, Any]:
        """The k best chunks for q: the rows of ragpipe.<mode>_search (re-ranked when the collection has a
        reranker: `reranked`, or `rerank_error` when it failed and the first-stage order is returned), plus took_ms."""
        started = time.perf_counter()
        role = service.role(authorization)
        hits = service.search(role, collection, q, k, mode, parse_filter(filter), language, rerank)
        return {"collection": collection, "mode": mode, "k": k, "took_ms": _ms(started), **rerank_fields(hits),
                "results": [h.to_dict() for h in hits]}

    @app.get("/api/similar/{collection}/{source_id:path}")
    def similar(collection: str, source_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                authorization: Auth = None) -> dict[str, Any]:
        """Documents most like this one (ragpipe.similar_documents), one row each."""
        started = time.perf_counter()
        role = service.role(authorization)
        hits = service.similar(role, collection, source_id, k)
        return {"collection": collection, "source_id": source_id, "took_ms": _ms(started),
                "results": [h.to_dict() for h in hits]}

    @app.get("/api/chunks/{collection}/{chunk_id}")
    def chunk_context(collection: str, chunk_id: int,
                      neighbours: Annotated[int, Query(ge=0, le=MAX_NEIGHBOURS)] = 2,
                      authorization: Auth = None) -> dict[str, Any]:
        """A chunk (a search hit's chunk_id) with up to `neighbours` chunks before and after it in its document."""
        started = time.perf_counter()
        found = service.chunk_context(service.role(authorization), collection, chunk_id, neighbours)
        return {"collection": collection, **found.to_dict(), "took_ms": _ms(started)}

    @app.post("/api/rag-context")
    def rag_context(body: RagContextRequest, authorization: Auth = None) -> dict[str, Any]:
        """The context for a RAG prompt and its citations (ragpipe.rag_context)."""
        started = time.perf_counter()
        ctx = service.rag_context(service.role(authorization), body)
        return {"context": ctx.context, "citations": ctx.citations, **rerank_fields(ctx), "took_ms": _ms(started)}

    @app.post("/api/ask")
    def ask(body: RagContextRequest, authorization: Auth = None) -> StreamingResponse:
        """An answer from the configured LLM, streamed as Server-Sent Events: `context` (the citations),
        `delta` events with text, then `done` (or `error`)."""
        from pipelines.search.ask import build_messages, llm_settings, stream_answer

        llm = llm_settings()
        if llm is None:
            return JSONResponse({"detail": "no LLM is configured: set RAGPIPE_LLM_URL to an OpenAI-compatible "
                                           "endpoint (e.g. http://localhost:11434/v1) and restart the service; "
                                           "POST /api/rag-context returns the context without one"}, 503)
        ctx = service.rag_context(service.role(authorization), body)

        def events() -> Iterator[str]:
            yield _sse("context", {"citations": ctx.citations, **rerank_fields(ctx)})
            try:
                spent = partial(service.metrics.add_tokens, body.collection, llm.model, "chat")
                for text in stream_answer(llm, build_messages(body.q, ctx), spent):
                    yield _sse("delta", {"text": text})
            except Exception as exc:  # the stream has started: report in it
                yield _sse("error", {"detail": mask_url(first_line(exc))})
                return
            yield _sse("done", {})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request, authorization: Auth = None) -> HTMLResponse:
        html, status = render_page(service, request.query_params, authorization)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return HTMLResponse(html, status, headers=headers)

    return app


def _limits(settings: Settings) -> Limits:
    pool = settings.serve_pool_size
    return Limits(settings.serve_deadline_s, settings.serve_max_in_flight or 4 * pool,
                  settings.serve_heavy_concurrency or max(1, pool // 2), settings.serve_heavy_words)


def rerank_fields(found: Any) -> dict[str, Any]:
    """`reranked` (bool), and `rerank_error` when the reranker failed, of Hits or a RagContext."""
    return {"reranked": found.reranked, **({"rerank_error": found.rerank_error} if found.rerank_error else {})}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _add_request_metrics(app: FastAPI, service: SearchService) -> None:
    from pipelines.service.metrics import route_of

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = route_of(request.scope)
        if route != "/metrics":
            mode = request.query_params.get("mode", "hybrid") if route == "/api/search" else ""
            service.metrics.observe(route, mode if mode in MODES else "other", response.status_code,
                                    time.perf_counter() - started)
        return response


def _add_error_handlers(app: FastAPI) -> None:
    def handle(request: Request, exc: Exception) -> JSONResponse:
        status, message = error_status(exc)
        request.app.state.service.metrics.errors.labels(type(exc).__name__).inc()
        if status == 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse({"detail": message}, status, headers=headers)

    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"detail": problems}, 422)

    app.add_exception_handler(RequestValidationError, invalid)
    # each kind by name: a handler of Exception alone answers, then re-raises (a traceback in the log)
    for kind in (Unauthorized, Forbidden, NotFound, BadRequest, Busy, DatabaseError, EmbeddingFailed, psycopg.Error,
                 Exception):
        app.add_exception_handler(kind, handle)


__all__ = ["MODES", "create_app"]
