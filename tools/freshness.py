"""Freshness probes: seconds from a change of a watched source to `ragpipe search` seeing it.
Used by `make run` / `make smoke` (under the real scheduler) and by `make bench` (`ragpipe watch`)."""

import time
import uuid
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.25


def searchable(collection: str, word: str) -> set[str]:
    """Source ids of the documents keyword search finds `word` in (none while the collection is not built)."""
    from pipelines.search import UnknownCollection, search

    try:
        return {h.source_id for h in search(word, collection, k=5, mode="keyword")}
    except UnknownCollection:
        return set()


def seconds_until(check: Callable[[], bool], what: str, timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not seen within {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def file_probe(folder: Path, collection: str, timeout_s: float = 120) -> tuple[float, float]:
    """(seconds until a new file's word is found, seconds until it is gone after the file is deleted)."""
    word = f"probe{uuid.uuid4().hex[:12]}"
    path = folder / f"freshness-{word}.md"
    rel = path.relative_to(folder).as_posix()
    try:
        path.write_text(f"# Freshness probe\n\nThe word {word} is in this file only.\n")
        added = seconds_until(lambda: rel in searchable(collection, word), f"{rel} in {collection}", timeout_s)
    finally:
        path.unlink(missing_ok=True)
    removed = seconds_until(lambda: not searchable(collection, word), f"{rel} gone from {collection}", timeout_s)
    return added, removed


def row_probe(conn, table: str, collection: str, row_id: int | str, timeout_s: float = 120) -> tuple[float, float]:
    """(seconds until an inserted row's word is found, seconds until it is gone after the row is deleted)."""
    word = f"probe{uuid.uuid4().hex[:12]}"
    conn.execute(f"INSERT INTO {table} (id, body) VALUES (%s, %s)", (row_id, f"The word {word} is in this row."))
    added = seconds_until(lambda: str(row_id) in searchable(collection, word), f"row {row_id}", timeout_s)
    conn.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
    removed = seconds_until(lambda: not searchable(collection, word), f"row {row_id} gone", timeout_s)
    return added, removed


def object_probe(client, bucket: str, prefix: str, collection: str, timeout_s: float = 120) -> tuple[float, float]:
    """(seconds until a new object's word is found, seconds until it is gone after the object is deleted)."""
    word = f"probe{uuid.uuid4().hex[:12]}"
    rel = f"freshness-{word}.md"
    try:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=f"# Probe\n\nThe word {word}.\n".encode())
        added = seconds_until(lambda: rel in searchable(collection, word), f"{rel} in {collection}", timeout_s)
    finally:
        client.delete_object(Bucket=bucket, Key=f"{prefix}/{rel}")
    removed = seconds_until(lambda: not searchable(collection, word), f"{rel} gone from {collection}", timeout_s)
    return added, removed
