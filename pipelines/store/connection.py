"""The connections every writer and reader opens: the migrated database, and a collection's lock."""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from pipelines.settings import load_settings
from pipelines.store import collection_lock
from pipelines.store.database import connect, database_url
from pipelines.store.migrations import migrate

_migrated: set[str] = set()


def open_database(url: str | None = None) -> str:
    """The database URL (default: RAGPIPE_DATABASE_URL or the embedded server), migrated once per process."""
    url = url or database_url()
    if url not in _migrated:
        migrate(url)
        _migrated.add(url)
    return url


@contextmanager
def locked_connection(family: str, url: str | None = None, shared: bool = False) -> Iterator[psycopg.Connection]:
    """A connection to the (migrated) database holding collection `family`'s lock: exclusive for a
    run, its plan and its finalize; shared for parallel batches. Every writer starts here."""
    with connect(open_database(url), autocommit=True) as conn, collection_lock(
            conn, family, load_settings().lock_timeout_s, shared=shared):
        yield conn
