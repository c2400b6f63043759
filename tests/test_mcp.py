"""The MCP server (#44.3): the same tools over streamable HTTP at /mcp of `ragpipe serve` and over stdio
(`ragpipe mcp`), answering what the Python API answers, with the HTTP API's tokens and tenants, and
failures as one-line tool errors. Real clients of the `mcp` SDK against real servers."""

import asyncio
import json
import os
import shutil
from collections.abc import Iterator

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from pipelines import search as api
from tests.test_service import QUESTION, serving, tenant_collection
from tools.service import ragpipe_serve

TOOLS = {"list_collections", "search", "fetch_chunk", "fetch_document", "rag_context"}


@pytest.fixture(scope="module")
def served(sample, tmp_path_factory) -> Iterator[str]:
    """`ragpipe serve` as a user starts it; stopped afterwards."""
    with ragpipe_serve(tmp_path_factory.mktemp("mcp") / "serve.log", start_timeout_s=120) as (base, _):
        yield base


def result(got) -> object:
    """A tool's structured answer (a list answer comes wrapped as {"result": [...]})."""
    assert not got.is_error, got.content
    data = got.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


def error_line(got) -> str:
    assert got.is_error, got
    text = got.content[0].text
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


async def exercise(client: Client, sample: str) -> None:
    """Every tool once, compared with the Python API; an unknown collection is a one-line tool error."""
    assert {t.name for t in (await client.list_tools()).tools} == TOOLS
    listed = result(await client.call_tool("list_collections", {}))
    assert sample in {c["name"] for c in listed}
    hits = result(await client.call_tool("search", {"collection": sample, "query": QUESTION, "k": 3}))
    want = api.search(QUESTION, collection=sample, k=3)
    assert [h["chunk_id"] for h in hits] == [w.chunk_id for w in want]
    around = result(await client.call_tool("fetch_chunk", {"collection": sample, "chunk_id": hits[0]["chunk_id"],
                                                            "neighbours": 1}))
    assert [c["chunk_id"] for c in around["chunks"] if c["hit"]] == [hits[0]["chunk_id"]]
    document = result(await client.call_tool("fetch_document", {"collection": sample,
                                                                 "source_id": hits[0]["source_id"]}))
    assert document["source_id"] == hits[0]["source_id"] and hits[0]["text"][:200] in document["text"]
    context = result(await client.call_tool("rag_context", {"collection": sample, "question": QUESTION, "k": 3,
                                                             "neighbours": 1}))
    assert context["context"] == api.rag_context(QUESTION, collection=sample, k=3, neighbours=1).context
    assert "no collection named 'nope'" in error_line(await client.call_tool("search", {"collection": "nope",
                                                                                         "query": "x"}))
    assert error_line(await client.call_tool("fetch_chunk", {"collection": sample, "chunk_id": 1, "neighbours": 99}))


def test_mcp_over_http_at_slash_mcp_of_ragpipe_serve(served, sample):
    async def go() -> None:
        async with Client(f"{served}/mcp") as client:
            await exercise(client, sample)

    asyncio.run(asyncio.wait_for(go(), 120))


def test_mcp_over_stdio_with_ragpipe_mcp(sample, ragpipe_home):
    params = StdioServerParameters(command=shutil.which("ragpipe") or ".venv/bin/ragpipe", args=["mcp"],
                                   env={**os.environ})

    async def go() -> None:
        async with Client(params) as client:
            await exercise(client, sample)

    asyncio.run(asyncio.wait_for(go(), 180))


def test_mcp_applies_the_http_apis_tokens_and_tenants(tmp_path, name, conn, monkeypatch):
    """A tenant's agent sees only its rows; without a token every tool is a one-line error and no row leaks."""
    from pipelines.service import create_app

    rows = tenant_collection(tmp_path, name, conn, monkeypatch)

    async def call(base: str, token: str | None, tool: str, args: dict) -> object:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
                Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
            return await client.call_tool(tool, args)

    with serving(create_app()) as base:
        search = {"collection": name, "query": "cholesterol", "k": 50, "mode": "semantic"}
        acme = result(asyncio.run(call(base, "acme-token-0123456789", "search", search)))
        assert {h["source_id"] for h in acme} == {r["id"] for r in rows if r["tenant"] == "acme"}
        everyone = result(asyncio.run(call(base, "reader-token-0123456789", "search", search)))
        assert {h["metadata"]["tenant"] for h in everyone} == {"acme", "globex"}
        refused = error_line(asyncio.run(call(base, None, "search", search)))
        assert "token" in refused.lower() and "cholesterol" not in refused, refused
        hybrid = error_line(asyncio.run(call(base, "acme-token-0123456789", "search", {**search, "mode": "hybrid"})))
        assert "mode=semantic" in hybrid
        listed = result(asyncio.run(call(base, "acme-token-0123456789", "list_collections", {})))
        assert name in {c["name"] for c in listed} and "acme-token" not in json.dumps(listed)


def test_mcp_answers_where_the_apps_lifespan_never_runs(sample):
    """Mounted in another app (as the Airflow plugin is, in Airflow's API server), /mcp starts itself."""
    from fastapi import FastAPI

    from pipelines.service import create_app

    parent = FastAPI()
    parent.mount("/ragpipe", create_app())

    async def go() -> None:
        async with Client(f"{base}/ragpipe/mcp") as client:
            assert sample in {c["name"] for c in result(await client.call_tool("list_collections", {}))}

    with serving(parent) as base:
        asyncio.run(asyncio.wait_for(go(), 120))
