"""The `ragpipe` command: ingest, search, serve, status, embed, db and config. Every command has --help."""

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from pipelines.config import CollectionSpec, ConfigError, load_collections, parse_collection
from pipelines.settings import load_settings

TABULAR_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".parquet"}
MAX_K = 1000
"""The most results a command returns (the SQL functions check their own, larger bound)."""


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _configured(name: str) -> CollectionSpec | None:
    settings = load_settings()
    if not settings.collections_file.exists():
        return None
    return load_collections(settings.collections_file).get(name)


def _spec_from_options(source: str | None, name: str, opts: dict[str, Any]) -> CollectionSpec:
    """The collection from collections.yml, or from SOURCE; command-line options override."""
    raw: dict[str, Any] = {"name": name}
    configured = _configured(name)
    if configured is not None and source is None:
        raw = {k: v for k, v in configured.__dict__.items()}
    elif source is None:
        _fail(f"collection {name!r} is not in {load_settings().collections_file}; give a SOURCE to ingest")
    else:
        path = Path(source)
        if path.suffix.lower() in TABULAR_SUFFIXES:
            raw["source"] = {"kind": "tabular", "path": source, "id_column": opts["id_column"],
                             "text_column": opts["text_column"], "title_column": opts["title_column"]}
        else:
            raw["source"] = {"kind": "folder", "path": source}
            if opts["include"]:
                raw["source"]["include"] = list(opts["include"])
            if opts["exclude"]:
                raw["source"]["exclude"] = list(opts["exclude"])
    for key in ("model", "chunk_tokens", "chunk_overlap", "chunk_context", "batch_size"):
        if opts.get(key) is not None:
            raw[key] = opts[key]
    raw.setdefault("model", load_settings().model)
    return parse_collection(raw, where=f"collection {name!r}", base=Path.cwd())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO level).")
