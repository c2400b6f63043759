"""`ragpipe db` (the embedded PostgreSQL, schema, roles) and `ragpipe cache` (the embedding cache)."""

import os
import sys

import click

from pipelines.cli.common import fail
from pipelines.settings import load_settings


@click.group()
def db() -> None:
    """The database: embedded PostgreSQL lifecycle, schema, connection URL."""


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (no-op when already running) and apply migrations."""
    from pipelines.store.connection import open_database

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
        fail("RAGPIPE_DATABASE_URL is set: ragpipe does not manage that server")
    was_running = stop_embedded_server(settings.pgdata)
    click.echo("embedded PostgreSQL stopped" if was_running else "embedded PostgreSQL was not running")


@db.command("status")
def db_status() -> None:
    """Say whether the database is reachable, and its versions (starts nothing; exit 1 when down)."""
    from pipelines.store.connection import open_database
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
        fail("psql not found on PATH; install the PostgreSQL client")
    os.execv(psql, [psql, url, *args])


@click.group()
def cache() -> None:
    """The embedding cache: vectors of chunk texts that left every collection, reused by text."""


@cache.command("prune")
@click.option("--max-rows", type=click.IntRange(0), help="Entries to keep [default: RAGPIPE_CACHE_MAX_ROWS].")
@click.option("--max-age-days", type=click.FloatRange(0), help="Drop entries unused this long "
              "[default: RAGPIPE_CACHE_MAX_AGE_DAYS].")
def cache_prune(max_rows: int | None, max_age_days: float | None) -> None:
    """Apply the cache's retention now (every ingest run applies it too)."""
    from pipelines import store
    from pipelines.store.connection import open_database
    from pipelines.store.database import connect

    settings = load_settings()
    with connect(open_database()) as conn:
        removed, kept = store.prune_cache(conn, settings.cache_max_rows if max_rows is None else max_rows,
                                          settings.cache_max_age_days if max_age_days is None else max_age_days)
    click.echo(f"embedding cache: removed {removed}, kept {kept}")
