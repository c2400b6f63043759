"""Freshness without Airflow: `ragpipe watch` as a user runs it (a subprocess, Ctrl-C to stop), on
real sources: a folder (inotify), a table in PostgreSQL (NOTIFY from the trigger `--setup` installs)
and an S3 bucket on moto's server (its notifications through SQS). Each change is searched for."""

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines.search import search
from pipelines.watch.changes import channel, identifier
from tests.conftest import RAGPIPE, ragpipe

LINE_TIMEOUT_S = 120


class Watcher:
    """A `ragpipe watch` process; its output lines as they come."""

    def __init__(self, collections: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen([*RAGPIPE, "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True,
                                     env=dict(os.environ, RAGPIPE_COLLECTIONS=str(collections), **(env or {})))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, wanted: Callable[[str], bool], what: str, timeout_s: float = LINE_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"ragpipe watch exited ({self.proc.returncode}): {self.seen}"
                continue
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"no {what} within {timeout_s} s; output: {self.seen}")

    def run_line(self, name: str) -> str:
        return self.wait_for(lambda line: f" {name}: " in line and "→ run " in line, f"run line of {name}")

    def stop(self) -> None:
        """Ctrl-C, as a user stops it: it ends at once when idle, leaving nothing running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            assert self.proc.wait(timeout=60) == 0, self.seen
            with pytest.raises(ProcessLookupError):  # nothing it started (parser workers) is left running
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.killpg(self.proc.pid, 0)
                    time.sleep(0.2)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def collections_file(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "collections.yml"
    path.write_text(yaml.safe_dump({"collections": list(entries)}))
    return path


def found(name: str, q: str) -> set[str]:
    return {h.source_id for h in search(q, name, k=20, mode="keyword")}


def runs_of(conn, name: str) -> list[tuple]:
    return conn.execute("SELECT r.started_at, r.finished_at, r.status FROM ragpipe.ingest_runs r JOIN "
                        "ragpipe.collections k ON k.id = r.collection_id WHERE k.name = %s AND r.trigger = 'watch' "
                        "ORDER BY r.id", (name,)).fetchall()


def test_watch_picks_up_a_write_a_rename_and_a_delete_and_ctrl_c_stops_it(tmp_path, name):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea\n\nGreen tea contains catechins.")
    (docs / "skip.log").write_text("zanzibarite in an excluded file")
    config = collections_file(tmp_path, {"name": name, "source": {"kind": "folder", "path": str(docs),
                                         "exclude": ["*.log"]}, "watch": {"debounce_s": 0.3}})
    watcher = Watcher(config, name)
    try:
        assert "catching up" in watcher.run_line(name)
        assert found(name, "catechins") == {"tea.md"}

        (docs / "sub").mkdir()
        (docs / "sub" / "new.md").write_text("# Stone\n\nQuartzite is a hard metamorphic rock.")
        watcher.run_line(name)
        assert found(name, "quartzite") == {"sub/new.md"}, "a new file in a new sub-folder"

        (docs / "sub" / "new.md").rename(docs / "moved.md")
        line = watcher.run_line(name)
        assert found(name, "quartzite") == {"moved.md"}, line

        (docs / "moved.md").unlink()
        watcher.run_line(name)
        assert found(name, "quartzite") == set()

        (docs / "deep" / "a" / "b").mkdir(parents=True)  # files made in new folders before their watch exists
        (docs / "deep" / "a" / "b" / "c.md").write_text("# Deep\n\nObsidian is volcanic glass.")
        watcher.wait_for(lambda line: "→ run " in line and found(name, "obsidian") == {"deep/a/b/c.md"},
                         "the file in the new folders indexed")

        (docs / "skip.log").write_text("zanzibarite again, still excluded")
        with pytest.raises(AssertionError, match="no run line"):  # excluded files start no run
            watcher.wait_for(lambda line: "→ run " in line, "run line", timeout_s=3)
    finally:
        watcher.stop()


def test_a_burst_is_a_few_runs_and_two_watchers_never_interleave(tmp_path, name, conn):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "seed.md").write_text("# Seed\n\nThe first document.")
    config = collections_file(tmp_path, {"name": name, "source": {"kind": "folder", "path": str(docs)},
                                         "watch": {"debounce_s": 1.0}})
    first, second = Watcher(config, name), Watcher(config, name)
    try:
        first.run_line(name)
        second.run_line(name)
        for i in range(200):
            (docs / f"note-{i:03d}.md").write_text(f"# Note {i}\n\nBurstword{i:03d} is note number {i}.")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            count = conn.execute("SELECT count(*) FROM ragpipe.documents d JOIN ragpipe.collections k "
                                 "ON k.id = d.collection_id WHERE k.name = %s", (name,)).fetchone()[0]
            if count == 201:
                break
            time.sleep(0.5)
        assert count == 201, "every file of the burst is indexed, once"
        assert all(found(name, f"burstword{i:03d}") == {f"note-{i:03d}.md"} for i in range(0, 200, 17))
        runs = runs_of(conn, name)
        assert len(runs) <= 2 + 4, f"a burst of 200 writes is a few runs, not 200: {len(runs)}"
        spans = sorted((start, end) for start, end, _ in runs)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), \
            "two watchers of one collection never run at once (the collection lock)"
        assert {status for *_, status in runs} == {"succeeded"}
    finally:
        first.stop()
        second.stop()


def test_a_watched_table_notifies_through_the_trigger_setup_installs(tmp_path, name, app_table, db_url):
    config = collections_file(tmp_path, {"name": name, "source": {
        "kind": "sql", "url": db_url, "query": "SELECT id, headline, body FROM app.articles",
        "title_column": "headline", "text_column": "body"}, "watch": {"table": "app.articles", "debounce_s": 0.3}})
    setup = ragpipe("watch", name, "--setup", check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert setup.returncode == 0 and f"notifies channel {channel(name)}" in setup.stdout, setup.stderr
    watcher = Watcher(config, name)
    try:
        watcher.run_line(name)
        assert found(name, "catechins") == {"1"}
        app_table.execute("UPDATE app.articles SET body = 'Rooibos has no caffeine at all.' WHERE id = 1")
        assert "update on app.articles" in watcher.run_line(name)
        assert found(name, "rooibos") == {"1"} and found(name, "catechins") == set()
        app_table.execute("DELETE FROM app.articles WHERE id = 2")
        watcher.run_line(name)
        assert found(name, "protein") == set()
        killed = app_table.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = 'ragpipe watch'").fetchall()
        assert killed == [(True,)], "the listener's connection, as a database restart would end it"
        watcher.wait_for(lambda line: "reconnected" in line and "→ run " in line, "run after reconnecting")
        app_table.execute("INSERT INTO app.articles (id, headline, body) VALUES (9, 'Kelp', 'Kelp is rich in iodine.')")
        watcher.run_line(name)
        assert found(name, "iodine") == {"9"}, "a change after the connection was lost is still picked up"
    finally:
        watcher.stop()
    ragpipe("watch", name, "--setup", "--remove", env={"RAGPIPE_COLLECTIONS": str(config)})
    assert app_table.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s",
                             (identifier("ragpipe_watch_", name),)).fetchone() == (0,)


def test_a_watched_bucket_notifies_through_sqs(tmp_path, name, s3):
    endpoint, client = s3
    client.put_object(Bucket="docs", Key=f"{name}/tea.md", Body=b"# Tea\n\nGreen tea contains catechins.")
    config = collections_file(tmp_path, {"name": name, "source": {
        "kind": "s3", "path": f"s3://docs/{name}", "endpoint_url": endpoint}, "watch": {"debounce_s": 0.3}})
    setup = ragpipe("watch", name, "--setup", check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert setup.returncode == 0 and "notifies" in setup.stdout, setup.stderr
    watcher = Watcher(config, name)
    try:
        watcher.run_line(name)
        assert found(name, "catechins") == {"tea.md"}
        client.put_object(Bucket="docs", Key=f"{name}/kelp.md", Body=b"# Kelp\n\nKelp is rich in iodine.")
        assert "kelp.md" in watcher.run_line(name)
        assert found(name, "iodine") == {"kelp.md"}
        client.delete_object(Bucket="docs", Key=f"{name}/tea.md")
        watcher.run_line(name)
        assert found(name, "catechins") == set()
    finally:
        watcher.stop()


def test_watch_refuses_a_collection_without_watch_and_a_sql_source_without_a_table(tmp_path, name, db_url):
    config = collections_file(tmp_path, {"name": name, "source": {"kind": "folder", "path": str(tmp_path)}})
    got = ragpipe("watch", name, check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert got.returncode == 1 and "no `watch:` in collections.yml" in got.stderr, got.stderr
    config = collections_file(tmp_path, {"name": name, "watch": True, "source": {
        "kind": "sql", "url": db_url, "query": "SELECT 1 AS id, 'x' AS text"}})
    got = ragpipe("watch", name, check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert got.returncode == 1 and "needs `table: schema.table`" in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1


def test_a_watched_table_is_followed_across_a_restart_of_its_database(tmp_path, name):
    """The source database (its own embedded server here) is stopped and started again while
    `ragpipe watch` listens: the watcher connects again, and a change made after the restart is
    searchable."""
    import psycopg

    from pipelines.store.database import embedded_server, stop_embedded_server

    pgdata = tmp_path / "src"
    url = embedded_server(pgdata).get_uri()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA notes; CREATE TABLE notes.items (id int PRIMARY KEY, body text NOT NULL); "
                         "INSERT INTO notes.items VALUES (1, 'Green tea contains catechins.')")
        config = collections_file(tmp_path, {"name": name, "watch": {"table": "notes.items", "debounce_s": 0.3},
                                             "source": {"kind": "sql", "url": url, "text_column": "body",
                                                        "query": "SELECT id, body FROM notes.items"}})
        ragpipe("watch", name, "--setup", env={"RAGPIPE_COLLECTIONS": str(config)})
        watcher = Watcher(config, name)
        try:
            watcher.run_line(name)
            assert found(name, "catechins") == {"1"}
            assert stop_embedded_server(pgdata), "the source database was running"
            embedded_server(pgdata)
            watcher.wait_for(lambda line: "reconnected" in line and "→ run " in line, "run after the restart")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO notes.items VALUES (2, 'Kelp is rich in iodine.')")
            watcher.run_line(name)
            assert found(name, "iodine") == {"2"}, "a change after the restart is picked up"
        finally:
            watcher.stop()
    finally:
        stop_embedded_server(pgdata)


def test_a_folder_removed_or_swapped_is_watched_again_and_links_out_are_not_followed(tmp_path, name):
    """Defects (#42.11, 12): `mv dir dir.old; mkdir dir` or rm -r and mkdir left the folder unwatched; a link to
    a folder outside the root was followed by the watcher."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea\n\nGreen tea contains catechins.")
    outside = tmp_path / "outside"
    outside.mkdir()
    (docs / "elsewhere").symlink_to(outside, target_is_directory=True)
    config = collections_file(tmp_path, {"name": name, "source": {"kind": "folder", "path": str(docs)},
                                         "watch": {"debounce_s": 0.3}})
    watcher = Watcher(config, name)
    try:
        assert "catching up" in watcher.run_line(name)
        (outside / "far.md").write_text("# Far\n\nA file outside the watched folder.")
        with pytest.raises(AssertionError, match="no run line"):
            watcher.wait_for(lambda line: "→ run " in line, "run line", timeout_s=3)

        docs.rename(tmp_path / "docs.old")  # as a deploy or a checkout swaps it
        docs.mkdir()
        (docs / "stone.md").write_text("# Stone\n\nQuartzite is a hard metamorphic rock.")
        watcher.wait_for(lambda line: "→ run " in line and found(name, "quartzite") == {"stone.md"},
                         "the swapped folder's file indexed")
        (docs / "glass.md").write_text("# Glass\n\nObsidian is volcanic glass.")
        watcher.wait_for(lambda line: "→ run " in line and found(name, "obsidian") == {"glass.md"},
                         "a new file of the new folder indexed")

        import shutil

        shutil.rmtree(docs)
        docs.mkdir()
        (docs / "salt.md").write_text("# Salt\n\nHalite is rock salt.")
        watcher.wait_for(lambda line: "→ run " in line and found(name, "halite") == {"salt.md"},
                         "the re-created folder's file indexed")
    finally:
        watcher.stop()


def test_out_of_inotify_watches_the_folder_is_polled_and_said_in_one_line(tmp_path, name):
    """Defect (#42.13): the inotify limit crashed `ragpipe watch` with a traceback, unwatching every collection."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea\n\nGreen tea contains catechins.")
    config = collections_file(tmp_path, {"name": name, "source": {"kind": "folder", "path": str(docs)},
                                         "watch": {"debounce_s": 0.3}})
    watcher = Watcher(config, name, env={"RAGPIPE_FAILPOINTS": "watch_limit"})
    try:
        watcher.run_line(name)
        (docs / "stone.md").write_text("# Stone\n\nQuartzite is a hard metamorphic rock.")
        watcher.wait_for(lambda line: "→ run " in line and found(name, "quartzite") == {"stone.md"},
                         "a new file found by polling")
        assert any("polling it instead" in line for line in watcher.seen), watcher.seen
        assert not any("Traceback" in line for line in watcher.seen)
    finally:
        watcher.stop()


def test_no_run_starts_after_ctrl_c_while_a_burst_settles(tmp_path, name, monkeypatch):
    """Defect (#42.20): after the first Ctrl-C, a run still waiting for its burst to settle started anyway."""
    import asyncio

    from pipelines.config import parse_collection
    from pipelines.watch import live

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha.")
    spec = parse_collection({"name": name, "source": {"kind": "folder", "path": str(docs)},
                             "watch": {"debounce_s": 30}}, where=name, base=tmp_path)
    runs: list[str] = []
    arrived = threading.Event()
    add = live.Pending.add

    def noting(self, change: str) -> None:
        add(self, change)
        arrived.set()

    monkeypatch.setattr(live.Pending, "add", noting)

    async def scenario() -> int:
        stop = asyncio.Event()
        watching = asyncio.create_task(live.watch_collections([spec], stop, lambda line: None,
                                                              run=lambda s: runs.append(s.name) or {}))
        deadline = time.monotonic() + 60
        while not runs:  # the catch-up run
            assert time.monotonic() < deadline and not watching.done(), "no catch-up run"
            await asyncio.sleep(0.05)
        (docs / "b.md").write_text("# B\n\nBeta.")
        while not arrived.is_set():
            assert time.monotonic() < deadline, "the change was not seen"
            await asyncio.sleep(0.05)
        stop.set()  # Ctrl-C while the burst settles (debounce 30 s)
        return await asyncio.wait_for(watching, 30)

    asyncio.run(scenario())
    assert runs == [name], f"only the catch-up run: {runs}"
