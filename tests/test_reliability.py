"""Faults, hostile input and least privilege, proven against the real database, model and CLI."""

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import psycopg
import pytest

from pipelines.extract import ExtractionError, extract
from pipelines.ingest import run_ingest
from tests.conftest import RAGPIPE, assert_same_chunks, chunk_state, folder_spec, ragpipe, run_failures
from tools.synthetic import sentences, write_folder

pytestmark = pytest.mark.slow




def start_ingest(folder: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([*RAGPIPE, "ingest", str(folder), "-c", name, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_progress(conn, name: str, proc: subprocess.Popen, documents: int) -> None:
    """Until the run has committed at least `documents` documents (or ended)."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM ragpipe.documents d JOIN ragpipe.collections k "
                           "ON k.id = d.collection_id WHERE k.name = %s", (name,)).fetchone()
        if row[0] >= documents:
            return
        time.sleep(0.2)


def test_kill_9_at_random_points_then_resume_equals_a_clean_run(tmp_path, name, conn):
    folder = write_folder(tmp_path / "docs", 300, seed=7)
    rng = random.Random(3)
    for attempt in range(3):
        proc = start_ingest(folder, name)
        wait_for_progress(conn, name, proc, documents=rng.randint(1, 250) if attempt else 0)
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = json.loads(ragpipe("ingest", str(folder), "-c", name, "--json").stdout)
    assert final["status"] == "succeeded" and final["failed"] == 0
    run_ingest(folder_spec(f"{name}_ref", folder))
    assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_ref"))
    dupes = conn.execute("SELECT count(*) - count(DISTINCT (document_id, ordinal)) FROM ragpipe.chunks").fetchone()
    assert dupes[0] == 0
    stuck = conn.execute("SELECT count(*) FROM ragpipe.ingest_runs r JOIN ragpipe.collections k "
                         "ON k.id = r.collection_id WHERE k.name = %s AND status = 'running'", (name,)).fetchone()
    assert stuck[0] == 0, "killed runs are closed as abandoned by the next run"


def test_database_restart_mid_run_fails_clearly_then_recovers(tmp_path, name, db_url, ragpipe_home):
    from pipelines.store.database import embedded_server

    folder = write_folder(tmp_path / "docs", 300, seed=8)
    with psycopg.connect(db_url, autocommit=True) as watch:
        proc = start_ingest(folder, name)
        wait_for_progress(watch, name, proc, documents=20)
    server = embedded_server(ragpipe_home / "pgdata")
    server.stop()
    out, err = proc.communicate(timeout=120)
    embedded_server(ragpipe_home / "pgdata")  # start again
    assert proc.returncode == 1, out
    said = ("lost the database connection", "the embedded PostgreSQL stopped", "cannot connect")
    assert any(s in err for s in said), err
    assert "Traceback" not in err
    final = json.loads(ragpipe("ingest", str(folder), "-c", name, "--json").stdout)
    assert final["status"] == "succeeded"
    with psycopg.connect(db_url) as conn:
        run_ingest(folder_spec(f"{name}_ref", folder))
        assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_ref"))


def test_file_vanishing_between_listing_and_reading_is_recorded(tmp_path, name, conn):
    from pipelines.sources import make_source
    from pipelines.sync import plan_run, process_batch

    folder = write_folder(tmp_path / "docs", 10, seed=9)
    spec = folder_spec(name, folder)
    plan = plan_run(conn, spec)
    victim = folder / plan.todo[3].source_id
    victim.unlink()
    result = process_batch(conn, spec, plan.run_id, plan.todo)
    assert result.failed == 1 and result.new == 9 and "cannot read" in result.failures[0][2]
    assert len(make_source(spec.source).list().refs) == 9
    assert run_ingest(spec)["deleted"] == 0  # it was never loaded; nothing else is touched


def zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", b"\0" * (300 * 1024 * 1024))
    return buf.getvalue()


def test_hostile_files_are_recorded_and_nothing_loaded_is_lost(tmp_path, name, conn, monkeypatch):
    folder = write_folder(tmp_path / "docs", 5, seed=10)
    spec = folder_spec(name, folder, source={"kind": "folder", "path": str(folder), "max_bytes": 2_000_000})
    run_ingest(spec)
    before = chunk_state(conn, name)
    (folder / "bomb.docx").write_bytes(zip_bomb())
    (folder / "huge.txt").write_bytes(b"word " * 500_000)              # 2.5 MB > cap of 2 MB
    (folder / "mixed.txt").write_bytes("Caf\u00e9 ".encode() * 50 + b"\xff\xfe\x00\x00binary" * 50)
    (folder / "oneline.md").write_bytes(b"x" * 1_500_000)               # one long line, no whitespace
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret text outside the source root")
    (folder / "escape.txt").symlink_to(outside)
    summary = run_ingest(spec)
    assert summary["status"] == "succeeded"
    failures = run_failures(conn, summary["id"])
    assert "zip bomb" in failures["bomb.docx"]
    assert "size cap" in failures["huge.txt"]
    assert "outside the source folder" in failures["escape.txt"]
    assert "binary" in failures["mixed.txt"] or "mixed.txt" not in failures
    assert "oneline.md" not in failures, "a long line is chunked, not refused"
    chunks = conn.execute("SELECT max(token_count), max(length(text)) FROM ragpipe.chunks c JOIN ragpipe.documents d "
                          "ON d.id = c.document_id WHERE d.source_id = 'oneline.md'").fetchone()
    assert chunks[0] <= 256 and chunks[1] <= 30_000
    assert [r for r in chunk_state(conn, name) if r[0] in {b[0] for b in before}] == before
    assert not conn.execute("SELECT 1 FROM ragpipe.chunks WHERE text LIKE '%top secret%'").fetchone()


def slow_pdf(operators: int) -> bytes:
    """A few kB of compressed PDF whose page holds `operators` text operators: minutes of parsing."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf " + b"(a) Tj 1 0 Td " * operators + b"ET")
    page[NameObject("/Contents")] = writer._add_object(stream.flate_encode())
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    fonts = DictionaryObject({NameObject("/F1"): font})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def test_a_parser_that_runs_too_long_is_stopped_and_recorded(tmp_path, name, conn, monkeypatch):
    folder = write_folder(tmp_path / "docs", 5, seed=11)
    (folder / "slow.pdf").write_bytes(slow_pdf(2_000_000))  # ~60 kB, minutes of pypdf time
    monkeypatch.setenv("RAGPIPE_EXTRACT_TIMEOUT", "3")
    summary = run_ingest(folder_spec(name, folder))
    assert summary["status"] == "succeeded" and summary["new"] == 5 and summary["failed"] == 1
    error, = conn.execute("SELECT error FROM ragpipe.ingest_failures WHERE run_id = %s AND source_id = 'slow.pdf'",
                          (summary["id"],)).fetchone()
    assert "longer than 3 s" in error
    assert run_ingest(folder_spec(name, folder))["new"] == 0, "the worker is replaced and the next run works"


def test_zip_bomb_is_refused_before_unpacking():
    with pytest.raises(ExtractionError, match="zip bomb"):
        extract(zip_bomb(), ".docx")


def test_paths_with_dotdot_are_refused(tmp_path):
    from pipelines.sources import DocumentRef
    from pipelines.sources.folder import FolderSource

    (tmp_path / "root").mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    source = FolderSource(str(tmp_path / "root"))
    (_, result), = list(source.read_many([DocumentRef("../outside.txt", "file:///x", "1:1")]))
    assert isinstance(result, Exception) and "outside the source folder" in str(result)


PASSWORD = "Sup3r-Secret-Pa55word"


def test_no_password_in_output_of_failing_and_succeeding_runs(tmp_path, name, db_url, corpus):
    bad = ragpipe("status", check=False,
                  env={"RAGPIPE_DATABASE_URL": f"postgresql://loader:{PASSWORD}@127.0.0.1:1/nowhere"})
    assert bad.returncode == 1 and "***" in bad.stderr
    params = psycopg.conninfo.conninfo_to_dict(db_url)
    good_url = f"postgresql://{params.get('user', 'postgres')}:{PASSWORD}@/{params['dbname']}?host={params['host']}"
    env = {"RAGPIPE_DATABASE_URL": good_url}
    outputs = [bad.stdout + bad.stderr]
    for args in (["-v", "ingest", str(corpus), "-c", name], ["search", "coffee", "-c", name],
                 ["db", "url"], ["db", "status"], ["status", "--json"]):
        out = ragpipe(*args, env=env)
        outputs.append(out.stdout + out.stderr)
    assert "***" in outputs[-2] or "***" in outputs[-3]
    for text in outputs:
        assert PASSWORD not in text


def test_loader_role_can_ingest_but_not_change_the_schema(tmp_path, name, db_url, corpus):
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS app_loader")
        admin.execute("CREATE ROLE app_loader LOGIN PASSWORD 'loader-pass'")
        admin.execute("GRANT CONNECT ON DATABASE postgres TO app_loader")
        admin.execute("GRANT ragpipe_loader TO app_loader")
    loader_url = psycopg.conninfo.make_conninfo(db_url, user="app_loader", password="loader-pass")
    run = json.loads(ragpipe("ingest", str(corpus), "-c", name, "--json",
                             env={"RAGPIPE_DATABASE_URL": loader_url}).stdout)
    assert run["status"] == "succeeded" and run["new"] == 30
    with psycopg.connect(loader_url, autocommit=True) as loader:
        collection_id = run_collection_id(loader, name)
        assert loader.execute("SELECT to_regclass(%s)", (f"ragpipe.chunks_hnsw_c{collection_id}",
                                                         )).fetchone()[0], "index built through the definer function"
        assert loader.execute("SELECT to_regclass(%s)", (f"ragpipe.chunks_c{collection_id}",)).fetchone()[0], (
            "the collection's partition was created by the trigger, not by the loader")
        for statement in ("DROP TABLE ragpipe.chunks", "CREATE TABLE ragpipe.x (i int)",
                          f"DROP TABLE ragpipe.chunks_c{collection_id}", f"DELETE FROM ragpipe.chunks_c{collection_id}",
                          "ALTER TABLE ragpipe.documents ADD COLUMN x int", "TRUNCATE ragpipe.chunks",
                          "SELECT ragpipe.grant_reader('app_loader')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                loader.execute(statement)


def run_collection_id(conn, name: str) -> int:
    return conn.execute("SELECT id FROM ragpipe.collections WHERE name = %s", (name,)).fetchone()[0]




def test_ingests_of_different_collections_run_in_parallel(tmp_path, name, conn):
    a, b = write_folder(tmp_path / "a", 200, seed=12), write_folder(tmp_path / "b", 200, seed=13)
    procs = [start_ingest(a, f"{name}_a"), start_ingest(b, f"{name}_b")]
    runs = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    assert [(r["status"], r["new"]) for r in runs] == [("succeeded", 200)] * 2
    spans = "SELECT started_at, finished_at FROM ragpipe.ingest_runs WHERE id = %s"
    (start_a, end_a), (start_b, end_b) = [conn.execute(spans, (r["run_id"],)).fetchone() for r in runs]
    assert start_a < end_b and start_b < end_a, "each run holds only its own collection's lock"


def versioned_folder(folder: Path, version: int, count: int) -> Path:
    """Documents whose every word-run carries the version tag `verNx`; chunk counts differ by version."""
    rng = random.Random(version)
    folder.mkdir(exist_ok=True)
    words = " ".join(sentences(limit=2000)).split()
    for i in range(count):
        paragraphs = [" ".join(f"ver{version}x {' '.join(rng.sample(words, 8))}" for _ in range(6))
                      for _ in range(1 + (i + version) % 4)]
        (folder / f"doc{i:03d}.md").write_text("\n\n".join(paragraphs) + "\n")
    return folder


def visible_versions(conn, name: str) -> dict[str, tuple[set[int], int]]:
    """Per document, through the SQL search API: the versions its chunks carry and how many chunks."""
    rows = conn.execute("SELECT source_id, text FROM ragpipe.keyword_search(%s, 'ver1x ver2x', 10000)",
                        (name,)).fetchall()  # k's maximum: every chunk
    seen: dict[str, tuple[set[int], int]] = {}
    for doc, text in rows:
        versions, count = seen.get(doc, (set(), 0))
        seen[doc] = (versions | {int(v) for v in re.findall(r"ver(\d)x", text)}, count + 1)
    return seen


def test_searches_during_an_ingest_never_see_a_half_replaced_document(tmp_path, name, conn):
    folder = versioned_folder(tmp_path / "docs", 1, 120)
    spec = folder_spec(name, folder, chunk_tokens=48, chunk_overlap=0)
    (tmp_path / "collections.yml").write_text(json.dumps({"collections": [{
        "name": name, "chunk_tokens": 48, "chunk_overlap": 0, "source": {"kind": "folder", "path": str(folder)}}]}))
    run_ingest(spec)
    before = visible_versions(conn, name)
    versioned_folder(folder, 2, 120)
    proc = subprocess.Popen([*RAGPIPE, "ingest", "-c", name, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "RAGPIPE_COLLECTIONS": str(tmp_path / "collections.yml")})
    observed = []
    while proc.poll() is None:
        observed.append(visible_versions(conn, name))
    assert json.loads(proc.communicate()[0])["changed"] == 120
    after = visible_versions(conn, name)
    assert all(v == ({1}, before[d][1]) for d, v in before.items()) and all(v[0] == {2} for v in after.values())
    mixed = 0
    for snapshot in observed:
        assert set(snapshot) == set(before), "no document disappears while it is replaced"
        for doc, state in snapshot.items():
            assert state in (before[doc], after[doc]), f"{doc} half-replaced: {state}"
        mixed += len({versions.pop() for versions, _ in snapshot.values()}) == 2
    assert mixed, "the searches ran while documents were being replaced"


def test_duplicate_documents_under_other_names_are_recorded_and_indexed_once(tmp_path, name, conn):
    folder = write_folder(tmp_path / "docs", 5, seed=14)
    original = folder / "part0000" / "doc000001.md"
    (folder / "copy-of-doc1.md").write_bytes(original.read_bytes())
    (folder / "part0000" / "again.md").write_bytes(original.read_bytes())
    spec = folder_spec(name, folder)
    summary = run_ingest(spec)
    assert (summary["new"], summary["duplicates"], summary["failed"]) == (5, 2, 0)
    names = {"copy-of-doc1.md", "part0000/again.md", "part0000/doc000001.md"}
    loaded = names & {r[0] for r in chunk_state(conn, name)}
    assert len(loaded) == 1, loaded
    kept = loaded.pop()
    recorded = dict(conn.execute("SELECT source_id, error FROM ragpipe.ingest_failures WHERE run_id = %s "
                                 "AND stage = 'duplicate'", (summary["id"],)).fetchall())
    assert recorded == {n: f"same content as {kept}; indexed once" for n in names - {kept}}
    (folder / kept).unlink()  # the indexed copy goes away: one of the others takes its place next run
    summary = run_ingest(spec)
    assert (summary["deleted"], summary["duplicates"]) == (1, 1)
    assert len(names & {r[0] for r in chunk_state(conn, name)}) == 1


def test_a_copy_read_before_its_original_is_loaded_is_still_indexed_once(tmp_path, name, conn):
    """Batches are read ahead of loading: the copy's batch is read while the original's is still
    being embedded, so the copy is caught when it is loaded."""
    folder = write_folder(tmp_path / "docs", 12, seed=15)
    shutil.copy(folder / "part0000" / "doc000001.md", folder / "part0000" / "doc000005a.md")  # batch 1 → 2
    summary = run_ingest(folder_spec(name, folder, docs_per_batch=4))
    assert (summary["new"], summary["duplicates"]) == (12, 1)
    loaded = {r[0] for r in chunk_state(conn, name)} & {"part0000/doc000001.md", "part0000/doc000005a.md"}
    assert loaded == {"part0000/doc000001.md"}
    assert conn.execute("SELECT error FROM ragpipe.ingest_failures WHERE run_id = %s AND stage = 'duplicate'",
                        (summary["id"],)).fetchall() == [("same content as part0000/doc000001.md; indexed once",)]


def test_two_batches_loading_at_once_index_identical_files_once(tmp_path, name, conn, db_url, monkeypatch):
    """Airflow's mapped tasks load batches of one run in parallel. Two identical files in two
    batches, both read before either loads: the second load waits for the first to commit, then
    records its file as a duplicate."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from pipelines.airflow.steps import plan_step
    from pipelines.collection import open_collection
    from pipelines.sources import make_source
    from pipelines.store.database import connect
    from pipelines.sync import load
    from pipelines.sync.encode import embed_batch
    from pipelines.sync.read import read_batch

    folder = write_folder(tmp_path / "docs", 1, seed=16)
    shutil.copy(folder / "part0000" / "doc000000.md", folder / "part0000" / "doc000000b.md")
    spec = folder_spec(name, folder, docs_per_batch=1)
    plan = plan_step(spec, url=db_url)
    assert len(plan.todo) == 2
    paused, release = threading.Event(), threading.Event()

    def hold_the_first_load(point: str) -> None:  # the first load to get here waits before its commit
        if point == "load_before_commit" and not paused.is_set():
            paused.set()
            assert release.wait(30)

    monkeypatch.setattr(load, "failpoint", hold_the_first_load)
    with connect(db_url, autocommit=True) as a, connect(db_url, autocommit=True) as b, \
            ThreadPoolExecutor(max_workers=2) as pool:
        collection, embedder = open_collection(a, spec)
        works = [read_batch(c, collection, embedder, make_source(spec.source), refs, plan.run_id, False)
                 for c, refs in zip((a, b), plan.batches(1), strict=True)]
        for work in works:
            embed_batch(work, embedder=embedder)
        first = pool.submit(load.write_batch, a, collection, plan.run_id, works[0])
        assert paused.wait(30), "the first load reached its commit"
        second = pool.submit(load.write_batch, b, collection, plan.run_id, works[1])
        assert not wait([second], timeout=2).done, "the second load waits for the first one's commit"
        release.set()
        results = [first.result(timeout=60), second.result(timeout=60)]
    assert [(r.new, r.duplicates) for r in results] == [(1, 0), (0, 1)]
    assert [r[0] for r in chunk_state(conn, name)] == ["part0000/doc000000.md"] * len(chunk_state(conn, name))


def test_row_level_security_gives_a_tenant_role_its_own_rows_only(tmp_path, name, db_url, conn, embedder):
    from pipelines.config import parse_collection
    from tests.conftest import CORPUS

    rows = [json.loads(line) for line in (CORPUS / "records.jsonl").read_text().splitlines()]
    for row in rows:  # milk and eggs studies belong to tenant acme, the rest to globex
        row["tenant"] = "acme" if row["topic"] in ("milk", "eggs") else "globex"
    table = tmp_path / "records.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_ingest(parse_collection({"name": name, "source": {"kind": "tabular", "path": str(table),
                                                          "title_column": "title"}}, where=name, base=tmp_path))
    acme_docs = {r["id"] for r in rows if r["tenant"] == "acme"}
    conn.execute("DROP ROLE IF EXISTS acme_app")
    conn.execute("CREATE ROLE acme_app LOGIN PASSWORD 'acme-pass' NOSUPERUSER NOBYPASSRLS")
    conn.execute("GRANT CONNECT ON DATABASE postgres TO acme_app")
    ragpipe("db", "grant-tenant", "acme_app", "acme")
    acme_url = psycopg.conninfo.make_conninfo(db_url, user="acme_app", password="acme-pass")
    query = embedder.encode(["Does flaxseed lower cholesterol?"])[0]  # a globex topic
    with psycopg.connect(acme_url, autocommit=True) as acme:
        from pgvector.psycopg import register_vector

        register_vector(acme)
        assert acme.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False,)
        hits = acme.execute("SELECT source_id FROM ragpipe.tenant_search(%s, %s, 100)", (name, query)).fetchall()
        assert hits and {h[0] for h in hits} == acme_docs
        assert {r[0] for r in acme.execute("SELECT DISTINCT tenant FROM ragpipe.chunks")} == {"acme"}
        assert acme.execute("SELECT count(*) FROM ragpipe.documents WHERE tenant = 'globex'").fetchone() == (0,)
        assert acme.execute("SELECT count(*) FROM ragpipe.tenant_roles").fetchone() == (1,)
        partition = f"ragpipe.chunks_c{run_collection_id(conn, name)}"  # no grants: only through ragpipe.chunks
        for statement in ("DELETE FROM ragpipe.chunks", "UPDATE ragpipe.documents SET title = 'x'",
                          f"SELECT * FROM {partition}", "SELECT * FROM ragpipe.semantic_search('x', '[1]'::vector)",
                          "SELECT * FROM ragpipe.ingest_failures", "SELECT ragpipe.grant_tenant('acme_app', 'globex')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                acme.execute(statement)
    everyone = conn.execute("SELECT count(DISTINCT tenant) FROM ragpipe.chunks c JOIN ragpipe.collections k "
                            "ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchone()
    assert everyone == (2,), "roles that are not tenant readers see every row"


def test_a_fifo_or_socket_in_a_folder_is_recorded_never_a_hang(tmp_path, name, conn):
    """Defect: a named pipe passed the listing's stat() as a 0-byte file and its open() blocked the run."""
    import socket

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nA regular document about named pipes.\n")
    os.mkfifo(folder / "pipe.md")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.md"))
    try:
        summary = json.loads(ragpipe("ingest", str(folder), "-c", name, "--json").stdout)  # times out if it hangs
    finally:
        sock.close()
    assert (summary["new"], summary["failed"]) == (1, 2)
    reasons = run_failures(conn, summary["run_id"])
    assert reasons == {"pipe.md": "a named pipe (FIFO), not a regular file; skipped",
                       "socket.md": "a socket, not a regular file; skipped"}


@pytest.mark.parametrize("conninfo", [
    f"host=127.0.0.1 port=9 user=postgres password = {PASSWORD}",
    f"password='{PASSWORD} x' host=127.0.0.1",
    f"postgresql://loader:{PASSWORD}@127.0.0.1:1/nowhere",
    f"postgresql://loader@127.0.0.1/db?password={PASSWORD}",
    f"cannot connect to postgresql://loader:{PASSWORD}@db/x: connection refused",
])
def test_passwords_are_masked_in_every_conninfo_form(conninfo):
    """Defect: a regex missed `password = x` and quoted values; libpq's own parser finds the password."""
    from pipelines.store.database import mask_url

    masked = mask_url(conninfo)
    assert PASSWORD not in masked and "***" in masked and " x'" not in masked


def test_a_copy_of_a_document_edited_in_the_same_run_keeps_the_old_text_searchable(tmp_path, name, conn):
    """Defect: the copy was recorded as "same content as a.md" while a.md was being replaced by new
    text in the same run, so the old text was searchable nowhere until the next run."""
    folder = tmp_path / "d"
    folder.mkdir()
    old = "# Apples\n\nApples keep the doctor away, say the orchards of Normandy.\n"
    (folder / "a.md").write_text(old)
    (folder / "z.md").write_text("# Other\n\nSomething else entirely about pears.\n")
    spec = folder_spec(name, folder)
    run_ingest(spec)
    (folder / "b-backup.md").write_text(old)
    (folder / "a.md").write_text("# Apples\n\nApples were replaced by quinces in this edition.\n")
    summary = run_ingest(spec)
    assert (summary["new"], summary["changed"], summary["duplicates"]) == (1, 1, 0)
    texts = {sid: text for sid, _, text, *_ in chunk_state(conn, name)}
    assert "Normandy" in texts["b-backup.md"] and "quinces" in texts["a.md"]


def test_a_source_that_is_missing_fails_its_run_with_the_reason(tmp_path, name, conn):
    """Defect (#42.14): the run row stayed `running` (the next run relabelled it abandoned) and the cause was lost."""
    import shutil

    from pipelines.sources import SourceError

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha.")
    spec = folder_spec(name, docs)
    run_ingest(spec)
    shutil.rmtree(docs)
    with pytest.raises(SourceError, match="does not exist"):
        run_ingest(spec)
    status, error = conn.execute("SELECT r.status, r.error FROM ragpipe.ingest_runs r JOIN ragpipe.collections k "
                                 "ON k.id = r.collection_id WHERE k.name = %s ORDER BY r.id DESC LIMIT 1",
                                 (name,)).fetchone()
    assert status == "failed" and "does not exist" in error, (status, error)
