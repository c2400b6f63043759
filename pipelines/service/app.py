"""The FastAPI app: JSON routes under /api, the search page at /, /healthz, OpenAPI at /docs."""

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from pipelines.search import (
    HYBRID_DEFAULTS,
    MODES,
    Mode,
    RagContext,
    SearchResult,
    jsonb_filter,
    rag_context_row,
    run_search,
)
from pipelines.service.access import Access, Unauthorized
from pipelines.service.database import Busy, ServiceDatabase
from pipelines.settings import Settings, load_settings
from pipelines.store.database import DatabaseError, database_url, first_line, mask_url
from pipelines.versions import version_name

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_QUERY_BYTES = 8192


class NotFound(LookupError):
    pass


class BadRequest(ValueError):
    pass


class Forbidden(PermissionError):
    pass


class RagContextRequest(BaseModel):
    collection: str = Field(min_length=1, max_length=200)
    q: str = Field(min_length=1)
    k: int = Field(8, ge=1, le=MAX_K)
    max_tokens: int = Field(1500, ge=1, le=100_000)
    filter: dict[str, Any] | None = None


class SearchService:
    """What the routes share: the database, who may do what, and query embedding."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.access = Access.from_settings(settings)
        self.url = settings.serve_database_url or database_url(settings)
        self.db = ServiceDatabase(self.url, settings.serve_role, settings.serve_pool_size,
                                  settings.serve_pool_wait_s, int(settings.serve_statement_timeout_s * 1000))
        self._opened = False
        self._opening = threading.Lock()

    def open(self) -> None:
        """Open the pool and check the roles. On the main database, migrate first (starting the embedded
        server when that is the database); a login of its own (RAGPIPE_SERVE_DATABASE_URL) may not
        migrate, so there the owner must have run `ragpipe db migrate`."""
        if self._opened:  # every request passes here: no lock once open
            return
        with self._opening:
            if self._opened:
                return
            if not self.settings.serve_database_url:
                from pipelines.ingest import open_database

                open_database(self.url)
            self.db.open()
            for role in self.access.roles() - {self.settings.serve_role}:
                self.db.check_role(role)
            self._opened = True
            log.info("search service: %s as role %s, pool of %d", mask_url(self.url), self.settings.serve_role,
                     self.settings.serve_pool_size)

    def warm(self) -> None:
        """Load every collection's model now, so that the first search is not the slow one."""
        from pipelines.embed import get_embedder

        for c in self.collections(self.settings.serve_role):
            get_embedder(c["model"]).encode(["warm up"])

    def role(self, authorization: str | None) -> str:
        self.open()
        return self.access.role_for(authorization)

    def collections(self, role: str) -> list[dict[str, Any]]:
        with self.db.session() as conn:
            rows = conn.cursor(row_factory=psycopg.rows.dict_row).execute(
                "SELECT collection AS name, model, documents, chunks, last_run_status, last_run_at "
                "FROM ragpipe.collection_stats ORDER BY collection").fetchall()
        return [dict(r, last_run_at=r["last_run_at"].isoformat() if r["last_run_at"] else None) for r in rows]

    def version_of(self, collection: str) -> tuple[str, str]:
        """(model, `name@vN`) of the collection's active version: a request embeds with that model and
        reads that version, even if another is promoted meanwhile."""
        with self.db.session() as conn:
            row = conn.execute("SELECT model, version FROM ragpipe.collection_stats WHERE collection = %s",
                               (collection,)).fetchone()
        if row is None:
            raise NotFound(f"no collection named {collection!r}; GET /api/collections lists them")
        return row[0], version_name(collection, row[1])

    def embed(self, collection: str, text: str) -> tuple[Any, str]:
        """The query's embedding by the collection's model, and the version it is for."""
        from pipelines.embed import get_embedder

        model, version = self.version_of(collection)
        return get_embedder(model).encode([text])[0], version

    def search(self, role: str, collection: str, q: str, k: int, mode: Mode,
               filter: dict[str, Any] | None) -> list[SearchResult]:
        check_query(q)
        tenant = self.db.is_tenant(role)
        if tenant and mode != "semantic":
            raise Forbidden("a tenant token searches with mode=semantic only (row-level security applies there)")
        if mode == "keyword":
            embedding, collection = None, self.version_of(collection)[1]  # unknown names: a 404 in every mode
        else:
            embedding, collection = self.embed(collection, q)
        params = dict(collection=collection, text=q, embedding=embedding, k=k, filter=jsonb_filter(filter),
                      **HYBRID_DEFAULTS)
        with self.db.session(role) as conn:
            return run_search(conn, "tenant" if tenant else mode, params)

    def similar(self, role: str, collection: str, source_id: str, k: int) -> list[SearchResult]:
        self.forbid_tenant(role, "similar documents")
        collection = self.version_of(collection)[1]
        with self.db.session(role) as conn:
            return run_search(conn, "similar_documents", dict(collection=collection, source_id=source_id, k=k,
                                                              filter=None))

    def rag_context(self, role: str, body: RagContextRequest) -> RagContext:
        check_query(body.q)
        self.forbid_tenant(role, "RAG context")
        embedding, version = self.embed(body.collection, body.q)
        with self.db.session(role) as conn:
            return rag_context_row(conn, dict(collection=version, text=body.q, embedding=embedding, k=body.k,
                                              max_tokens=body.max_tokens, filter=jsonb_filter(body.filter)))

    def forbid_tenant(self, role: str, what: str) -> None:
        if self.db.is_tenant(role):
            raise Forbidden(f"a tenant token cannot ask for {what}: it searches with mode=semantic only")


