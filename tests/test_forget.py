"""Erasure (#45.1): `ragpipe forget` leaves no trace of a document in any table (a unique marker word
is searched for in every ragpipe table, every vector by its cache key), across versions and the
embedding cache; its tombstone keeps runs and watch events from bringing it back; --undo does."""

import threading
import time
from pathlib import Path

import psycopg
import pytest

from pipelines.config import parse_collection
from pipelines.forget import forget
from pipelines.ingest import run_ingest
from pipelines.search import search
from tests.conftest import ragpipe
from tests.test_watch import Watcher, collections_file

MARKER = "zorblaxquint"
"""A word only the forgotten document holds."""
OTHER = "quendrivox"
"""The same, for the filter test (each test's marker is its own: they share the database)."""


def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    (folder / "people").mkdir(parents=True)
    (folder / "people" / "jane.md").write_text(f"# Jane Doe\n\nJane Doe's {MARKER} account number is 4417. "
                                               "She asked us to forget her. " * 6)
    (folder / "people" / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf " + MARKER.encode())
    for i in range(6):
        (folder / f"note{i}.md").write_text(f"# Note {i}\n\nKey rotation happens every {i + 2} months. " * 8)
    return folder


def spec(name: str, folder: Path, **kw):
    return parse_collection({"name": name, "source": {"kind": "folder", "path": str(folder)}, **kw}, where=name,
                            base=folder)


def marker_rows(conn: psycopg.Connection, marker: str = MARKER) -> dict[str, int]:
    """Rows of any table in schema ragpipe (partitions included) whose text holds `marker`."""
    tables = [r[0] for r in conn.execute("SELECT 'ragpipe.' || quote_ident(relname) FROM pg_class "
                                         "WHERE relnamespace = 'ragpipe'::regnamespace AND relkind = 'r'")]
    found = {t: conn.execute(f"SELECT count(*) FROM {t} x WHERE x::text ILIKE %s", (f"%{marker}%",)).fetchone()[0]
             for t in tables}
    return {t: n for t, n in found.items() if n}


def vectors_by_key(conn: psycopg.Connection, hashes: list[str]) -> int:
    return conn.execute("SELECT (SELECT count(*) FROM ragpipe.chunks WHERE content_hash = ANY(%(h)s)) + "
                        "(SELECT count(*) FROM ragpipe.embedding_cache WHERE content_hash = ANY(%(h)s))",
                        {"h": hashes}).fetchone()[0]


def jane_hashes(conn: psycopg.Connection, name: str) -> list[str]:
    """The cache keys of people/jane.md's chunks now, in every version."""
    return [r[0] for r in conn.execute(
        "SELECT c.content_hash FROM ragpipe.chunks c JOIN ragpipe.documents d ON d.id = c.document_id "
        "JOIN ragpipe.collections k ON k.id = d.collection_id WHERE k.family = %s AND d.source_id = 'people/jane.md'",
        (name,))]


def test_forget_leaves_no_trace_and_runs_and_watch_events_do_not_bring_it_back(tmp_path, name, conn):
    folder = corpus(tmp_path)
    run_ingest(spec(name, folder, chunk_tokens=64, chunk_overlap=8))
    hashes = jane_hashes(conn, name)
    jane = folder / "people" / "jane.md"
    jane.write_text(f"# Jane Doe\n\nUpdated in March: {MARKER} moved to Leeds and closed the old account. "
                    "Her new address is on file with the records office.\n")  # the old vectors go to the cache
    run_ingest(spec(name, folder, chunk_tokens=64, chunk_overlap=8))
    assert conn.execute("SELECT count(*) FROM ragpipe.embedding_cache WHERE content_hash = ANY(%s)",
                        (hashes,)).fetchone()[0]
    run_ingest(spec(name, folder, chunk_tokens=96, chunk_overlap=8))  # version 2; version 1 kept for rollback
    assert dict(conn.execute("SELECT version, state FROM ragpipe.collections WHERE family = %s", (name,))) == \
        {1: "previous", 2: "active"}
    hashes += jane_hashes(conn, name)
    assert marker_rows(conn) and vectors_by_key(conn, hashes) and search(MARKER, name, mode="keyword")
    assert conn.execute("SELECT count(*) FROM ragpipe.ingest_failures WHERE source_id = 'people/broken.pdf'"
                        ).fetchone()[0]

    dry = ragpipe("forget", name, "people/jane.md", "people/broken.pdf", "--dry-run")
    assert "people/jane.md  (2 versions)" in dry.stdout and marker_rows(conn)
    erasure = forget(name, source_ids=["people/jane.md", "people/broken.pdf"], requested_by="dpo@example.com")
    assert (erasure.documents, erasure.versions) == (2, 2) and erasure.chunks > 0 and erasure.failure_records >= 1
    assert erasure.cache_entries > 0
    assert marker_rows(conn) == {}, "the forgotten text is still in these tables"
    assert vectors_by_key(conn, hashes) == 0
    audit = conn.execute("SELECT by_role, requested_by, source_ids, filter FROM ragpipe.erasures WHERE id = %s",
                         (erasure.id,)).fetchone()
    assert audit[1:] == ("dpo@example.com", 2, None)
    assert not search(MARKER, name, mode="keyword") and ragpipe("verify", name).returncode == 0

    # a copy of the same content under another name is a trace: verify finds it, --repair forgets it
    (folder / "people" / "jane-copy.md").write_text(jane.read_text())
    run_ingest(spec(name, folder, chunk_tokens=96, chunk_overlap=8))
    found = ragpipe("verify", name, check=False)
    assert found.returncode == 1 and "forgotten_traces" in found.stdout and "document people/jane-copy.md" in \
        found.stdout, found.stdout
    assert ragpipe("verify", name, "--repair").returncode == 0
    assert marker_rows(conn) == {} and "people/jane-copy.md" in ragpipe("forget", name, "--list").stdout

    # the source still holds it: a run, and a watch event (the file changed), skip it
    summary = run_ingest(spec(name, folder, chunk_tokens=96, chunk_overlap=8))
    assert summary["failed"] == 0
    config = collections_file(tmp_path, {"name": name, "source": {"kind": "folder", "path": str(folder)},
                                         "chunk_tokens": 96, "chunk_overlap": 8, "watch": {"debounce_s": 0.2}})
    watcher = Watcher(config, name, "--max-runs", "2")
    try:
        watcher.run_line(name)
        jane.write_text(jane.read_text() + f"\n{MARKER} again.\n")
        watcher.run_line(name)
        assert watcher.proc.wait(timeout=60) == 0
    finally:
        watcher.stop()
    assert marker_rows(conn) == {} and not search(MARKER, name, mode="keyword")
    listed = ragpipe("forget", name, "--list")
    assert "people/jane.md" in listed.stdout and "people/broken.pdf" in listed.stdout

    # --undo: the next run indexes it again
    assert "removed 1 tombstones" in ragpipe("forget", name, "--undo", "people/jane.md").stdout
    run_ingest(spec(name, folder, chunk_tokens=96, chunk_overlap=8))
    assert {h.source_id for h in search(MARKER, name, mode="keyword")} == {"people/jane.md"}


def test_forget_by_filter_waits_for_a_run_of_the_collection_and_refuses_an_empty_filter(tmp_path, name, conn):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"id": "r{i}", "text": "row {i} about {OTHER if i % 2 else "nothing"}", '
                            f'"owner": "{"jane" if i % 2 else "joe"}"}}\n' for i in range(10)))
    table = parse_collection({"name": name, "source": {"kind": "tabular", "path": str(rows)}}, where=name,
                             base=tmp_path)
    run_ingest(table)
    with pytest.raises(ValueError, match="non-empty JSON object"):
        forget(name, filter={})
    from pipelines.store.connection import locked_connection

    held, done = threading.Event(), {}
    release = threading.Event()

    def hold() -> None:  # a run of the collection holds its lock
        with locked_connection(name):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)

    def erase() -> None:
        done["erasure"] = forget(name, filter={"owner": "jane"})
        done["at"] = time.monotonic()

    eraser = threading.Thread(target=erase)
    eraser.start()
    deadline = time.monotonic() + 30
    while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND wait_event = 'advisory'").fetchone()[0]:
        assert time.monotonic() < deadline and eraser.is_alive(), "forget did not wait for the collection's lock"
        time.sleep(0.05)
    assert "erasure" not in done
    released_at = time.monotonic()
    release.set()
    holder.join(30)
    eraser.join(60)
    assert done["at"] >= released_at and done["erasure"].documents == 5
    assert marker_rows(conn, OTHER) == {} and conn.execute(
        "SELECT filter FROM ragpipe.erasures WHERE id = %s", (done["erasure"].id,)).fetchone()[0] == {"owner": "jane"}
    failed = ragpipe("forget", name, "--filter", "{}", check=False)
    assert failed.returncode == 1 and "non-empty JSON object" in failed.stderr
