"""Apply sql/migrations/*.sql in order, once each, and sql/api/*.sql whenever their text changes."""

import hashlib
import logging
from pathlib import Path

import psycopg

from pipelines.settings import SQL_DIR
from pipelines.store.database import DatabaseError, connect, mask_url

log = logging.getLogger(__name__)

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS ragpipe;
CREATE TABLE IF NOT EXISTS ragpipe.schema_migrations (
    name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
"""
MIGRATION_LOCK = 7_266_101  # advisory lock key: one migrator at a time
API_LEVEL_ROW = "api/level"
"""The schema_migrations row whose checksum holds the level of the SQL API last applied."""


def api_level() -> tuple[int, str]:
    """(level, sha256) of this release's SQL API as sql/api-level records it: the level rises with every
    change of sql/api/*.sql (a test checks the sha256), so an older release can tell it is older."""
    lines = (SQL_DIR / "api-level").read_text().splitlines()
    fields = dict(line.strip().split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return int(fields["level"]), fields["sha256"]


def api_checksum() -> str:
    """One sha256 over every sql/api/*.sql file, in order."""
    digest = hashlib.sha256()
    for path in sorted((SQL_DIR / "api").glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def migrate(url: str, last: str | None = None) -> list[str]:
    """Bring the database schema up to date; returns the names of the files applied now.

    With `last` (a migration file name), stop after that migration and skip the SQL API: the schema
    as an earlier release left it, for testing upgrades."""
    applied_now = []
    with connect(url, autocommit=True, vector_types=False) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            _create_vector_extension(conn, url)
            # Load pgvector's library so that its settings (hnsw.*) are known: a function's SET clause
            # for a not-yet-loaded setting needs a superuser, which a managed database's owner is not.
            conn.execute("SELECT '[1]'::vector")
            _check_roles(conn, url)
            if not conn.execute("SELECT to_regclass('ragpipe.schema_migrations')").fetchone()[0]:
                conn.execute(BOOTSTRAP)
            done = dict(conn.execute("SELECT name, checksum FROM ragpipe.schema_migrations").fetchall())
            migrations = sorted((SQL_DIR / "migrations").glob("*.sql"))
            _refuse_newer_schema(done, migrations)
            level = api_level()[0]
            if last is None:
                _refuse_newer_api(done, level)
            if last is not None:
                migrations = [p for p in migrations if p.name <= last]
            api = sorted((SQL_DIR / "api").glob("*.sql")) if last is None else []
            # API files are CREATE OR REPLACE scripts that build on each other (grants last):
            # when any of them changed, all are re-applied in order.
            api_changed = any(done.get(_name(p)) != _checksum(p) for p in api)
            for path in migrations + api:
                name, checksum = _name(path), _checksum(path)
                if path in migrations and name in done:
                    if done[name] != checksum:
                        log.warning("migration %s changed after it was applied; ignoring the change", name)
                    continue
                if path in api and not (api_changed or applied_now):  # a migration may drop what they made
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "INSERT INTO ragpipe.schema_migrations (name, checksum) VALUES (%s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
                        (name, checksum))
                applied_now.append(name)
            if last is None and done.get(API_LEVEL_ROW) != str(level):  # a role that only reads writes nothing
                conn.execute("INSERT INTO ragpipe.schema_migrations (name, checksum) VALUES (%s, %s) ON CONFLICT "
                             "(name) DO UPDATE SET checksum = excluded.checksum", (API_LEVEL_ROW, str(level)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


def _refuse_newer_schema(done: dict[str, str], migrations: list[Path]) -> None:
    """A database that a newer ragpipe migrated has migrations this one does not know: applying this
    version's SQL API over its schema could break it, so nothing is changed."""
    known = {_name(p) for p in migrations}
    unknown = sorted(n for n in done if n.startswith("migrations/") and n not in known)
    if unknown:
        raise DatabaseError(f"the database schema is newer than this ragpipe (it has {', '.join(unknown)}, which "
                            "this version does not know): upgrade the ragpipe package; nothing was changed")


def _refuse_newer_api(done: dict[str, str], level: int) -> None:
    """A database whose SQL API a newer ragpipe applied keeps it: an older worker in a rolling deploy must
    not put its own functions back under every other process."""
    stored = done.get(API_LEVEL_ROW)
    if stored is not None and stored.isdigit() and int(stored) > level:
        raise DatabaseError(f"the database's SQL API (level {stored}) is newer than this ragpipe's (level {level}): "
                            "upgrade the ragpipe package on this machine; nothing was changed")


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SHARED_ROLES = ("ragpipe_reader", "ragpipe_loader", "ragpipe_tenant_reader")
"""NOLOGIN roles the schema grants to: created by migrate, or beforehand by an admin."""


def _check_roles(conn: psycopg.Connection, url: str) -> None:
    """Before changing anything: an owner without CREATEROLE (a managed PostgreSQL) needs the shared
    roles to exist already; say exactly what to run instead of failing halfway."""
    can_create = conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
                              ).fetchone()[0]
    missing = [r for r in SHARED_ROLES
               if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone()]
    if missing and not can_create:
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise DatabaseError(
            f"role {user} may not create roles on {mask_url(url)}, and the schema needs "
            f"{', '.join(missing)}: ask an administrator to run `"
            + " ".join(f"CREATE ROLE {r} NOLOGIN;" for r in missing)
            + "`, then run `ragpipe db migrate` again (nothing was changed)")


def _create_vector_extension(conn: psycopg.Connection, url: str) -> None:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
        raise DatabaseError(
            f"the pgvector extension is not available on {mask_url(url)}: install pgvector on that server "
            "(https://github.com/pgvector/pgvector#installation) or use the pgvector/pgvector Docker image"
        )
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseError(
            f"the role connecting to {mask_url(url)} may not create the vector extension: "
            "ask an administrator to run `CREATE EXTENSION vector;` in this database"
        ) from None
