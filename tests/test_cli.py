"""The `ragpipe` command as users run it: a real subprocess, JSON output, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

RAGPIPE = [str(Path(sys.executable).parent / "ragpipe")]


def ragpipe(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(RAGPIPE + list(args), capture_output=True, text=True, timeout=300, check=False,
                            env=dict(os.environ, **(env or {})))
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_ingest_search_status_embed_json(corpus, name, db_url):
    run = json.loads(ragpipe("ingest", str(corpus), "--collection", name, "--json").stdout)
    assert set(run) >= {"run_id", "listed", "new", "changed", "unchanged", "deleted", "failed",
                        "chunks_embedded", "seconds"}
    assert run["new"] == 30
    again = json.loads(ragpipe("ingest", str(corpus), "--collection", name, "--json").stdout)
    assert again["chunks_embedded"] == 0 and again["unchanged"] == 30

    hits = json.loads(ragpipe("search", "walnuts and semen quality", "-c", name, "--k", "3", "--json").stdout)
    assert len(hits) == 3
    assert set(hits[0]) == {"chunk_id", "document_id", "uri", "title", "text", "score", "metadata"}
    assert hits[0]["document_id"].startswith("nuts/walnuts")

    status = json.loads(ragpipe("status", "--json", "-c", name).stdout)
    assert status[0]["documents"] == 30 and status[0]["last_run"]["status"] == "succeeded"

    literal = ragpipe("embed", "hello world").stdout.strip()
    assert literal.startswith("[") and len(literal.strip("[]").split(",")) == 384


def test_sql_from_psql_matches_the_cli(corpus, name, db_url):
    ragpipe("ingest", str(corpus), "--collection", name)
    literal = ragpipe("embed", "coffee and mortality").stdout.strip()
    out = ragpipe("db", "psql", "-At", "-c",
                  f"SELECT document_id FROM ragpipe.semantic_search('{name}', '{literal}', 1)").stdout
    assert out.strip() == "coffee/coffee-tea-and-mortality.html"


def test_errors_are_one_line_with_nonzero_exit(tmp_path, name):
    missing = ragpipe("ingest", str(tmp_path / "nope"), "--collection", name, check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_filter = ragpipe("search", "x", "-c", name, "--filter", "{oops", check=False)
    assert bad_filter.returncode != 0 and "not valid JSON" in bad_filter.stderr
    unknown = ragpipe("search", "x", "-c", "no_such_collection", check=False)
    assert unknown.returncode == 1 and "no collection named" in unknown.stderr


def test_help_documents_every_command():
    for args in (["--help"], ["ingest", "--help"], ["search", "--help"], ["db", "--help"], ["status", "--help"]):
        assert "Usage:" in ragpipe(*args).stdout


def test_db_status_of_a_stopped_embedded_server_starts_nothing(tmp_path):
    """Defect: `ragpipe db status` started a stopped embedded server, then reported it up."""
    env = {"RAGPIPE_HOME": str(tmp_path / "home")}
    down = ragpipe("db", "status", check=False, env=env)
    assert down.returncode == 1 and down.stdout.startswith("down:") and "ragpipe db start" in down.stdout
    assert not (tmp_path / "home" / "pgdata" / "postmaster.pid").exists()
    assert ragpipe("db", "start", env=env).returncode == 0
    try:
        assert ragpipe("db", "status", env=env).stdout.startswith("up:")
    finally:
        assert "stopped" in ragpipe("db", "stop", env=env).stdout
    assert ragpipe("db", "status", check=False, env=env).returncode == 1
