"""Python side of the SQL search API: embed the query with the collection's model, call the SQL function.

    from pipelines.search import search, rag_context
    for hit in search("does coffee raise blood pressure?", collection="sample", k=5):
        print(hit.score, hit.title, hit.uri)
    ctx = rag_context("does coffee raise blood pressure?", collection="sample")
    print(ctx.context, ctx.citations)

Modes: "hybrid" (default: fuses the two below, by reciprocal rank or a convex combination of
normalised scores; best on NFCorpus, see docs/search-quality.md),
"semantic" (cosine similarity on the HNSW index), "keyword" (PostgreSQL full-text search).
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pipelines import store
from pipelines.collection import query_embedder, rerank_options
from pipelines.config import version_name
from pipelines.search.rerank import candidates, rerank
from pipelines.store.connection import open_database
from pipelines.store.database import connect
from pipelines.store.languages import named_language
from pipelines.store.sqlfiles import query

Mode = Literal["semantic", "keyword", "hybrid"]
MODES: tuple[Mode, ...] = ("hybrid", "semantic", "keyword")
DEFAULT_MODE: Mode = "hybrid"
Fusion = Literal["rrf", "convex"]
HYBRID_DEFAULTS: dict[str, Any] = dict(semantic_weight=None, keyword_weight=None, rrf_k=None, fusion=None, alpha=None,
                                       language=None)
"""hybrid_search's optional arguments: None takes the collection's default (collections.yml `search:`;
`language`: the query in every language the collection holds)."""


@dataclass(frozen=True)
class SearchResult:
    chunk_id: int
    source_id: str
    """The document's stable source id (relative path, row id, URL)."""
    uri: str
    title: str | None
    text: str
    metadata: dict[str, Any]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Hits(list):
    """Search results, best first. `reranked`: ordered by the collection's reranker (each score is its
    score); `rerank_error`: why the first-stage order is returned instead (the reranker failed)."""

    def __init__(self, hits: Any = (), reranked: bool = False, rerank_error: str | None = None) -> None:
        super().__init__(hits)
        self.reranked = reranked
        self.rerank_error = rerank_error


@dataclass(frozen=True)
class RagContext:
    context: str
    """Passages, each headed `[n] title`, ready to paste into a prompt."""
    citations: list[dict[str, Any]]
    """[{n, source_id, uri, title}] in citation order."""
    reranked: bool = False
    """The passages were chosen by the collection's reranker."""
    rerank_error: str | None = None
    """Why the first-stage order chose them instead (the reranker failed or timed out)."""


