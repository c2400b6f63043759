"""The service's connections: a bounded pool, each request in a transaction as a reader role."""

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from pipelines.service.admission import time_left
from pipelines.store.database import DatabaseError, first_line, mask_url

log = logging.getLogger(__name__)

TENANT_ROLE = "ragpipe_tenant_reader"
FIRST_WAIT_S = 1.0
"""How long a request waits for a pooled connection before it asks whether the server is up at all."""


class Busy(RuntimeError):
    """No database connection became free in time."""


class ServiceDatabase:
    """A connection pool of at most `size` connections. Every request runs in one transaction that
    first switches to the caller's role (SET LOCAL ROLE), so the schema owner's privileges are never
    used to search, and a role's row-level security applies."""

    def __init__(self, url: str, role: str, size: int, wait_s: float, statement_timeout_ms: int) -> None:
        self.url, self.role, self.wait_s = url, role, wait_s
        self.statement_timeout_ms = statement_timeout_ms
        self.pool = ConnectionPool(url, min_size=1, max_size=size, open=False, timeout=wait_s,
                                   configure=register_vector, kwargs={"connect_timeout": 10},
                                   name="ragpipe-service")
        self._tenant: dict[str, bool] = {}
        self._down: str | None = None
        """Why the server did not answer the last time it was asked; None while it answers."""

    def open(self) -> None:
        try:
            self.pool.open(wait=True, timeout=30)
        except PoolTimeout:
            raise DatabaseError(f"cannot connect to {mask_url(self.url)} within 30 s") from None
        self.check_role(self.role)

    def close(self) -> None:
        self.pool.close(timeout=5)

    def check_role(self, role: str) -> None:
        """The role exists, the service may switch to it, and it is not the schema owner or a superuser."""
        with self.pool.connection() as conn:
            if conn.execute("SELECT to_regnamespace('ragpipe')").fetchone()[0] is None:
                raise DatabaseError(f"{mask_url(self.url)} has no ragpipe schema: run `ragpipe db migrate` "
                                    "as the schema owner first")
            row = conn.execute(
                "SELECT r.rolsuper OR pg_has_role(r.oid, n.nspowner, 'MEMBER'), current_user "
                "FROM pg_roles r, pg_namespace n WHERE r.rolname = %s AND n.nspname = 'ragpipe'", (role,)).fetchone()
            if row is None:
                raise DatabaseError(f"role {role} does not exist: run `ragpipe db migrate` (it creates "
                                    "ragpipe_reader) or `ragpipe db grant-reader ROLE`, or set RAGPIPE_SERVE_ROLE")
            if row[0]:
                raise DatabaseError(f"role {role} owns the ragpipe schema or is a superuser: the service searches "
                                    "as a reader; set RAGPIPE_SERVE_ROLE=ragpipe_reader (the default) or a role "
                                    "granted with `ragpipe db grant-reader ROLE`")
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            except psycopg.errors.InsufficientPrivilege:
                raise DatabaseError(f"the service logs in as {row[1]}, which may not act as {role}: run "
                                    f"`GRANT {role} TO {row[1]};` as an administrator") from None

    def is_tenant(self, role: str) -> bool:
        """A tenant role reads its own rows through row-level security (ragpipe.tenant_search only)."""
        if role not in self._tenant:
            with self.pool.connection() as conn:
                self._tenant[role] = bool(conn.execute(
                    "SELECT pg_has_role(%s, %s, 'MEMBER')", (role, TENANT_ROLE)).fetchone()[0])
        return self._tenant[role]

    @contextmanager
    def session(self, role: str | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection in a transaction acting as `role` (the service role by default). While
        the server is down, each request fails at once, saying so, instead of waiting for the pool."""
        if self._down is not None:
            self._check_up()
        try:
            with self._connection() as conn, conn.transaction():
                self._act_as(conn, role or self.role)
                yield conn
        except psycopg.errors.QueryCanceled:
            raise
        except psycopg.OperationalError as exc:
            self._down = first_line(exc)
            raise self._unavailable() from None

    @contextmanager
    def spare_session(self, role: str, wait_s: float) -> Iterator[psycopg.Connection | None]:
        """A second connection for a request that holds one (as `role`, in a transaction), or None when
        none is free within wait_s: a request never waits for the pool while holding a connection."""
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self.pool.connection(timeout=wait_s))
            except PoolTimeout:
                conn = None
            if conn is None:
                yield None
                return
            with conn.transaction():
                self._act_as(conn, role)
                yield conn

    @contextmanager
    def probe_session(self) -> Iterator[psycopg.Connection]:
        """For /healthz and /metrics: a pooled connection if one is free at once, else one of their own
        (connect and statements bounded to a few seconds), so they answer under any load."""
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self.pool.connection(timeout=0.1))
            except PoolTimeout:
                conn = stack.enter_context(psycopg.connect(self.url, connect_timeout=3, autocommit=True,
                                                           options="-c statement_timeout=5000"))
                register_vector(conn)
            with conn.transaction():
                self._act_as(conn, self.role)
                yield conn

    def _act_as(self, conn: psycopg.Connection, role: str) -> None:
        """Switch the transaction to `role`, with the service's statement timeout (or less: what is left
        of the request's deadline)."""
        timeout_ms = max(1, int(min(self.statement_timeout_ms, time_left(self.statement_timeout_ms / 1000) * 1000)))
        conn.execute(sql.SQL("SET LOCAL ROLE {}; SET LOCAL statement_timeout = {}").format(
            sql.Identifier(role), sql.Literal(timeout_ms)))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection: after FIRST_WAIT_S without one, the server is asked directly whether it
        is up (then a DatabaseError at once); if it is, the wait goes on (then Busy)."""
        started = time.monotonic()
        wait = time_left(self.wait_s)
        busy = Busy(f"no database connection became free within {wait:g} s (RAGPIPE_SERVE_POOL_SIZE, "
                    "RAGPIPE_SERVE_POOL_WAIT, RAGPIPE_SERVE_DEADLINE)")
        if wait <= 0:
            raise busy
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self.pool.connection(timeout=min(FIRST_WAIT_S, wait)))
            except PoolTimeout:
                self._check_up()
                try:
                    left = max(0.0, wait - (time.monotonic() - started))
                    if left <= 0:
                        raise PoolTimeout()
                    conn = stack.enter_context(self.pool.connection(timeout=left))
                except PoolTimeout:
                    raise busy from None
            yield conn

    def _check_up(self) -> None:
        """Connect directly (3 s at most): raise DatabaseError saying why when the server does not answer."""
        try:
            psycopg.connect(self.url, connect_timeout=3).close()
        except psycopg.Error as exc:
            self._down = first_line(exc)
            raise self._unavailable() from None
        if self._down is not None:
            log.info("search service: the database answers again")
        self._down = None

    def _unavailable(self) -> DatabaseError:
        return DatabaseError(f"the database is unavailable ({self._down}); each request fails at once until "
                             "it answers again")
