"""Rows of a SQL query against a PostgreSQL database: one document per row. Incremental by an
`updated_at` column when given, otherwise by a hash of the row computed in the database.

The query comes from collections.yml (trusted configuration) and is wrapped as a subquery;
values are always bound. The URL may reference environment variables (`${PGPASSWORD}`) so that no
secret has to live in the file, or name an Airflow connection (`conn_id`)."""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pipelines.sources.base import DocumentRef, Listing, RawDocument, SourceError, row_document
from pipelines.store.database import first_line, mask_url


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
    kind: str = "sql"

    def __post_init__(self) -> None:
        if not self.url and not self.conn_id:
            raise SourceError("sql source needs `url` (may use ${ENV_VARS}) or an Airflow `conn_id`")

    def _connect(self) -> psycopg.Connection:
        if self.conn_id:
            from pipelines.airflow.connections import connection_url

            url = connection_url(self.conn_id)
        else:
            url = os.path.expandvars(self.url or "")
        try:
            return psycopg.connect(url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise SourceError(f"cannot connect to {mask_url(url)}: {mask_url(str(exc).strip())}") from None

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
            return Listing([], complete=False, problems=[f"query failed: {first_line(exc)}"])
        refs = {key: DocumentRef(key, f"sql:{self.id_column}={key}", fp or "") for key, fp in rows if key is not None}
        return Listing(list(refs.values()), complete=True)

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        refs = list(refs)
        statement = sql.SQL("SELECT q.{}::text, row_to_json(q) FROM {} WHERE q.{}::text = ANY(%s)").format(
            sql.Identifier(self.id_column), self._subquery(), sql.Identifier(self.id_column))
        try:
            with self._connect() as conn:
                rows = dict(conn.execute(statement, ([r.source_id for r in refs],)).fetchall())
        except (psycopg.Error, SourceError) as exc:
            error = exc if isinstance(exc, SourceError) else SourceError(f"query failed: {exc}")
            for ref in refs:
                yield ref, error
            return
        for ref in refs:
            row = rows.get(ref.source_id)
            if row is None:
                yield ref, SourceError("row disappeared after listing; it will be removed on the next run")
                continue
            yield ref, row_document(ref, row, self.id_column, self.text_column, self.title_column,
                                    self.title_in_text)