def main(verbose: bool) -> None:
    """ragpipe: documents → chunks → embeddings → PostgreSQL/pgvector, searchable from SQL.

    The database is the embedded PostgreSQL under .ragpipe/pgdata unless RAGPIPE_DATABASE_URL is set.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("source", required=False)
@click.option("-c", "--collection", required=True, help="Collection name (declared in collections.yml, or new).")
@click.option("--model", help="sentence-transformers model name or path [default: all-MiniLM-L6-v2].")
@click.option("--chunk-tokens", type=int, help="Tokens per chunk incl. special tokens [default: model max].")
@click.option("--chunk-overlap", type=int, help="Tokens shared by consecutive chunks [default: 32].")
@click.option("--chunk-context/--no-chunk-context", default=None,
              help="Embed each chunk after its title and heading path [default: off]; a change re-chunks.")
@click.option("--batch-size", type=int, help="Chunks per model call [default: 32].")
@click.option("--id-column", default="id", show_default=True, help="Tables: column with the stable row id.")
@click.option("--text-column", default="text", show_default=True, help="Tables: column with the text.")
@click.option("--title-column", default=None, help="Tables: column with the title.")
@click.option("--include", multiple=True, help="Folders: glob of files to take (repeatable).")
@click.option("--exclude", multiple=True, help="Folders: glob of files to skip (repeatable).")
@click.option("--full-refresh", is_flag=True, help="Re-read and re-embed every document.")
@click.option("--limit", type=int, help="Process at most N new/changed documents.")
@click.option("--dry-run", is_flag=True, help="Plan only: report what would change.")
@click.option("--promote", type=click.Choice(["auto", "manual", "force"]), default=None,
              help="A new version: promote it if its scores hold (auto), leave it for `ragpipe promote` "
                   "(manual), or promote it whatever its scores (force) [default: collections.yml, auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as one JSON object.")
def ingest(source: str | None, collection: str, full_refresh: bool, limit: int | None, dry_run: bool,
           promote: str | None, as_json: bool, **opts: Any) -> None:
    """Ingest SOURCE (a folder, or a .csv/.jsonl/.parquet table) into a collection.

    Without SOURCE the collection's source from collections.yml is used. Re-runs only embed what
    changed and delete documents that disappeared. Failed documents are recorded and reported;
    the command exits 0 when some documents failed, 1 when every document it read failed.

    A new model, chunking, chunk context or HNSW build setting builds a new version of the
    collection beside the active one, which keeps serving searches; chunk texts already embedded
    by the same model are reused. The new version is scored (collections.yml `eval:` and
    `smoke_queries`) and replaces the active one in one transaction. See `ragpipe versions`.
    """
    from pipelines.ingest import format_summary, run_ingest

    spec = _spec_from_options(source, collection, opts)
    bar = None
    if sys.stderr.isatty() and not as_json:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="doc", desc=f"ingest {collection}")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    summary = run_ingest(spec, full_refresh=full_refresh, limit=limit, dry_run=dry_run, progress=progress,
                         promote=promote)
    if bar is not None:
        bar.close()
    built = summary.get("new_version")
    if as_json:
        _emit({("run_id" if k == "id" else k): v for k, v in summary.items()})
    else:
        click.echo(format_summary(summary))
        if built:
            click.echo(f"new version {built.get('version', '?')}: {format_summary(built)}; "
                       f"{version_outcome(built)}")
        if summary.get("failed"):
            click.echo(f"failures: ragpipe status --failures --collection {collection}")
    if summary["status"] == "failed" or (built and built["status"] == "failed"):
        sys.exit(1)


def version_outcome(built: dict[str, Any]) -> str:
    """One line on what became of a new version: promoted, waiting, or rejected with its scores."""
    verdict = built.get("evaluation") or {}
    if built.get("promoted"):
        return f"promoted ({verdict.get('reason', 'forced')})"
    if built.get("state") == "rejected":
        return f"not promoted: {verdict.get('reason', 'rolled back earlier')}; `ragpipe promote --force` overrides"
    if built.get("state") == "ready":
        return "built; waiting for `ragpipe promote`"
    return f"state {built.get('state', 'building')}"


def _parse_filter(filter_: str | None) -> dict[str, Any] | None:
    try:
        filt = json.loads(filter_) if filter_ else None
    except json.JSONDecodeError as exc:
        _fail(f"--filter is not valid JSON: {exc}")
    if filt is not None and not isinstance(filt, dict):
        _fail('--filter must be a JSON object, e.g. {"topic": "soy"}')
    return filt


def _print_hits(results: list, as_json: bool) -> None:
    if as_json:
        _emit([r.to_dict() for r in results])
        return
    for i, r in enumerate(results, 1):
        click.echo(f"{i}. [{r.score:.3f}] {r.title or r.source_id}  ({r.source_id})")
        click.echo("   " + " ".join(r.text.split())[:240])


@main.command()
@click.argument("query")
@click.option("-c", "--collection", required=True, help="Collection to search.")
@click.option("-k", "--k", "k", default=5, show_default=True, type=click.IntRange(1, MAX_K), help="Number of results.")
@click.option("--mode", type=click.Choice(["hybrid", "semantic", "keyword"]), default="hybrid", show_default=True,
              help="hybrid fuses semantic and keyword rankings (reciprocal rank fusion); best on NFCorpus.")
@click.option("--filter", "filter_", help='Document metadata that must match (JSON), e.g. \'{"topic": "soy"}\'.')
@click.option("--json", "as_json", is_flag=True, help="Print results as a JSON list.")
def search(query: str, collection: str, k: int, mode: str, filter_: str | None, as_json: bool) -> None:
    """Search a collection: the K chunks that best match QUERY."""
    from pipelines.search import search as run_search

    _print_hits(run_search(query, collection=collection, k=k, filter=_parse_filter(filter_), mode=mode), as_json)


@main.command()
@click.argument("source_id")
@click.option("-c", "--collection", required=True, help="Collection of the document.")
@click.option("-k", "--k", "k", default=5, show_default=True, type=click.IntRange(1, MAX_K),
              help="Number of documents.")
@click.option("--json", "as_json", is_flag=True, help="Print results as a JSON list.")
def similar(source_id: str, collection: str, k: int, as_json: bool) -> None:
    """Documents most like DOCUMENT_ID (its source id), no query needed."""
    from pipelines.search import similar_documents

    _print_hits(similar_documents(collection, source_id, k), as_json)


@main.command()
@click.argument("question")
@click.option("-c", "--collection", required=True, help="Collection to answer from.")
@click.option("-k", "--k", "k", default=8, show_default=True, type=click.IntRange(1, MAX_K), help="Chunks to retrieve.")
@click.option("--max-tokens", default=1500, show_default=True, help="Token budget of the context.")
@click.option("--filter", "filter_", help="Document metadata that must match (JSON).")
def ask(question: str, collection: str, k: int, max_tokens: int, filter_: str | None) -> None:
    """Answer QUESTION from the collection with an LLM, citing the sources.

    Set RAGPIPE_LLM_URL to an OpenAI-compatible API (e.g. http://localhost:11434/v1 for Ollama,
    https://api.openai.com/v1), and RAGPIPE_LLM_MODEL / RAGPIPE_LLM_API_KEY as needed. Without it,
    the assembled prompt is printed instead.
    """
    import httpx

    from pipelines.search import rag_context
    from pipelines.search.ask import build_messages, format_citations, llm_settings, stream_answer
    from pipelines.store.database import mask_url

    ctx = rag_context(question, collection, k=k, max_tokens=max_tokens, filter=_parse_filter(filter_))
    messages = build_messages(question, ctx)
    settings = llm_settings()
    if settings is None:
        for m in messages:
            click.echo(f"--- {m['role']} ---\n{m['content']}\n")
        click.echo("No LLM configured: set RAGPIPE_LLM_URL (an OpenAI-compatible /v1 endpoint), and "
                   "RAGPIPE_LLM_MODEL / RAGPIPE_LLM_API_KEY if needed, to get an answer.", err=True)
        return
    try:
        for piece in stream_answer(settings, messages):
            click.echo(piece, nl=False)
    except (RuntimeError, OSError, ValueError, httpx.HTTPError) as exc:
        _fail(f"the LLM request failed: {mask_url(str(exc))}; check RAGPIPE_LLM_URL")
    click.echo("\n\nSources:\n" + format_citations(ctx))


@main.command()
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
    """
    import uvicorn

    from pipelines.service import create_app

    app = create_app()
    app.state.service.open()  # errors here are one line, before anything listens
    app.state.service.warm()
    click.echo(f"ragpipe search on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops it", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


@main.command("eval")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--modes", default="semantic,keyword,hybrid,exact", show_default=True,
              help="Comma-separated: semantic, keyword, hybrid, exact (brute-force semantic).")
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv to score against.")
@click.option("--collection", help="Collection name [default: beir_<dataset>].")
@click.option("--max-queries", type=int, help="Score only the first N queries.")
@click.option("--chunk-context", is_flag=True,
              help="Evaluate a collection that embeds each chunk after its title (beir_<dataset>_ctx).")
@click.option("--chunk-tokens", type=click.IntRange(16), default=None,
              help="Evaluate a collection chunked to this many tokens (beir_<dataset>_t<N>) "
                   "[default: the model's limit].")
@click.option("--sweep", is_flag=True,
              help="Also score hybrid under each fusion setting (rrf_k 10/30/60, convex alpha 0.3-0.7). "
                   "Choose on --split dev, then report once on test.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_(dataset_dir: Path, modes: str, split: str, collection: str | None, max_queries: int | None,
          chunk_context: bool, chunk_tokens: int | None, sweep: bool, as_json: bool) -> None:
    """Retrieval quality on a BEIR data set (corpus.jsonl, queries.jsonl, qrels/test.tsv).

    Ingests the corpus through the normal pipeline (incrementally: re-runs are cheap), runs every
    test query through the SQL functions and reports nDCG@10, Recall@100, MRR@10 and latency.
    A document's score is its best chunk's score.
    """
    from tabulate import tabulate

    from pipelines.search.evaluate import evaluate

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = set(wanted) - {"semantic", "keyword", "hybrid", "exact"}
    if unknown:
        _fail(f"unknown mode(s) {sorted(unknown)}")
    report = evaluate(dataset_dir, wanted, collection=collection, split=split, max_queries=max_queries, sweep=sweep,
                      chunk_context=chunk_context, chunk_tokens=chunk_tokens)
    if as_json:
        _emit(report)
        return
    click.echo(f"{report['dataset']}: {report['documents']} documents, {report['queries']} queries ({split})")
    scored = {**report["modes"], **{f"hybrid {label}": m for label, m in report.get("sweep", {}).items()}}
    if scored:
        rows = [[mode, *m.values()] for mode, m in scored.items()]
        click.echo(tabulate(rows, headers=["mode", *next(iter(scored.values())).keys()]))


@main.command()
@click.option("-c", "--collection", help="Only this collection.")
@click.option("--failures", is_flag=True, help="List the failed documents of the last run.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(collection: str | None, failures: bool, as_json: bool) -> None:
    """Collections with document and chunk counts, their last run and its failures."""
    from pipelines.store.status import collection_status

    rows = collection_status(collection)
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no collections yet: ragpipe ingest SOURCE --collection NAME")
    for row in rows:
        run = row["last_run"] or {}
        click.echo(f"{row['collection']}: {row['documents']} documents, {row['chunks']} chunks, "
                   f"model {row['model']} ({row['dimension']}d); last run {run.get('status', '-')} "
                   f"{run.get('finished_at') or ''} failed {run.get('failed', 0)}")
        for b in row["building"]:
            click.echo(f"  building version {b['version']} ({b['model']}, chunk_tokens={b['chunk_tokens']}, "
                       f"overlap={b['chunk_overlap']}): {b['documents']}/{b['of'] or '?'} documents; "
                       f"version {row['version']} serves searches meanwhile")
        if failures:
            for f in row["failures"]:
                click.echo(f"  {f['source_id']} [{f['stage']}] {f['error']}")


def _spec_or_bare(name: str) -> CollectionSpec:
    """The collection from collections.yml (its eval set and smoke queries), or a bare one by name."""
    return _configured(name) or parse_collection({"name": name, "source": {"kind": "folder", "path": "/"}},
                                                 where=name, base=Path.cwd())


@main.command()
@click.argument("collection")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def versions(collection: str, as_json: bool) -> None:
    """The versions of COLLECTION: model, chunking, size, scores and state.

    States: active (searches read it, under the collection's name), building, ready (built, waiting
    for `ragpipe promote`), rejected (scored worse, or rolled back), previous (kept for rollback until
    `ragpipe prune`). Any version can be searched as COLLECTION@vN.
    """
    from pipelines.versions import list_versions

    rows = list_versions(collection)
    if as_json:
        _emit(rows)
        return
    for v in rows:
        verdict = v["evaluation"] or {}
        score = (f" {verdict['metric']} {verdict['candidate']} (active then {verdict['active']})"
                 if "metric" in verdict else "")
        click.echo(f"v{v['version']} {v['state']:<9} {v['model']} chunk_tokens={v['chunk_tokens']} "
                   f"overlap={v['chunk_overlap']} context={bool(v['settings'].get('chunk_context'))}: "
                   f"{v['documents']} documents, {v['chunks']} chunks{score}")


@main.command()
@click.argument("collection")
@click.argument("version", type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Promote even if its scores drop or a smoke query finds nothing.")
def promote(collection: str, version: int, force: bool) -> None:
    """Make VERSION of COLLECTION the one searches read, in one transaction.

    It is scored against the active version first (collections.yml `eval:`, `smoke_queries`,
    `promote.max_drop`); a worse score refuses the promotion unless --force.
    """
    from pipelines.versions import promote as promote_version

    outcome = promote_version(_spec_or_bare(collection), version, force=force)
    already = outcome["state"] == "active" and not outcome["promoted"]
    click.echo(f"{collection} v{version}: {'already active' if already else version_outcome(outcome)}")
    if outcome["state"] == "rejected":
        sys.exit(1)


@main.command()
@click.argument("collection")
def rollback(collection: str) -> None:
    """Make the version that was active before the current one active again.

    The current one is marked rejected: later runs keep it in step but do not promote it on their own.
    """
    from pipelines.versions import rollback as rollback_version

    click.echo(f"{collection}: version {rollback_version(_spec_or_bare(collection))} is active again")


@main.command()
@click.argument("collection")
def prune(collection: str) -> None:
    """Drop the versions of COLLECTION that are neither active nor being built.

    Their vectors move to the embedding cache, so a later version with the same model reuses them.
    """
    from pipelines.versions import prune as prune_versions

    dropped = prune_versions(_spec_or_bare(collection))
    click.echo(f"{collection}: dropped versions {dropped}" if dropped else f"{collection}: nothing to drop")


@main.command()
@click.argument("collection")
@click.option("--recall", "target", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Recall@10 to reach.")
@click.option("--queries", type=click.IntRange(1), default=30, show_default=True,
              help="Stored chunks used as queries (each costs one exact search: ~6 s at 1M chunks on 2 cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON.")
def tune(collection: str, target: float, queries: int, as_json: bool) -> None:
    """Measure COLLECTION's semantic recall@10 and latency at rising ef_search, and name the smallest
    ef_search that reaches --recall: set it as `index: {ef_search: N}` in collections.yml.

    Recall is against exact search, on the collection's own vectors. Nothing is changed: each value
    is tried in a transaction that is rolled back.
    """
    from dataclasses import asdict

    from pipelines.ingest import open_database
    from pipelines.search.tuning import choose_ef_search, recall_curve
    from pipelines.store.database import connect

    with connect(open_database(), autocommit=True) as conn:
        try:
            curve = recall_curve(conn, collection, queries, target=target,
                                 progress=lambda line: click.echo(line, err=True) if not as_json else None)
        except LookupError as exc:
            _fail(str(exc))
    best = choose_ef_search(curve, target)
    if as_json:
        _emit({"curve": [asdict(p) for p in curve], "ef_search": best.ef_search if best else None})
        return
    for p in curve:
        click.echo(f"ef_search {p.ef_search:>4}: recall@10 {p.recall:.3f}, "
                   f"p50 {p.p50_ms:.1f} ms, p95 {p.p95_ms:.1f} ms")
    if best is None:
        _fail(f"no ef_search up to {curve[-1].ef_search} reaches recall {target}: rebuild the index with a "
              "larger index.m or ef_construction (a new version)")
    click.echo(f"set `index: {{ef_search: {best.ef_search}}}` for {collection} in collections.yml "
               f"(recall@10 {best.recall:.3f} at p50 {best.p50_ms:.1f} ms)")


@main.group()
def cache() -> None:
    """The embedding cache: vectors of chunk texts that left every collection, reused by text."""


@cache.command("prune")
@click.option("--max-rows", type=click.IntRange(0), help="Entries to keep [default: RAGPIPE_CACHE_MAX_ROWS].")
@click.option("--max-age-days", type=click.FloatRange(0), help="Drop entries unused this long "
              "[default: RAGPIPE_CACHE_MAX_AGE_DAYS].")
def cache_prune(max_rows: int | None, max_age_days: float | None) -> None:
    """Apply the cache's retention now (every ingest run applies it too)."""
    from pipelines import store
    from pipelines.ingest import open_database
    from pipelines.store.database import connect

    settings = load_settings()
    with connect(open_database()) as conn:
        removed, kept = store.prune_cache(conn, settings.cache_max_rows if max_rows is None else max_rows,
                                          settings.cache_max_age_days if max_age_days is None else max_age_days)
    click.echo(f"embedding cache: removed {removed}, kept {kept}")


@main.command()
@click.argument("text")
@click.option("--model", help="Model name or path [default: the configured default model].")
def embed(text: str, model: str | None) -> None:
    """Print TEXT's embedding as a pgvector literal, for use in SQL."""
    from pipelines.embed import get_embedder

    vector = get_embedder(model or load_settings().model).encode([text])[0]
    click.echo("[" + ",".join(f"{x:.7g}" for x in vector) + "]")


@main.group()
def db() -> None:
    """The database: embedded PostgreSQL lifecycle, schema, connection URL."""


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (no-op when already running) and apply migrations."""
    from pipelines.ingest import open_database

    settings = load_settings()
    open_database()
    where = "external database (RAGPIPE_DATABASE_URL)" if settings.database_url else str(settings.pgdata)
    click.echo(f"database ready: {where}")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    from pipelines.store.database import stop_embedded_server

    settings = load_settings()
    if settings.database_url:
        _fail("RAGPIPE_DATABASE_URL is set: ragpipe does not manage that server")
    was_running = stop_embedded_server(settings.pgdata)
    click.echo("embedded PostgreSQL stopped" if was_running else "embedded PostgreSQL was not running")


@db.command("status")
def db_status() -> None:
    """Say whether the database is reachable, and its versions (starts nothing; exit 1 when down)."""
    from pipelines.ingest import open_database
    from pipelines.store.database import connect, mask_url

    settings = load_settings()
    if not settings.database_url and not (settings.pgdata / "postmaster.pid").exists():
        click.echo(f"down: the embedded PostgreSQL in {settings.pgdata} is not running (start it: ragpipe db start)")
        sys.exit(1)
    url = open_database()
    with connect(url) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        vec = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    click.echo(f"up: {mask_url(url)} (PostgreSQL {pg}, pgvector {vec})")


@db.command("url")
@click.option("--reveal", is_flag=True, help="Show the password too (it is masked by default).")
def db_url(reveal: bool) -> None:
    """Print the connection URL (starting the embedded server if needed)."""
    from pipelines.store.database import database_url, mask_url

    url = database_url()
    click.echo(url if reveal else mask_url(url))


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations and refresh the SQL API."""
    from pipelines.store.database import database_url
    from pipelines.store.migrations import migrate

    applied = migrate(database_url())
    click.echo("applied: " + ", ".join(applied) if applied else "schema up to date")


@db.command("grant-reader")
@click.argument("role")
def db_grant_reader(role: str) -> None:
    """Let ROLE execute the search functions and read ragpipe.collection_stats, nothing else.

    ROLE is created (NOLOGIN) if missing; grant it to login roles, or create it with LOGIN first.
    """
    from pipelines.search import grant_reader

    grant_reader(role)
    click.echo(f"{role} may now search (and nothing more)")


@db.command("grant-tenant")
@click.argument("role")
@click.argument("tenant")
def db_grant_tenant(role: str, tenant: str) -> None:
    """Let ROLE read only TENANT's rows (row-level security) and search them with ragpipe.tenant_search.

    A document's tenant is its metadata key "tenant" (e.g. a `tenant` column of a table source).
    ROLE is created (NOLOGIN) if missing; it must not be a superuser or have BYPASSRLS.
    """
    from pipelines.search import grant_tenant

    grant_tenant(role, tenant)
    click.echo(f"{role} may now read tenant {tenant!r} (and no other tenant)")


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def db_psql(args: tuple[str, ...]) -> None:
    """Open psql on the database (extra ARGS go to psql, e.g. -c "SELECT 1")."""
    import shutil

    from pipelines.store.database import database_url, embedded_server

    settings = load_settings()
    url = database_url()
    psql = shutil.which("psql")
    if not settings.database_url:
        psql = str(embedded_server(settings.pgdata).bin_path / "psql")
    if not psql:
        _fail("psql not found on PATH; install the PostgreSQL client")
    os.execv(psql, [psql, url, *args])


@main.group()
def config() -> None:
    """collections.yml: the declared collections."""


@config.command("check")
def config_check() -> None:
    """Validate collections.yml; errors name the collection and the key."""
    path = load_settings().collections_file
    specs = load_collections(path)
    for spec in specs.values():
        click.echo(f"ok  {spec.name}: {spec.source['kind']} source, schedule {spec.schedule}, model {spec.model}")


def run() -> None:
    """Entry point with one-line errors instead of tracebacks for expected failures."""
    import psycopg

    from pipelines.settings import SettingsError
    from pipelines.sources import SourceError
    from pipelines.store import CollectionBusy, CollectionMismatch
    from pipelines.store.database import DatabaseError, first_line, mask_url

    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ConfigError, SettingsError, DatabaseError, SourceError, CollectionMismatch, CollectionBusy,
            LookupError) as exc:
        click.echo(f"Error: {mask_url(str(exc))}", err=True)
        sys.exit(1)
    except (psycopg.DataError, psycopg.errors.NoDataFound, psycopg.errors.RaiseException,
            psycopg.errors.UndefinedObject, psycopg.errors.ObjectNotInPrerequisiteState) as exc:
        click.echo(f"Error: {first_line(exc).removeprefix('ragpipe: ')}", err=True)
        sys.exit(1)
    except psycopg.OperationalError as exc:
        first = first_line(exc)
        click.echo(f"Error: lost the database connection ({first}). Nothing half-written was "
                   "kept: each document is replaced in one transaction. Run the command again.", err=True)
        sys.exit(1)
