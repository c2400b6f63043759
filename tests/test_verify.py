"""`ragpipe verify`: each inconsistency made on purpose is found with its count, a clean collection
verifies clean, and `--repair` makes a broken one clean again; through the installed command."""

import json
import os
from pathlib import Path

import yaml

from tests.conftest import ragpipe


def audit(config: Path, name: str, *args: str) -> tuple[int, dict]:
    got = ragpipe("verify", name, "--json", *args, check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert got.returncode in (0, 1) and got.stdout.startswith("{"), got.stderr
    return got.returncode, json.loads(got.stdout)


def counts(report: dict) -> dict[str, int]:
    return {f["check"]: f["count"] for f in report["findings"]}


def test_verify_finds_each_inconsistency_and_repair_mends_them(tmp_path, corpus, name, conn):
    config = tmp_path / "collections.yml"
    config.write_text(yaml.safe_dump({"collections": [{"name": name, "source": {"kind": "folder",
                                                                                "path": str(corpus)}}]}))
    env = {"RAGPIPE_COLLECTIONS": str(config)}
    ragpipe("ingest", "-c", name, env=env)
    rc, report = audit(config, name)
    assert rc == 0 and report["clean"] and report["findings"] == [], report

    coll_id = conn.execute("SELECT id FROM ragpipe.collections WHERE name = %s", (name,)).fetchone()[0]
    docs = conn.execute("SELECT d.id, d.source_id, d.chunk_count FROM ragpipe.documents d WHERE d.collection_id = %s "
                        "ORDER BY d.source_id", (coll_id,)).fetchall()
    multi = next(d for d in docs if d[2] > 1)
    lost = conn.execute("DELETE FROM ragpipe.chunks WHERE id = (SELECT max(id) FROM ragpipe.chunks "
                        "WHERE document_id = %s) RETURNING id", (multi[0],)).fetchone()[0]  # one chunk row lost
    conn.execute("DROP INDEX ragpipe." + conn.execute("SELECT ragpipe.hnsw_index_name(%s)", (coll_id,)).fetchone()[0])
    other = next(d for d in docs if d[0] != multi[0])  # a vector of the wrong width (which the index refused)
    conn.execute("UPDATE ragpipe.chunks SET embedding = '[1,0,0]' WHERE id = (SELECT min(id) FROM ragpipe.chunks "
                 "WHERE document_id = %s)", (other[0],))
    corrupted = conn.execute("SELECT min(chunk_id) FROM ragpipe.postings WHERE collection_id = %s AND chunk_id <> %s",
                             (coll_id, lost)).fetchone()[0]
    conn.execute("UPDATE ragpipe.postings SET tf = tf + 7 WHERE collection_id = %s AND chunk_id = %s",
                 (coll_id, corrupted))  # every posting of one chunk
    conn.execute("DELETE FROM ragpipe.text_stats WHERE collection_id = %s", (coll_id,))
    removed = Path(corpus / docs[-1][1])
    removed.unlink()  # gone from the source, no run since
    (corpus / "new-note.md").write_text("# New\n\nA note written after the last run.")
    changed = Path(corpus / docs[0][1])
    changed.write_text(changed.read_text() + "\n\nAn edit after the last run.")

    rc, report = audit(config, name)
    assert rc == 1 and not report["clean"]
    assert counts(report) == {"not_indexed": 1, "changed_in_source": 1, "gone_from_source": 1, "missing_chunks": 1,
                              "wrong_dimension": 1, "wrong_postings": 2, "stale_statistics": 1, "missing_index": 1}
    by_check = {f["check"]: f for f in report["findings"]}
    assert by_check["not_indexed"]["examples"] == ["new-note.md"]
    assert by_check["gone_from_source"]["examples"] == [docs[-1][1]]
    assert by_check["missing_chunks"]["examples"] == [multi[1]]
    assert by_check["wrong_dimension"]["examples"] == [other[1]]
    assert by_check["wrong_postings"]["examples"] == sorted([str(corrupted), str(lost)], key=int), \
        "the corrupted chunk's postings, and those the lost chunk left behind"

    plain = ragpipe("verify", name, check=False, env=env)
    assert plain.returncode == 1 and "missing_index: 1 — " in plain.stdout and "wrong_postings: 2 — " in plain.stdout

    rc, report = audit(config, name, "--repair")
    assert rc == 0 and report["clean"], report
    assert any("ran the collection" in line for line in report["repaired"])
    rc, report = audit(config, name)
    assert rc == 0 and report["clean"], "a second verify agrees"


def test_a_failed_document_is_accounted_for_and_an_undeclared_collection_is_noted(tmp_path, corpus, name):
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    config = tmp_path / "collections.yml"
    config.write_text(yaml.safe_dump({"collections": [{"name": name, "source": {"kind": "folder",
                                                                                "path": str(corpus)}}]}))
    ragpipe("ingest", "-c", name, env={"RAGPIPE_COLLECTIONS": str(config)})
    rc, report = audit(config, name)
    assert rc == 0 and report["clean"], "a document the run recorded as failed is not a finding"
    rc, report = audit(tmp_path / "missing.yml", name)
    assert rc == 0 and any("not in collections.yml" in n for n in report["notes"])
    got = ragpipe("verify", "no_such_collection", check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert got.returncode == 1 and got.stderr.count("\n") == 1 and "no collection named" in got.stderr
    assert os.environ.get("RAGPIPE_DATABASE_URL") is None