@dataclass(frozen=True)
class ChunkContext:
    """A chunk with its neighbours in its document, in document order."""

    source_id: str
    uri: str
    title: str | None
    chunks: list[dict[str, Any]]
    """[{chunk_id, ordinal, text, hit}]: `hit` marks the chunk asked for."""

    @property
    def text(self) -> str:
        return "\n".join(c["text"] for c in self.chunks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


class UnknownCollection(LookupError):
    pass


def pinned_version(collection: str, url: str | None = None) -> store.Collection:
    """The version `collection` names now: a search embeds its query with that version's model and
    reads that version, even if another is promoted in between (never a mix)."""
    with connect(open_database(url)) as conn:
        found = store.get_collection(conn, collection)
    if found is None:
        raise UnknownCollection(f"no collection named {collection!r}; `ragpipe status` lists them")
    return found


def embed_query(collection: str, text: str, url: str | None = None) -> tuple[np.ndarray, str]:
    """Embed `text` as a query of the collection's active version (its model, query prompt and
    endpoint); returns the vector and the version's name (`name@vN`)."""
    version = pinned_version(collection, url)
    return _embedded(version, text), version_name(version.family, version.version)


def _embedded(version: store.Collection, text: str) -> np.ndarray:
    return query_embedder(version.family, version.model, version.settings).embed_query(text)


def search(text: str, collection: str, k: int = 10, filter: dict[str, Any] | None = None,
           mode: Mode = DEFAULT_MODE, url: str | None = None, semantic_weight: float | None = None,
           keyword_weight: float | None = None, rrf_k: int | None = None, fusion: Fusion | None = None,
           alpha: float | None = None, language: str | None = None, rerank: bool | None = None) -> Hits:
    """The k chunks that best match `text`, best first. The fusion arguments apply to mode="hybrid";
    `language` (e.g. "german" or "de") parses the keyword query in that language alone, instead of
    in every language the collection holds. `rerank`: None re-ranks when the collection has a
    reranker (`rerank:` in collections.yml), True insists on it, False skips it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    version = pinned_version(collection, url)  # a clear error for unknown names
    options = rerank_options(version.family, version.settings, rerank)
    params = dict(collection=version_name(version.family, version.version),
                  embedding=None if mode == "keyword" else _embedded(version, text), text=text,
                  k=candidates(options, k), filter=jsonb_filter(filter), semantic_weight=semantic_weight,
                  keyword_weight=keyword_weight, rrf_k=rrf_k, fusion=fusion, alpha=alpha,
                  language=named_language(language) if language else None)
    return reranked(text, _results(mode, params, url), options, k)


def reranked(text: str, hits: list[SearchResult], options: dict[str, Any] | None, k: int) -> Hits:
    """`hits` re-ranked by `options`' reranker and cut to k (without one: as they are)."""
    if not options:
        return Hits(hits[:k])
    outcome = rerank(text, hits, options, k)
    return Hits(outcome.hits, outcome.reranked, outcome.error)


def similar_chunks(chunk_id: int, k: int = 10, filter: dict[str, Any] | None = None,
                   url: str | None = None) -> list[SearchResult]:
    """Chunks most like chunk `chunk_id` (itself excluded)."""
    return _results("similar_chunks", dict(chunk_id=chunk_id, k=k, filter=jsonb_filter(filter)), url)


def similar_documents(collection: str, source_id: str, k: int = 10, filter: dict[str, Any] | None = None,
                      url: str | None = None) -> list[SearchResult]:
    """Documents most like document `source_id`, one row each (its best chunk)."""
    return _results("similar_documents", dict(collection=collection, source_id=source_id, k=k,
                                              filter=jsonb_filter(filter)), url)


def rag_context(question: str, collection: str, k: int = 8, max_tokens: int = 1500,
                filter: dict[str, Any] | None = None, url: str | None = None, neighbours: int = 0,
                rerank: bool | None = None) -> RagContext:
    """The best passages for `question` as one numbered context, with citations; each hit with up to
    `neighbours` chunks before and after it in its document. `rerank` as for search()."""
    version = pinned_version(collection, url)
    options = rerank_options(version.family, version.settings, rerank)
    params = dict(collection=version_name(version.family, version.version), text=question,
                  embedding=_embedded(version, question), k=k, max_tokens=max_tokens, filter=jsonb_filter(filter),
                  neighbours=neighbours)
    return rag_context_in(lambda: connect(open_database(url)), params, settings=version.settings, options=options,
                          rerank_hits=lambda found: reranked(question, found, options, k))


def rag_context_in(session: Callable[[], AbstractContextManager[psycopg.Connection]], params: dict[str, Any],
                   settings: dict[str, Any], options: dict[str, Any] | None,
                   rerank_hits: Callable[[list[SearchResult]], Hits]) -> RagContext:
    """RAG context (`params` of ragpipe.rag_context) in connections from `session`: one query without
    a reranker; else the first stage's candidates, re-ranked by `rerank_hits` holding no connection,
    and the context of the hits it keeps, in its order."""
    with session() as conn:
        if not options:
            return rag_context_row(conn, params)
        text = None if settings.get("keyword") is False else params["text"]  # keyword: false has no keyword half
        found = run_search(conn, "hybrid", {**HYBRID_DEFAULTS, **params, "k": candidates(options, params["k"]),
                                            "text": text})
    hits = rerank_hits(found)
    with session() as conn:
        return context_of(conn, params, hits)


def context_of(conn: psycopg.Connection, params: dict[str, Any], hits: Hits) -> RagContext:
    """The RAG context of `hits` in their order (ragpipe.context_of), flagged as they were ranked."""
    row = conn.execute(query("search", "context_of"), dict(params, chunk_ids=[h.chunk_id for h in hits])).fetchone()
    return RagContext(row[0] or "", row[1] or [], hits.reranked, hits.rerank_error)


def chunk_context(collection: str, chunk_id: int, neighbours: int = 2, url: str | None = None) -> ChunkContext | None:
    """Chunk `chunk_id` of the collection with up to `neighbours` chunks before and after it (None if
    the collection has no such chunk)."""
    with connect(open_database(url)) as conn:
        return chunk_context_rows(conn, collection, chunk_id, neighbours)


def chunk_context_rows(conn: psycopg.Connection, collection: str, chunk_id: int,
                       neighbours: int) -> ChunkContext | None:
    rows = conn.execute(query("search", "chunk_context"), dict(collection=collection, chunk_id=chunk_id,
                                                                neighbours=neighbours)).fetchall()
    if not rows:
        return None
    return ChunkContext(rows[0][0], rows[0][1], rows[0][2],
                        [dict(chunk_id=r[3], ordinal=r[4], text=r[5], hit=r[6]) for r in rows])


def grant_reader(role: str, url: str | None = None) -> None:
    """Let `role` execute the search functions and read ragpipe.collection_stats, nothing more."""
    _grant("grant_reader", (role,), f"CREATE ROLE {role} NOLOGIN;", url)


def grant_tenant(role: str, tenant: str, url: str | None = None) -> None:
    """Let `role` read the chunks and documents whose metadata tenant is `tenant`, and only those."""
    _grant("grant_tenant", (role, tenant), f"CREATE ROLE {role} NOLOGIN; GRANT ragpipe_tenant_reader TO {role};",
           url)


def _grant(statement: str, params: tuple, admin_sql: str, url: str | None) -> None:
    """Run a grant function; without the privilege it needs, one line saying what an admin must run."""
    from psycopg.errors import InsufficientPrivilege

    from pipelines.store.database import DatabaseError, first_line

    with connect(open_database(url)) as conn:
        try:
            conn.execute(query("search", statement), params)
        except InsufficientPrivilege as exc:
            raise DatabaseError(f"{first_line(exc)}: ask an administrator to run `{admin_sql}` "
                                f"and then this command again (nothing was changed)") from None
        conn.commit()


def jsonb_filter(filter: dict[str, Any] | None) -> Jsonb | None:
    if filter is not None and not isinstance(filter, dict):
        raise ValueError('filter must be a JSON object, e.g. {"topic": "soy"}')
    return Jsonb(filter) if filter is not None else None


def run_search(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> list[SearchResult]:
    """Run the named statement of sql/queries/search.sql (semantic, keyword, hybrid, tenant, similar_*)."""
    return conn.cursor(row_factory=class_row(SearchResult)).execute(query("search", name), params).fetchall()


def rag_context_row(conn: psycopg.Connection, params: dict[str, Any]) -> RagContext:
    row = conn.execute(query("search", "rag_context"), params).fetchone()
    return RagContext(row[0] or "", row[1] or [])


def _results(name: str, params: dict[str, Any], url: str | None) -> list[SearchResult]:
    with connect(open_database(url)) as conn:
        return run_search(conn, name, params)