def check_query(q: str) -> None:
    if not q.strip():
        raise BadRequest("q is empty: give the text to search for")
    if len(q.encode()) > MAX_QUERY_BYTES:
        raise BadRequest(f"q is longer than {MAX_QUERY_BYTES} bytes")


def parse_filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadRequest('filter must be a JSON object, e.g. {"topic": "soy"}') from None
    if not isinstance(value, dict):
        raise BadRequest('filter must be a JSON object, e.g. {"topic": "soy"}')
    return value


def create_app(settings: Settings | None = None, warm: bool = False) -> FastAPI:
    """The search service as an ASGI app. Nothing connects or loads a model until the first request
    (or start-up, with warm=True), so mounting it in Airflow costs nothing at import time."""
    from pipelines.service.page import render_page

    service = SearchService(settings or load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm:
            service.open()
            service.warm()
        yield
        if service._opened:
            service.db.close()

    app = FastAPI(title="ragpipe search", version="1", lifespan=lifespan,
                  description="Semantic, keyword and hybrid search over ragpipe collections in PostgreSQL.")
    app.state.service = service
    origins = [o.strip() for o in service.settings.serve_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _add_error_handlers(app)
    Auth = Annotated[str | None, Header(include_in_schema=False)]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Up, and the database answers."""
        service.open()
        with service.db.session() as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

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
               authorization: Auth = None) -> dict[str, Any]:
        """The k best chunks for q: the rows of ragpipe.<mode>_search, plus took_ms."""
        started = time.perf_counter()
        role = service.role(authorization)
        hits = service.search(role, collection, q, k, mode, parse_filter(filter))
        return {"collection": collection, "mode": mode, "k": k, "took_ms": _ms(started),
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

    @app.post("/api/rag-context")
    def rag_context(body: RagContextRequest, authorization: Auth = None) -> dict[str, Any]:
        """The context for a RAG prompt and its citations (ragpipe.rag_context)."""
        started = time.perf_counter()
        ctx = service.rag_context(service.role(authorization), body)
        return {"context": ctx.context, "citations": ctx.citations, "took_ms": _ms(started)}

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
            yield _sse("context", {"citations": ctx.citations})
            try:
                for text in stream_answer(llm, build_messages(body.q, ctx)):
                    yield _sse("delta", {"text": text})
            except Exception as exc:  # the stream has started: report in it
                yield _sse("error", {"detail": mask_url(first_line(exc))})
                return
            yield _sse("done", {})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request, authorization: Auth = None) -> HTMLResponse:
        return HTMLResponse(render_page(service, request.query_params, authorization))

    return app


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and one-line message of an error; the page and the API share it."""
    if isinstance(exc, Unauthorized):
        return 401, str(exc)
    if isinstance(exc, Forbidden):
        return 403, str(exc)
    if isinstance(exc, NotFound | psycopg.errors.UndefinedObject | psycopg.errors.NoDataFound):
        return 404, first_line(exc).removeprefix("ragpipe: ")
    if isinstance(exc, BadRequest | psycopg.DataError):
        return 400, first_line(exc).removeprefix("ragpipe: ")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return 403, "this role may not run that search: " + first_line(exc)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return 504, "the search took longer than RAGPIPE_SERVE_STATEMENT_TIMEOUT and was stopped"
    if isinstance(exc, Busy | DatabaseError):
        return 503, mask_url(str(exc))
    return 500, "internal error; the service log has the details"


def _add_error_handlers(app: FastAPI) -> None:
    def handle(request: Request, exc: Exception) -> JSONResponse:
        status, message = error_status(exc)
        if status == 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": message}, status, headers=headers)

    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"detail": problems}, 422)

    app.add_exception_handler(RequestValidationError, invalid)
    for kind in (Unauthorized, Forbidden, NotFound, BadRequest, Busy, DatabaseError, psycopg.Error, Exception):
        app.add_exception_handler(kind, handle)


__all__ = ["MODES", "create_app"]
