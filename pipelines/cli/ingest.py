"""`ragpipe ingest` and `ragpipe status`: runs, and what they left in the database."""

import sys
import time
from pathlib import Path
from typing import Any

import click

from pipelines.cli.common import configured, emit, fail, version_outcome
from pipelines.config import CollectionSpec, parse_collection
from pipelines.settings import load_settings

PROGRESS_EVERY_S = 10
"""When stderr is not a terminal, a progress line at most this often (and one when the last batch is loaded)."""
TABULAR_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".parquet"}


def spec_from_options(source: str | None, name: str, opts: dict[str, Any]) -> CollectionSpec:
    """The collection from collections.yml, or from SOURCE; command-line options override."""
    raw: dict[str, Any] = {"name": name}
    declared = configured(name)
    if declared is not None and source is None:
        raw = {k: v for k, v in declared.__dict__.items()}
    elif source is None:
        fail(f"collection {name!r} is not in {load_settings().collections_file}; give a SOURCE to ingest")
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


@click.command()
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
@click.option("--allow-mass-delete", is_flag=True, help="Delete documents gone from the source even when they are "
              "more than RAGPIPE_MASS_DELETE_FRACTION (default half) of the collection [default: refused, recorded].")
@click.option("--promote", type=click.Choice(["auto", "manual", "force"]), default=None,
              help="A new version: promote it if its scores hold (auto), leave it for `ragpipe promote` "
                   "(manual), or promote it whatever its scores (force) [default: collections.yml, auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as one JSON object.")
def ingest(source: str | None, collection: str, full_refresh: bool, limit: int | None, dry_run: bool,
           promote: str | None, as_json: bool, allow_mass_delete: bool, **opts: Any) -> None:
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

    spec = spec_from_options(source, collection, opts)
    bar = None
    if sys.stderr.isatty() and not as_json:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="doc", desc=f"ingest {collection}")
    started = last_line = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last_line
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()
        elif done == total or time.monotonic() - last_line >= PROGRESS_EVERY_S:  # cron, CI, a pipe
            last_line = time.monotonic()
            rate = done / max(last_line - started, 1e-6)
            click.echo(f"ingest {collection}: {done}/{total} documents ({100 * done // max(total, 1)}%), "
                       f"{rate:.1f}/s", err=True)

    summary = run_ingest(spec, full_refresh=full_refresh, limit=limit, dry_run=dry_run, progress=progress,
                         promote=promote, allow_mass_delete=allow_mass_delete)
    if bar is not None:
        bar.close()
    built = summary.get("new_version")
    if as_json:
        emit({("run_id" if k == "id" else k): v for k, v in summary.items()})
    else:
        click.echo(format_summary(summary))
        if built:
            click.echo(f"new version {built.get('version', '?')}: {format_summary(built)}; "
                       f"{version_outcome(built)}")
        if summary.get("failed") and summary["status"] != "dry_run":
            click.echo(f"failures: ragpipe status --failures --collection {collection}")
    if summary["status"] == "failed" or (built and built["status"] == "failed"):
        sys.exit(1)


def backlog_text(run: dict) -> str:
    """The figures of `ragpipe_backlog_documents` and `ragpipe_freshness_lag_seconds` (docs/metrics.md)."""
    if not run.get("backlog"):
        return "backlog 0"
    return f"backlog {run['backlog']} documents, listed {run['waiting_s']:.0f} s ago and not yet searchable"


@click.command()
@click.option("-c", "--collection", help="Only this collection.")
@click.option("--failures", is_flag=True, help="List the last run's failed documents, and those it indexed with a note "
              "(a duplicate, a language it did not know).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(collection: str | None, failures: bool, as_json: bool) -> None:
    """Collections with document and chunk counts, their last run and its failures, and the
    backlog: documents the last run listed as new or changed and has not indexed yet (still running,
    or left by a `--limit` or a failed batch), with how long ago they were listed."""
    from pipelines.store.status import collection_status

    rows = collection_status(collection)
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no collections yet: ragpipe ingest SOURCE --collection NAME")
    for row in rows:
        run = row["last_run"] or {}
        click.echo(f"{row['collection']}: {row['documents']} documents, {row['chunks']} chunks, "
                   f"model {row['model']} ({row['dimension']}d); last run {run.get('status', '-')} "
                   f"{run.get('finished_at') or ''} failed {run.get('failed', 0)}; {backlog_text(run)}")
        spent = row["api_tokens"]
        if spent["reported"] or spent["estimated"]:
            from pipelines.ingest import api_tokens_text

            last = api_tokens_text(run).removeprefix(", API tokens ") or "0"
            every = api_tokens_text({"api_tokens": spent["reported"], "api_tokens_estimated": spent["estimated"]})
            click.echo(f"  API tokens: last run {last}, all runs {every.removeprefix(', API tokens ')}")
        for b in row["building"]:
            click.echo(f"  building version {b['version']} ({b['model']}, chunk_tokens={b['chunk_tokens']}, "
                       f"overlap={b['chunk_overlap']}): {b['documents']}/{b['of'] or '?'} documents; "
                       f"version {row['version']} serves searches meanwhile")
        if failures:
            for f in row["failures"]:
                click.echo(f"  {f['source_id']} [{f['stage']}] {f['error']}")
