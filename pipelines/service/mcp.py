"""An MCP server, so that agents search collections as tools: `ragpipe mcp` over stdio (desktop clients),
and the same tools over streamable HTTP at /mcp on `ragpipe serve` and under the Airflow plugin.

Tools: list_collections, search, fetch_chunk (a hit with its neighbours), fetch_document and
rag_context. Each goes through the search service with the caller's role, exactly as the HTTP API:
over HTTP the request's `Authorization: Bearer <token>`, over stdio RAGPIPE_MCP_TOKEN (a token of
RAGPIPE_SERVE_TOKENS); without tokens configured, RAGPIPE_SERVE_ROLE (default ragpipe_reader). A failure is a tool error
of one line, never a traceback. Built on the `mcp` SDK (MCPServer, stateless JSON responses)."""

import asyncio
import os
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.types import Receive, Scope, Send

from pipelines.service.backend import SearchService
from pipelines.service.requests import RagContextRequest, error_status
from pipelines.settings import MAX_K, MAX_NEIGHBOURS

T = TypeVar("T")
INSTRUCTIONS = ("Search document collections loaded by ragpipe: list_collections first, then search one "
                "(semantic, keyword or hybrid), fetch_chunk a hit in its context, or rag_context for a "
                "question's cited passages.")


def authorization_of(ctx: Context) -> str | None:
    """The caller's Authorization header over HTTP; over stdio, RAGPIPE_MCP_TOKEN's bearer token."""
    request = getattr(ctx.request_context, "request", None) if ctx is not None else None
    if request is not None and hasattr(request, "headers"):
        return request.headers.get("authorization")
    token = os.environ.get("RAGPIPE_MCP_TOKEN")
    return f"Bearer {token}" if token else None


async def _call(service: SearchService, ctx: Context, work: Callable[[str], T]) -> T:
    """Run work(role) in a thread (the service is synchronous); any failure is one line, as over HTTP."""
    authorization = authorization_of(ctx)
    try:
        return await anyio.to_thread.run_sync(lambda: work(service.role(authorization)))
    except Exception as exc:  # noqa: BLE001 - every failure becomes the tool's one-line error
        status, message = error_status(exc)
        raise ToolError(f"{message} (HTTP {status})" if status >= 500 else message) from None


def one_line(text: str) -> str:
    """A tool error on one line: the SDK reports wrong arguments as pydantic's multi-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return "; ".join(lines)


class OneLineErrors:
    """Server middleware: every tool error's text on one line, whoever raised it (the SDK or a tool)."""

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        result = await call_next(ctx)
        if ctx.method == "tools/call" and isinstance(result, dict) and result.get("isError"):
            for part in result.get("content", []):
                if isinstance(part.get("text"), str):
                    part["text"] = one_line(part["text"])
        return result


def build_server(service: SearchService) -> MCPServer:
    """The MCP server of ragpipe's tools over `service`."""
    from importlib.metadata import version

    server = MCPServer("ragpipe", instructions=INSTRUCTIONS, version=version("ragpipe"), middleware=[OneLineErrors()])

    @server.tool()
    async def list_collections(ctx: Context) -> list[dict[str, Any]]:
        """The collections you may search: name, model, documents, chunks, last run."""
        return await _call(service, ctx, service.collections)

    @server.tool()
    async def search(
            collection: str, query: str, ctx: Context,
            mode: Literal["hybrid", "semantic", "keyword"] = "hybrid",
            k: Annotated[int, Field(ge=1, le=MAX_K)] = 10,
            filter: Annotated[dict[str, Any] | None, Field(description='document metadata to match, '
                                                           'e.g. {"topic": "soy"}')] = None,
            language: Annotated[str | None, Field(description="the query's language (german, de); default: "
                                                  "every language of the collection")] = None,
            rerank: Annotated[bool | None, Field(description="re-rank with the collection's reranker; default: "
                                                 "when it has one")] = None,
    ) -> list[dict[str, Any]]:
        """The k best chunks of a collection for a query: chunk_id, source_id, uri, title, text, score."""
        hits = await _call(service, ctx, lambda role: service.search(role, collection, query, k, mode, filter,
                                                                     language, rerank))
        return [h.to_dict() for h in hits]

    @server.tool()
    async def fetch_chunk(collection: str, chunk_id: int, ctx: Context,
                          neighbours: Annotated[int, Field(ge=0, le=MAX_NEIGHBOURS)] = 2) -> dict[str, Any]:
        """A search hit's chunk with up to `neighbours` chunks before and after it in its document."""
        found = await _call(service, ctx, lambda role: service.chunk_context(role, collection, chunk_id, neighbours))
        return found.to_dict()

    @server.tool()
    async def fetch_document(collection: str, source_id: str, ctx: Context) -> dict[str, Any]:
        """A document's text as the collection holds it (its chunks joined in order), by its source_id."""
        return await _call(service, ctx, lambda role: service.document(role, collection, source_id))

    @server.tool()
    async def rag_context(collection: str, question: str, ctx: Context,
                          k: Annotated[int, Field(ge=1, le=MAX_K)] = 8,
                          max_tokens: Annotated[int, Field(ge=1, le=100_000)] = 1500,
                          neighbours: Annotated[int, Field(ge=0, le=MAX_NEIGHBOURS)] = 0,
                          rerank: bool | None = None) -> dict[str, Any]:
        """The best passages for a question as one numbered context, with its citations [{n, source_id, uri, title}]."""
        body = RagContextRequest(collection=collection, q=question, k=k, max_tokens=max_tokens, neighbours=neighbours,
                                 rerank=rerank)
        found = await _call(service, ctx, lambda role: service.rag_context(role, body))
        return {"context": found.context, "citations": found.citations, "reranked": found.reranked,
                **({"rerank_error": found.rerank_error} if found.rerank_error else {})}

    return server


class McpEndpoint:
    """The MCP server as an ASGI endpoint (streamable HTTP, stateless, JSON answers): mounted at /mcp.
    Its session manager starts with the first request, so it also works where the app's lifespan never
    runs (mounted in Airflow's API server); the host guard and tokens are the app's own."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self._manager: StreamableHTTPSessionManager | None = None
        self._ready: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._started()
        await self._manager.handle_request(scope, receive, send)

    async def _started(self) -> None:
        if self._runner is None:
            server = build_server(self.service)
            server.streamable_http_app(json_response=True, stateless_http=True, transport_security=(
                TransportSecuritySettings(enable_dns_rebinding_protection=False)))  # the app's Guards check hosts
            self._manager, self._ready = server.session_manager, asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run())
        await self._ready.wait()

    async def _run(self) -> None:
        async with self._manager.run():
            self._ready.set()
            await asyncio.Event().wait()  # until the loop ends (or stop() cancels it)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()


def run_stdio(service: SearchService) -> None:
    """Serve the tools over stdin/stdout until the client closes them."""
    build_server(service).run("stdio")

