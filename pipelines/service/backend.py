"""The search service behind the routes: the database pool, who may do what, and query embedding."""

import contextvars
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

from pipelines.config import version_name
from pipelines.search import (
    HYBRID_DEFAULTS,
    ChunkContext,
    Hits,
    Mode,
    RagContext,
    SearchResult,
    chunk_context_rows,
    jsonb_filter,
    rag_context_in,
    run_search,
)
from pipelines.search.rerank import candidates, rerank
from pipelines.service.access import Access
from pipelines.service.database import ServiceDatabase
from pipelines.service.requests import BadRequest, Forbidden, NotFound, RagContextRequest, check_query
from pipelines.settings import Settings
from pipelines.store.database import database_url, mask_url
from pipelines.store.languages import collection_languages, language_of, named_language, shown
from pipelines.store.sqlfiles import query

log = logging.getLogger(__name__)
SPARE_WAIT_S = 0.05
"""How long hybrid search waits for a second connection before it runs both halves on one."""
COLLECTIONS = ("SELECT collection AS name, model, documents, chunks, last_run_status, last_run_at "
               "FROM ragpipe.collection_stats ORDER BY collection")
TENANT_COLLECTIONS = """
SELECT k.name, k.model, d.documents, (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) AS chunks,
       NULL AS last_run_status, NULL::timestamptz AS last_run_at
FROM ragpipe.collections k
CROSS JOIN LATERAL (SELECT count(*) AS documents FROM ragpipe.documents d WHERE d.collection_id = k.id) d
WHERE k.state = 'active' AND d.documents > 0
ORDER BY k.name"""
"""What a tenant role sees of the collections: those with documents row-level security gives it, counted
as it sees them, without the runs (they are every tenant's)."""
MARK_START, MARK_END = "\x02", "\x03"
MARKED = ("SELECT ts_headline(l::regconfig, t, plainto_tsquery(l::regconfig, %s), "
          "'HighlightAll=true, StartSel=\x02, StopSel=\x03') "
          "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY u(t, l, i) ORDER BY i")
"""Marks around the query's words in each text, as that text's language stems them (not HTML: the page
escapes the text, then marks them)."""


def hybrid_ranking(conn: psycopg.Connection, half: str, params: dict[str, Any]) -> str | None:
    """One half of hybrid search (sql/queries/search.sql `hybrid_semantic` or `hybrid_keyword`): its ranking as text."""
    return conn.execute(query("search", half), params).fetchone()[0]


def declared_models(settings: Settings) -> set[str]:
    """The models of the collections declared in collections.yml, as their versions record them
    (nothing when there is no such file or it does not parse: `ragpipe config check` reports that)."""
    from pipelines.config import ConfigError, load_collections
    from pipelines.embed import resolve_model

    try:
        specs = load_collections(settings.collections_file) if settings.collections_file.exists() else {}
    except (ConfigError, OSError, ValueError):
        return set()
    return {resolve_model(spec.model) for spec in specs.values()}


