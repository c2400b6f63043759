"""`ragpipe forget`: erase documents from every version of a collection, keep them from coming back.

    from pipelines.forget import forget
    erasure = forget("notes", source_ids=["people/jane-doe.md"])       # or filter={"author": "Jane Doe"}

ragpipe.forget (sql/api/040_forget.sql) removes their documents, chunks, keyword postings, cached
vectors and failure records in one transaction under the collection's lock, and keeps a tombstone
(source id and hashes, never text) that every later run skips; then the tables are vacuumed, so no
dead row keeps the text. What is kept, and what is not reachable from here (WAL, backups):
docs/erasure.md.
"""

import getpass
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pipelines.store.connection import locked_connection
from pipelines.store.sqlfiles import query


@dataclass(frozen=True)
class Erasure:
    """The audit row of one erasure (ragpipe.erasures): counts, never content."""

    id: int
    family: str
    action: str
    by_role: str
    requested_by: str | None
    filter: dict[str, Any] | None
    source_ids: int
    documents: int
    chunks: int
    versions: int
    cache_entries: int
    failure_records: int
    at: Any

    def summary(self) -> str:
        return (f"forgot {self.documents} documents ({self.chunks} chunks) in {self.versions} version(s) of "
                f"{self.family!r}, {self.cache_entries} cached vectors and {self.failure_records} failure records "
                f"(erasure #{self.id}; later runs skip them: `ragpipe forget {self.family} --list`)")


def forget(collection: str, source_ids: list[str] | None = None, filter: dict[str, Any] | None = None,
           requested_by: str | None = None, url: str | None = None, vacuum: bool = True) -> Erasure:
    """Erase the documents with these source ids, or whose metadata contains `filter`, from every
    version of `collection`, and tombstone them. Waits for a run of the collection to finish."""
    if (source_ids is None) == (filter is None):
        raise ValueError("give source ids or a metadata filter to forget (one of the two)")
    if filter is not None and (not isinstance(filter, dict) or not filter):
        raise ValueError('the filter must be a non-empty JSON object, e.g. {"author": "Jane Doe"}')
    family = collection.split("@v", 1)[0]
    with locked_connection(family, url) as conn:
        with conn.transaction():
            erasure = conn.cursor(row_factory=class_row(Erasure)).execute(
                query("forget", "forget"), dict(collection=family, source_ids=source_ids,
                                                filter=Jsonb(filter) if filter is not None else None,
                                                requested_by=requested_by or _user())).fetchone()
        if vacuum:
            vacuum_after(conn, family)
    assert erasure is not None
    return erasure


def vacuum_after(conn: psycopg.Connection, family: str) -> None:
    """VACUUM what held the forgotten rows, so that no dead tuple keeps their text on disk (autocommit)."""
    tables = [r[0] for r in conn.execute(query("forget", "tables_to_vacuum"), (family,)).fetchall()]
    for table in tables:
        conn.execute(f"VACUUM {table}")


def matching(collection: str, source_ids: list[str] | None = None, filter: dict[str, Any] | None = None,
             url: str | None = None) -> list[tuple[str, int]]:
    """(source id, versions holding it) of what forget would erase: a dry run, nothing changed."""
    from pipelines.store.connection import open_database
    from pipelines.store.database import connect

    with connect(open_database(url)) as conn:
        return conn.execute(query("forget", "matching"), dict(
            family=collection.split("@v", 1)[0], source_ids=source_ids,
            filter=Jsonb(filter) if filter is not None else None)).fetchall()


def tombstones(collection: str, url: str | None = None) -> list[dict[str, Any]]:
    """The collection's tombstones: source id, when, and by which erasure (no content)."""
    from pipelines.store.connection import open_database
    from pipelines.store.database import connect

    with connect(open_database(url)) as conn:
        return conn.cursor(row_factory=psycopg.rows.dict_row).execute(
            query("forget", "tombstones"), (collection.split("@v", 1)[0],)).fetchall()


def undo(collection: str, source_ids: list[str], requested_by: str | None = None, url: str | None = None) -> int:
    """Remove these tombstones: the next run indexes the documents again if the source holds them."""
    family = collection.split("@v", 1)[0]
    with locked_connection(family, url) as conn, conn.transaction():
        return conn.execute(query("forget", "unforget"), (family, source_ids, requested_by or _user())).fetchone()[0]


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
