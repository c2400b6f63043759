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
    corrupted = conn.execute("SELECT min(base + ids[1]) FROM ragpipe.posting_blocks WHERE collection_id = %s "
                             "AND base + ids[1] <> %s", (coll_id, lost)).fetchone()[0]
    conn.execute("UPDATE ragpipe.posting_blocks SET tfs[1] = tfs[1] + 7 WHERE collection_id = %s "
                 "AND base + ids[1] = %s", (coll_id, corrupted))  # one chunk's postings, in the run's blocks
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


def test_an_emptied_source_deletes_nothing_unless_confirmed(tmp_path, name, conn):
    """Defect (#42.15): a folder suddenly empty (an unmounted share) deleted every document, by a run and by
    `verify --repair`; the dry run's text said `deleted 0` where its JSON said `would_delete`."""
    import json
    import shutil

    import yaml

    from tests.conftest import ragpipe

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"note-{i:02d}.md").write_text(f"# Note {i}\n\nMassdel{i:02d} is note {i}.")
    config = tmp_path / "collections.yml"
    config.write_text(yaml.safe_dump({"collections": [{"name": name, "source": {"kind": "folder",
                                                                                "path": str(docs)}}]}))
    env = {"RAGPIPE_COLLECTIONS": str(config)}
    ragpipe("ingest", "-c", name, env=env)
    shutil.rmtree(docs)
    docs.mkdir()
    (docs / "note-00.md").write_text("# Note 0\n\nMassdel00 is note 0.")
    dry = ragpipe("ingest", "-c", name, "--dry-run", env=env)
    assert "would delete 0 (refused 29" in dry.stdout and "changed 1" in dry.stdout, dry.stdout
    assert "failures:" not in dry.stdout, "a dry run records nothing"
    as_json = json.loads(ragpipe("ingest", "-c", name, "--dry-run", "--json", env=env).stdout)
    assert (as_json["would_delete"], as_json["deletions_refused"], as_json["changed"]) == (0, 29, 1)
    run = ragpipe("ingest", "-c", name, env=env)
    assert "deleted 0" in run.stdout and "failed 1" in run.stdout, run.stdout
    failures = ragpipe("status", "--failures", "-c", name, env=env).stdout
    assert "refused to delete 29 of 30 documents" in failures and "--allow-mass-delete" in failures, failures
    repaired = ragpipe("verify", name, "--repair", check=False, env=env)
    assert repaired.returncode == 1 and "a run would refuse these deletions" in repaired.stdout, repaired.stdout
    count = "SELECT count(*) FROM ragpipe.documents d JOIN ragpipe.collections k ON k.id = d.collection_id " \
            "WHERE k.name = %s"
    assert conn.execute(count, (name,)).fetchone()[0] == 30, "nothing deleted without confirmation"
    ragpipe("verify", name, "--repair", "--allow-mass-delete", env=env)
    assert conn.execute(count, (name,)).fetchone()[0] == 1


def test_a_broken_link_fails_alone_and_deletions_go_on(tmp_path, name, conn):
    """Defect (#42.12): one dangling or looping `*.md` link made every listing incomplete (no deletion ever
    again) while `ragpipe verify` said everything agreed."""

    import yaml

    from tests.conftest import ragpipe

    docs = tmp_path / "docs"
    docs.mkdir()
    for stem in ("tea", "stone"):
        (docs / f"{stem}.md").write_text(f"# {stem}\n\nText about {stem}.")
    (docs / ".#tea.md").symlink_to("root@host.1234:1700000000")  # an editor's lock file
    (docs / "loop.md").symlink_to(docs / "loop.md")
    config = tmp_path / "collections.yml"
    config.write_text(yaml.safe_dump({"collections": [{"name": name, "source": {"kind": "folder",
                                                                                "path": str(docs)}}]}))
    env = {"RAGPIPE_COLLECTIONS": str(config)}
    ragpipe("ingest", "-c", name, env=env)
    (docs / "stone.md").unlink()
    run = ragpipe("ingest", "-c", name, env=env)
    assert "deleted 1" in run.stdout and "failed 2" in run.stdout, run.stdout
    assert ragpipe("verify", name, env=env).returncode == 0
