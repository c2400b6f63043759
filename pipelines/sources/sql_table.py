"""Rows of a SQL query against a PostgreSQL database: one document per row. Incremental by an
`updated_at` column when given, otherwise by a hash of the row computed in the database.

The query comes from collections.yml (trusted configuration) and is wrapped as a subquery;
values are always bound. The URL may reference environment variables (`${PGPASSWORD}`) so that no
secret has to live in the file, or name an Airflow connection (`conn_id`).

Each query runs under a statement timeout (`statement_timeout_s`), and the server checks that the
client is still there while it runs (client_connection_check_interval, PostgreSQL 14+): a run that
stops, or whose process is killed, never leaves its query running."""

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

import psycopg
from psycopg import sql
from pydantic import Field

from pipelines.sources.base import DocumentRef, Listing, RawDocument, SourceError, row_document
from pipelines.store.database import first_line, mask_url

log = logging.getLogger(__name__)
BYTEA_OID = 17


@dataclass
class SqlSource:
    query: str
    url: str | None = None
    conn_id: str | None = None
    id_column: str = "id"
    text_column: str = "text"
    title_column: str | None = None
    title_in_text: bool = True
    """Put the title before the text, as its first paragraph: embedded and searched with it."""
    updated_at_column: str | None = None
    statement_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    """The longest a listing or read query may run before the server cancels it."""
    bytea_columns: bool = False
    """Binary (bytea) columns are left out of the metadata unless this is set (then stored as hex text)."""
    kind: str = "sql"

    def __post_init__(self) -> None:
        if not self.url and not self.conn_id:
            raise SourceError("sql source needs `url` (may use ${ENV_VARS}) or an Airflow `conn_id`")

    def conninfo(self) -> str:
        """The source database's URL: the Airflow connection's, or `url` with ${ENV_VARS} expanded."""
        if self.conn_id:
            from pipelines.airflow.connections import connection_url

            return connection_url(self.conn_id)
        return os.path.expandvars(self.url or "")

    def _connect(self) -> psycopg.Connection:
        url = self.conninfo()
        try:
            conn = psycopg.connect(url, connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as exc:
            raise SourceError(f"cannot connect to {mask_url(url)}: {mask_url(str(exc).strip())}") from None
        timeout = f"{int(self.statement_timeout_s * 1000)}ms"
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
        try:  # PostgreSQL 14+: the server ends the query if this process goes away
            conn.execute("SET client_connection_check_interval = '2s'")
        except psycopg.Error:
            pass
        return conn

    def _binary_columns(self, conn: psycopg.Connection) -> list[str]:
        """The query's bytea columns (its result description, from a run with LIMIT 0)."""
        cursor = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(self._subquery()))
        return [c.name for c in cursor.description or [] if c.type_code == BYTEA_OID]

    def _failed(self, exc: BaseException) -> SourceError:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return SourceError(f"the source query ran longer than statement_timeout_s={self.statement_timeout_s:g} "
                               "and was cancelled on the server; raise statement_timeout_s or make the query faster")
        return exc if isinstance(exc, SourceError) else SourceError(f"query failed: {first_line(exc)}")

    def _subquery(self) -> sql.Composable:
        return sql.SQL("({}) AS q").format(sql.SQL(self.query.strip().rstrip(";")))  # type: ignore[arg-type]

    def list(self) -> Listing:
        fingerprint = (sql.SQL("q.{}::text").format(sql.Identifier(self.updated_at_column))
                       if self.updated_at_column else sql.SQL("md5(row_to_json(q)::text)"))
        statement = sql.SQL("SELECT q.{}::text, {} FROM {}").format(
            sql.Identifier(self.id_column), fingerprint, self._subquery())
        try:
            with self._connect() as conn:
                rows = conn.execute(statement).fetchall()
        except (psycopg.Error, SourceError) as exc:
            return Listing([], complete=False, problems=[str(self._failed(exc))])
        refs = {key: DocumentRef(key, f"sql:{self.id_column}={key}", fp or "") for key, fp in rows if key is not None}
        return Listing(list(refs.values()), complete=True)

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        refs = list(refs)
        try:
            with self._connect() as conn:
                binary = [] if self.bytea_columns else self._binary_columns(conn)
                row = sql.SQL("to_jsonb(q) - %(binary)s::text[]") if binary else sql.SQL("row_to_json(q)")
                statement = sql.SQL("SELECT q.{}::text, {} FROM {} WHERE q.{}::text = ANY(%(ids)s)").format(
                    sql.Identifier(self.id_column), row, self._subquery(), sql.Identifier(self.id_column))
                rows = dict(conn.execute(statement, {"ids": [r.source_id for r in refs], "binary": binary}).fetchall())
        except (psycopg.Error, SourceError) as exc:
            error = self._failed(exc)
            for ref in refs:
                yield ref, error
            return
        if binary:
            log.warning("sql source: binary (bytea) column(s) %s left out of the documents' metadata "
                        "(set bytea_columns: true to keep them as hex text)", ", ".join(binary))
        for ref in refs:
            row = rows.get(ref.source_id)
            if row is None:
                yield ref, SourceError("row disappeared after listing; it will be removed on the next run")
                continue
            yield ref, row_document(ref, row, self.id_column, self.text_column, self.title_column,
                                    self.title_in_text)