class Half:
    """A hybrid search's keyword half, which its request cancels when it fails (a 503 during overload)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.conn: psycopg.Connection | None = None
        self.cancelled = False

    def start(self, conn: psycopg.Connection) -> bool:
        with self._lock:
            self.conn = None if self.cancelled else conn
            return not self.cancelled

    def end(self) -> None:
        with self._lock:
            self.conn = None

    def cancel(self) -> bool:
        """Stop the half: before it starts, or its statement while it runs; True when there was one to stop."""
        with self._lock:
            self.cancelled = True
            if self.conn is None:
                return False
            self.conn.cancel_safe(timeout=3)
            return True


class SearchService:
    """What the routes share: the database, who may do what, and query embedding."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.access = Access.from_settings(settings)
        self.url = settings.serve_database_url or database_url(settings)
        self.db = ServiceDatabase(self.url, settings.serve_role, settings.serve_pool_size,
                                  settings.serve_pool_wait_s, int(settings.serve_statement_timeout_s * 1000))
        self._halves = ThreadPoolExecutor(max_workers=settings.serve_pool_size, thread_name_prefix="ragpipe-half")
        """Runs hybrid searches' keyword halves on a connection of their own."""
        self._opened = False
        self._opening = threading.Lock()
        self.warmed = threading.Event()
        """Set once every collection's model is loaded (warm)."""
        self._warming: threading.Thread | None = None
        self._warm_lock = threading.Lock()
        from pipelines.service.metrics import ServiceMetrics

        self.metrics = ServiceMetrics(self.pipeline_rows, self.pool_stats, self.cache_rows, self.token_rows)

    def pipeline_rows(self) -> list[tuple]:
        """ragpipe.pipeline_metrics(): one row of counts a collection, for a scrape."""
        self.open()
        with self.db.probe_session() as conn:
            return conn.execute("SELECT * FROM ragpipe.pipeline_metrics() ORDER BY 1").fetchall()

    def cache_rows(self) -> list[tuple]:
        """ragpipe.cache_metrics(): (model, rows) of the embedding cache."""
        self.open()
        with self.db.probe_session() as conn:
            return conn.execute("SELECT * FROM ragpipe.cache_metrics() ORDER BY 1").fetchall()

    def token_rows(self) -> list[tuple]:
        """(collection, model, kind, reported, estimated) API tokens of the runs: the embedder's
        (ragpipe.token_metrics(), kind documents) and the chunk-context writer's (kind context)."""
        self.open()
        with self.db.probe_session() as conn:
            return conn.execute("SELECT collection, model, 'documents', reported, estimated "
                                "FROM ragpipe.token_metrics() UNION ALL SELECT collection, model, 'context', "
                                "reported, estimated FROM ragpipe.context_token_metrics() ORDER BY 1, 3, 2").fetchall()

    def pool_stats(self) -> dict[str, int]:
        return self.db.pool.get_stats() if self._opened else {}

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
                from pipelines.store.connection import open_database

                open_database(self.url)
            self.db.open()
            for role in self.access.roles() - {self.settings.serve_role}:
                self.db.check_role(role)
            self._opened = True
            log.info("search service: %s as role %s, pool of %d", mask_url(self.url), self.settings.serve_role,
                     self.settings.serve_pool_size)

    def warm(self) -> None:
        """Load every collection's model now, so that the first search is not the slow one: those of
        the collections in the database, and of those collections.yml declares (a fresh Airflow
        starts its API server before the first DAG run has made any)."""
        from pipelines.embed import get_embedder, is_api_model

        models = {c["model"] for c in self.collections(self.settings.serve_role)} | declared_models(self.settings)
        for model in sorted(m for m in models if not is_api_model(m)):  # an API model has nothing to load
            get_embedder(model).encode_queries(["warm up"])
        self.warmed.set()

    def warm_in_background(self) -> None:
        """Open and warm in a daemon thread (once): start-up does not wait, and the first search does
        not load a model. A failure is logged; requests then report it themselves."""
        def run() -> None:
            try:
                self.open()
                self.warm()
            except Exception as exc:  # the database may come up later: requests say why meanwhile
                log.warning("search service: could not load the models in advance: %s", mask_url(str(exc)))

        if self._warming is not None:  # every request of Airflow's API server may ask: no lock then
            return
        with self._warm_lock:  # not _opening: open() holds that while it connects
            if self._warming is None:
                self._warming = threading.Thread(target=run, name="ragpipe-warm", daemon=True)
                self._warming.start()

    def role(self, authorization: str | None) -> str:
        self.open()
        return self.access.role_for(authorization)

    def collections(self, role: str) -> list[dict[str, Any]]:
        """The collections `role` may see: all of them for a reader, its own rows' for a tenant."""
        tenant = self.db.is_tenant(role)
        with self.db.session(role if tenant else None) as conn:
            rows = conn.cursor(row_factory=psycopg.rows.dict_row).execute(
                TENANT_COLLECTIONS if tenant else COLLECTIONS).fetchall()
        return [dict(r, last_run_at=r["last_run_at"].isoformat() if r["last_run_at"] else None) for r in rows]

    def marked(self, collection: str, results: list[SearchResult], q: str, language: str | None = None) -> list[str]:
        """Each result's text with the words of `q` that keyword search matches (stemmed in the
        language its chunk was made in, or `language`; never a stopword) between MARK_START and
        MARK_END, as PostgreSQL's ts_headline finds them."""
        if not results:
            return []
        default, allowed = collection_languages(self.version_of(collection)[2])
        languages = [named_language(language) if language else language_of(r.metadata, default, allowed)[0]
                     for r in results]
        clean = [r.text.replace(MARK_START, "").replace(MARK_END, "") for r in results]
        with self.db.session() as conn:
            return [r[0] for r in conn.execute(MARKED, (q, clean, languages)).fetchall()]

    def version_of(self, collection: str) -> tuple[str, str, dict[str, Any]]:
        """(model, `name@vN`, query settings) of the collection's active version: a request embeds
        with that model and reads that version, even if another is promoted meanwhile."""
        with self.db.session() as conn:
            row = conn.execute("SELECT model, version, query_settings FROM ragpipe.collection_stats "
                               "WHERE collection = %s", (collection,)).fetchone()
        if row is None:
            raise NotFound(f"no collection named {collection!r}; GET /api/collections lists them")
        return row[0], version_name(collection, row[1]), row[2] or {}

    def embed(self, collection: str, text: str) -> tuple[Any, str]:
        """The query's embedding as the collection's searches compute it, and the version it is for."""
        version = self.version_of(collection)
        return self.embed_for(collection, version, text), version[1]

    def embed_for(self, collection: str, version: tuple[str, str, dict[str, Any]], text: str) -> Any:
        """The query's embedding for `version` (what version_of returned), as embed computes it."""
        from pipelines.collection import query_embedder

        embedder = query_embedder(collection, version[0], version[2])
        with self.metrics.embed.time():
            vector = embedder.embed_query(text)
        self.metrics.add_tokens(collection, version[0], "queries", embedder.last_call_tokens())
        return vector

    def search(self, role: str, collection: str, q: str, k: int, mode: Mode,
               filter: dict[str, Any] | None, language: str | None = None, rerank: bool | None = None) -> Hits:
        check_query(q)
        tenant = self.db.is_tenant(role)
        if tenant and mode != "semantic":
            raise Forbidden("a tenant token searches with mode=semantic only (row-level security applies there)")
        version = self.version_of(collection)  # unknown names: a 404 in every mode
        options = self.rerank_options(collection, version, rerank)
        params = dict(HYBRID_DEFAULTS, collection=version[1], text=q, embedding=None, k=candidates(options, k),
                      filter=jsonb_filter(filter), language=self.checked_language(language))
        if tenant:
            self.check_visible(role, collection)
        keyword = half = None
        if mode == "hybrid" and not tenant:  # the keyword half needs no embedding: it starts first
            half = Half()
            keyword = self._halves.submit(contextvars.copy_context().run, self.keyword_half, role, params, half)
        try:
            if mode != "keyword":
                params = dict(params, embedding=self.embed_for(collection, version, q))
            with self.db.session(role) as conn, self.metrics.sql.labels(mode).time():
                if keyword is not None:
                    found = self.hybrid(conn, role, params, keyword)
                else:
                    found = run_search(conn, "tenant" if tenant else mode, params)
        except BaseException:
            if half is not None and half.cancel():
                self.metrics.cancelled_halves.inc()
            raise
        return self.reranked(collection, q, found, options, k)

    def rerank_options(self, collection: str, version: tuple[str, str, dict[str, Any]],
                       asked: bool | None) -> dict[str, Any] | None:
        """The reranker of a request (RerankOptions), or None; asking for one a collection lacks is a BadRequest."""
        from pipelines.collection import rerank_options
        from pipelines.config import ConfigError

        try:
            return rerank_options(collection, version[2], asked)
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None

    def reranked(self, collection: str, q: str, found: list[SearchResult], options: dict[str, Any] | None,
                 k: int) -> Hits:
        """`found` re-ranked (outside any database session: a model call may take seconds), counted in the metrics."""
        if not options:
            return Hits(found[:k])
        outcome = rerank(q, found, options, k)
        self.metrics.rerank.observe(outcome.seconds)
        if outcome.error is not None:
            self.metrics.rerank_failures.labels(collection).inc()
        return Hits(outcome.hits, outcome.reranked, outcome.error)

    def keyword_half(self, role: str, params: dict[str, Any], half: "Half | None" = None) -> str | None | bool:
        """Hybrid search's keyword ranking on a spare connection, or False when none is free within SPARE_WAIT_S
        (or the request has failed meanwhile: `half` cancelled)."""
        half = half or Half()
        with self.db.spare_session(role, SPARE_WAIT_S) as spare:
            if spare is None or not half.start(spare):
                return False
            try:
                return hybrid_ranking(spare, "hybrid_keyword", params)
            except psycopg.errors.QueryCanceled:
                if half.cancelled:
                    return False
                raise
            finally:
                half.end()

    def hybrid(self, conn: psycopg.Connection, role: str, params: dict[str, Any],
               keyword: Future | None = None) -> list[SearchResult]:
        """Hybrid search with its keyword half on a second connection (`keyword`, started by the
        caller before embedding the query, or here) while `conn` runs the semantic half (one after
        the other on `conn` when the pool has none free within SPARE_WAIT_S), fused by
        ragpipe.fuse_rankings exactly as ragpipe.hybrid_search fuses them."""
        if keyword is None:
            keyword = self._halves.submit(self.keyword_half, role, params)
        semantic = hybrid_ranking(conn, "hybrid_semantic", params)
        found = keyword.result()
        self.metrics.hybrid_halves.labels("concurrent" if found is not False else "sequential").inc()
        if found is False:
            found = hybrid_ranking(conn, "hybrid_keyword", params)
        return run_search(conn, "hybrid_fuse", dict(params, semantic=semantic, keyword=found))

    def checked_language(self, language: str | None) -> str | None:
        """The text search configuration `language` names (None for none), or BadRequest."""
        if not language:
            return None
        name = named_language(language)
        with self.db.session() as conn:
            if conn.execute("SELECT 1 FROM pg_ts_config WHERE cfgname = %s", (name,)).fetchone() is None:
                raise BadRequest(f"language {shown(language)} is not a text search configuration of the database "
                                 "(english, german, simple, ...: SELECT cfgname FROM pg_ts_config)")
        return name

    def similar(self, role: str, collection: str, source_id: str, k: int) -> list[SearchResult]:
        self.forbid_tenant(role, "similar documents")
        collection = self.version_of(collection)[1]
        with self.db.session(role) as conn:
            return run_search(conn, "similar_documents", dict(collection=collection, source_id=source_id, k=k,
                                                              filter=None))

    def chunk_context(self, role: str, collection: str, chunk_id: int, neighbours: int) -> ChunkContext:
        """A chunk of the collection's searched version with its neighbours, or NotFound."""
        self.forbid_tenant(role, "chunk context")
        version = self.version_of(collection)[1]
        found = None
        if 0 < chunk_id < 2**63:  # a chunk id is a bigint: any other number names no chunk
            with self.db.session(role) as conn:
                found = chunk_context_rows(conn, version, chunk_id, neighbours)
        if found is None:
            raise NotFound(f"collection {collection!r} has no chunk {chunk_id} (chunk ids change when a document "
                           "is read again: search again)")
        return found

    def document(self, role: str, collection: str, source_id: str) -> dict[str, Any]:
        """A document of the collection's searched version as it holds it (ragpipe.document_text), or NotFound."""
        self.forbid_tenant(role, "documents")
        version = self.version_of(collection)[1]
        with self.db.session(role) as conn:
            cur = conn.execute(query("search", "document_text"), dict(collection=version, source_id=source_id))
            row = cur.fetchone()
            names = [c.name for c in cur.description]
        if row is None:
            raise NotFound(f"collection {collection!r} has no document {source_id!r} (search it for its source_id)")
        return dict(zip(names, row, strict=True))

    def rag_context(self, role: str, body: RagContextRequest) -> RagContext:
        check_query(body.q)
        self.forbid_tenant(role, "RAG context")
        version = self.version_of(body.collection)
        options = self.rerank_options(body.collection, version, body.rerank)
        embedding = self.embed_for(body.collection, version, body.q)
        params = dict(collection=version[1], text=body.q, embedding=embedding, k=body.k, max_tokens=body.max_tokens,
                      filter=jsonb_filter(body.filter), neighbours=body.neighbours)
        return rag_context_in(lambda: self.db.session(role), params, settings=version[2], options=options,
                              rerank_hits=lambda found: self.reranked(body.collection, body.q, found, options, body.k))

    def check_visible(self, role: str, collection: str) -> None:
        """A tenant sees only collections holding rows of its own: any other name is as unknown as one that
        does not exist (the same 404)."""
        with self.db.session(role) as conn:
            seen = conn.execute("SELECT EXISTS (SELECT 1 FROM ragpipe.documents d JOIN ragpipe.collections k "
                                "ON k.id = d.collection_id WHERE k.name = %s AND k.state = 'active')",
                                (collection,)).fetchone()[0]
        if not seen:
            raise NotFound(f"no collection named {collection!r}; GET /api/collections lists them")

    def may_see_every_collection(self, authorization: str | None) -> bool:
        """Whether a scrape may read every collection's series: always without tokens, else with a
        token of a role that is not a tenant's."""
        if not self.access.required:
            return True
        try:
            role = self.access.role_for(authorization)
        except Exception:
            return False
        self.open()
        return not self.db.is_tenant(role)

    def forbid_tenant(self, role: str, what: str) -> None:
        if self.db.is_tenant(role):
            raise Forbidden(f"a tenant token cannot ask for {what}: it searches with mode=semantic only")
