"""The `ragpipe` command as users run it: a real subprocess, JSON output, exit codes."""

import json

import pytest

from tests.conftest import CORPUS, ragpipe


def test_ingest_search_status_embed_json(corpus, name, db_url):
    run = json.loads(ragpipe("ingest", str(corpus), "--collection", name, "--json").stdout)
    assert set(run) >= {"run_id", "listed", "new", "changed", "unchanged", "deleted", "failed",
                        "chunks_embedded", "seconds"}
    assert run["new"] == 30
    again = json.loads(ragpipe("ingest", str(corpus), "--collection", name, "--json").stdout)
    assert again["chunks_embedded"] == 0 and again["unchanged"] == 30

    hits = json.loads(ragpipe("search", "walnuts and semen quality", "-c", name, "--k", "3", "--json").stdout)
    assert len(hits) == 3
    assert set(hits[0]) == {"chunk_id", "source_id", "uri", "title", "text", "score", "metadata"}
    assert hits[0]["source_id"].startswith("nuts/walnuts")

    status = json.loads(ragpipe("status", "--json", "-c", name).stdout)
    assert status[0]["documents"] == 30 and status[0]["last_run"]["status"] == "succeeded"

    literal = ragpipe("embed", "hello world").stdout.strip()
    assert literal.startswith("[") and len(literal.strip("[]").split(",")) == 384


def test_sql_from_psql_matches_the_cli(corpus, name, db_url):
    ragpipe("ingest", str(corpus), "--collection", name)
    literal = ragpipe("embed", "coffee and mortality").stdout.strip()
    out = ragpipe("db", "psql", "-At", "-c",
                  f"SELECT source_id FROM ragpipe.semantic_search('{name}', '{literal}', 1)").stdout
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
    """`--help` is the documentation: every command is listed with its summary, and each command's
    own help shows its docstring and every option."""
    import click

    from pipelines.cli import main

    top = ragpipe("--help").stdout
    groups = [(main, [])] + [(c, [c.name]) for c in main.commands.values() if isinstance(c, click.Group)]
    for group, path in groups:
        listing = ragpipe(*path, "--help").stdout if path else top
        for name, command in group.commands.items():
            assert name in listing, f"{name} missing from {' '.join(path) or 'ragpipe'} --help"
            if isinstance(command, click.Group):
                continue
            own = ragpipe(*path, name, "--help").stdout
            summary = command.help.strip().splitlines()[0] if command.help else ""
            assert summary and " ".join(summary.split()) in " ".join(own.split()), name
            for option in command.params:
                if isinstance(option, click.Option):
                    assert option.opts[-1] in own, f"{name} --help does not show {option.opts[-1]}"


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


def _collection_row(conn, name: str):
    return conn.execute("SELECT chunk_tokens, chunk_overlap FROM ragpipe.collections WHERE name = %s",
                        (name,)).fetchone()


def test_new_chunk_settings_build_a_new_version_never_a_mix(corpus, name, conn):
    """Defect: new chunk settings were stored but nothing was re-chunked (mixed sizes), and a dry run
    wrote them. Now they build a new version beside the active one, promoted when it is complete."""
    ragpipe("ingest", str(corpus), "-c", name)
    assert _collection_row(conn, name) == (256, 32)
    dry = json.loads(ragpipe("ingest", str(corpus), "-c", name, "--chunk-tokens", "96", "--dry-run", "--json").stdout)
    assert dry["status"] == "dry_run" and _collection_row(conn, name) == (256, 32)
    assert conn.execute("SELECT count(*) FROM ragpipe.collections WHERE family = %s", (name,)).fetchone() == (1,), \
        "a dry run writes no version"
    out = ragpipe("ingest", str(corpus), "-c", name, "--chunk-tokens", "96").stdout
    assert "new version 2" in out and "promoted" in out, out
    assert _collection_row(conn, name) == (96, 32)
    longest = conn.execute("SELECT max(c.token_count) FROM ragpipe.chunks c JOIN ragpipe.collections k "
                           "ON k.id = c.collection_id WHERE k.name = %s", (name,)).fetchone()[0]
    assert longest <= 96, "every chunk of the active version was re-chunked"
    impossible = ragpipe("ingest", str(corpus), "-c", name, "--chunk-tokens", "96", "--chunk-overlap", "60",
                         check=False)
    assert impossible.returncode == 1 and "chunk_overlap" in impossible.stderr and "Traceback" not in impossible.stderr
    next(corpus.rglob("*.md")).open("a").write("\n\nOne more paragraph about broccoli sprouts.\n")
    edit = json.loads(ragpipe("ingest", str(corpus), "-c", name, "--json").stdout)
    assert (edit["changed"], edit["failed"]) == (1, 0), "later runs keep the collection's own settings"


def test_impossible_settings_fail_up_front_and_a_dry_run_writes_nothing(corpus, name, conn):
    bad = ragpipe("ingest", str(corpus), "-c", name, "--chunk-tokens", "40", "--chunk-overlap", "50", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "chunk_overlap must be between 0 and" in bad.stderr
    dry = json.loads(ragpipe("ingest", str(corpus), "-c", name, "--dry-run", "--json").stdout)
    assert dry["status"] == "dry_run" and dry["would_process"] > 0
    assert _collection_row(conn, name) is None
    assert conn.execute("SELECT count(*) FROM ragpipe.ingest_runs r JOIN ragpipe.collections k "
                        "ON k.id = r.collection_id WHERE k.name = %s", (name,)).fetchone() == (0,)


def test_a_run_where_every_document_failed_does_not_report_success(tmp_path, name):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (folder / "empty.md").write_text("")
    result = ragpipe("ingest", str(folder), "-c", name, "--json", check=False)
    summary = json.loads(result.stdout)
    assert result.returncode == 1 and summary["status"] == "failed" and summary["failed"] == 2


@pytest.mark.parametrize("args, env, message", [
    (["similar", "nosuchdoc.md"], {}, 'no document "nosuchdoc.md"'),
    (["ask", "coffee?"], {"RAGPIPE_LLM_URL": "http://127.0.0.1:9/v1"}, "the LLM request failed"),
    (["ask", "coffee?"], {"RAGPIPE_LLM_URL": "notaurl"}, "the LLM request failed"),
    (["ingest", str(CORPUS), "--model", "nosuch/model-xyz"], {}, "cannot load embedding model 'nosuch/model-xyz'"),
])
def test_user_errors_are_one_clear_line_not_a_traceback(args, env, message, name, corpus):
    """Defect: each of these printed a traceback."""
    ragpipe("ingest", str(corpus), "-c", name)
    if args[0] == "ingest":
        args = ["ingest", str(corpus), "-c", f"{name}_m", *args[2:]]
    else:
        args = [*args, "-c", name]
    result = ragpipe(*args, check=False, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_embedded_server_is_sized_from_the_machines_ram(conn, ragpipe_home):
    import os

    from pipelines.store.database import server_settings

    want = server_settings(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    conf = (ragpipe_home / "pgdata" / "ragpipe.conf").read_text()
    assert all(f"{k} = '{v}'" in conf for k, v in want.items()), conf
    mb = conn.execute("SELECT setting::bigint * 8192 / 1048576 FROM pg_settings WHERE name = 'shared_buffers'"
                      ).fetchone()[0]
    assert f"{mb}MB" == want["shared_buffers"], "written before the first start, so in effect"
    assert server_settings(2**30)["shared_buffers"] == "256MB" and server_settings(2**36)["shared_buffers"] == "8192MB"
