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


# --- Defects of hostile testing, round 3: errors that misled, tracebacks, small surprises ----------

def test_database_failures_say_whether_running_again_helps(db_url, tmp_path):
    """Defect: every database error was "lost the database connection ... Run the command again",
    also a pgvector limit that no retry lifts, and a server that had stopped."""
    import psycopg

    from pipelines.store.connection import open_database
    from pipelines.store.database import connect, embedded_server, explain_failure, stop_embedded_server

    with connect(db_url, autocommit=True) as c:
        c.execute("CREATE TEMP TABLE wide (v vector(2560))")
        with pytest.raises(psycopg.Error) as limit:
            c.execute("CREATE INDEX ON wide USING hnsw (v vector_cosine_ops)")
    said = explain_failure(limit.value)
    assert "2000 dimensions" in said and "will not lift" in said and "Run the command again" not in said

    with connect(db_url, autocommit=True) as victim, connect(db_url, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as lost:
            victim.execute("SELECT 1")
    assert "lost the database connection" in explain_failure(lost.value) and "again" in explain_failure(lost.value)

    pgdata = tmp_path / "pgdata"
    url = open_database(embedded_server(pgdata).get_uri())
    try:
        with connect(url, autocommit=True) as c:
            stop_embedded_server(pgdata)
            with pytest.raises(psycopg.OperationalError) as stopped:
                c.execute("SELECT 1")
    finally:
        stop_embedded_server(pgdata)
    said = explain_failure(stopped.value, pgdata)
    assert "the embedded PostgreSQL stopped" in said and "shut down" in said and "ragpipe db start" in said


def test_a_server_that_will_not_start_is_one_line_with_its_reason(tmp_path):
    """Defect: `ragpipe db start` and `ragpipe status` printed pg_ctl's 116-line CalledProcessError."""
    env = {"RAGPIPE_HOME": str(tmp_path / "home"), "RAGPIPE_COLLECTIONS": str(tmp_path / "none.yml")}
    try:
        ragpipe("db", "start", env=env)
        ragpipe("db", "stop", env=env)
        conf = tmp_path / "home" / "pgdata" / "ragpipe.conf"
        conf.write_text(conf.read_text() + "shared_buffers = 'lots'\n")
        for args in (["db", "start"], ["status"]):
            failed = ragpipe(*args, check=False, env=env)
            assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
            assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
            assert "did not start" in failed.stderr and "shared_buffers" in failed.stderr, failed.stderr
    finally:
        ragpipe("db", "stop", check=False, env=env)


@pytest.mark.parametrize("url", ["postgresql://u:s3cretpw@[::1:1/x", "postgresql://u:s3cretpw@localhost/x?foo=bar",
                                 "host=localhost password='s3cretpw"])
def test_a_malformed_database_url_is_one_line_without_the_password(url):
    """Defect: a 48-line psycopg.ProgrammingError, with the password in clear for the IPv6 form."""
    failed = ragpipe("status", check=False, env={"RAGPIPE_DATABASE_URL": url})
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "RAGPIPE_DATABASE_URL" in failed.stderr
    assert "s3cretpw" not in failed.stderr + failed.stdout


def test_a_missing_or_empty_eval_set_fails_config_check_and_the_run(corpus, tmp_path, name):
    """Defect: `config check` said fine, then `ragpipe promote` printed a 30-line FileNotFoundError."""
    empty = tmp_path / "empty-eval"
    empty.mkdir()
    for where, message in [(tmp_path / "no-such-eval", "has no queries.jsonl"), (empty, "has no queries.jsonl")]:
        config = tmp_path / "collections.yml"
        config.write_text(json.dumps({"collections": [{"name": name, "source": {"kind": "folder", "path": str(corpus)},
                                                       "eval": {"path": str(where)}}]}))
        env = {"RAGPIPE_COLLECTIONS": str(config)}
        for args in (["config", "check"], ["ingest", "-c", name], ["promote", name, "2"]):
            failed = ragpipe(*args, check=False, env=env)
            assert failed.returncode == 1 and "Traceback" not in failed.stderr, (args, failed.stderr)
            assert message in failed.stderr and "eval.path" in failed.stderr, (args, failed.stderr)
            assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_migrating_a_database_that_a_newer_ragpipe_migrated_is_refused(conn, db_url):
    """Defect: `ragpipe db migrate` re-applied its older sql/api files over a newer schema and exited 0."""
    import psycopg

    conn.execute("DROP DATABASE IF EXISTS newer_schema")
    conn.execute("CREATE DATABASE newer_schema")
    url = psycopg.conninfo.make_conninfo(db_url, dbname="newer_schema")
    try:
        ragpipe("db", "migrate", env={"RAGPIPE_DATABASE_URL": url})
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("INSERT INTO ragpipe.schema_migrations (name, checksum) "
                          "VALUES ('migrations/999_future.sql', 'x')")
            other.execute("UPDATE ragpipe.schema_migrations SET checksum = 'changed' WHERE name LIKE 'api/%'")
            failed = ragpipe("db", "migrate", check=False, env={"RAGPIPE_DATABASE_URL": url})
            assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
            assert "newer than this ragpipe" in failed.stderr and "999_future" in failed.stderr
            assert "upgrade the ragpipe package" in failed.stderr
            assert other.execute("SELECT count(*) FROM ragpipe.schema_migrations WHERE checksum = 'changed'"
                                 ).fetchone()[0] > 0, "nothing was re-applied"
    finally:
        conn.execute("DROP DATABASE IF EXISTS newer_schema WITH (FORCE)")


def test_an_older_release_does_not_put_its_sql_api_back(conn, db_url):
    """Defect (#42.17): a release older than the database re-applied its own sql/api files (same migrations,
    older functions) under every newer process of a rolling deploy."""
    import psycopg

    conn.execute("DROP DATABASE IF EXISTS newer_api")
    conn.execute("CREATE DATABASE newer_api")
    url = psycopg.conninfo.make_conninfo(db_url, dbname="newer_api")
    try:
        ragpipe("db", "migrate", env={"RAGPIPE_DATABASE_URL": url})
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("UPDATE ragpipe.schema_migrations SET checksum = '9999' WHERE name = 'api/level'")
            other.execute("UPDATE ragpipe.schema_migrations SET checksum = 'newer' WHERE name LIKE 'api/0%'")
            for args in (("db", "migrate"), ("status",)):
                failed = ragpipe(*args, check=False, env={"RAGPIPE_DATABASE_URL": url})
                assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
                assert "SQL API (level 9999) is newer than this ragpipe's" in failed.stderr, failed.stderr
            assert other.execute("SELECT count(*) FROM ragpipe.schema_migrations WHERE checksum = 'newer'"
                                 ).fetchone()[0] > 0, "nothing was re-applied"
    finally:
        conn.execute("DROP DATABASE IF EXISTS newer_api WITH (FORCE)")


def test_the_sql_api_level_names_the_sql_api_it_ships():
    """sql/api-level's sha256 is that of sql/api/*.sql: a change there must raise the level."""
    from pipelines.store.migrations import api_checksum, api_level

    assert api_level()[1] == api_checksum(), (
        f"sql/api/*.sql changed: raise `level` in sql/api-level and set sha256={api_checksum()}")


@pytest.mark.parametrize("entry, message", [
    ({"name": " "}, "a collection name is 1-200 letters"),
    ({"name": "a\nb"}, "a collection name is 1-200 letters"),
    ({"name": "docs", "smoke_queries": ["   "]}, "smoke_queries.0: Value error, a query must have words"),
    ({"name": "docs", "eval": {"queries": [{"query": " ", "expect": ["a.md"]}]}}, "a query must have words"),
])
def test_blank_queries_and_names_that_cannot_work_are_refused(tmp_path, entry, message):
    """Defect: names ' ' and 'a\\nb', and blank smoke queries, passed `config check`."""
    config = tmp_path / "collections.yml"
    config.write_text(json.dumps({"collections": [dict(entry, source={"kind": "folder", "path": str(tmp_path)})]}))
    failed = ragpipe("config", "check", check=False, env={"RAGPIPE_COLLECTIONS": str(config)})
    assert failed.returncode == 1 and message in failed.stderr, failed.stderr


def test_a_single_document_can_be_ingested(tmp_path, name):
    """Defect: `ragpipe ingest notes.md` said the folder did not exist."""
    notes = tmp_path / "notes.md"
    notes.write_text("# Bicycle maintenance\n\nOil the chain every few hundred kilometres and check the brake pads.\n")
    (tmp_path / "other.md").write_text("# Other\n\nNot part of this collection.\n")
    summary = json.loads(ragpipe("ingest", str(notes), "-c", name, "--json").stdout)
    assert (summary["new"], summary["failed"]) == (1, 0)
    hits = json.loads(ragpipe("search", "chain oil", "-c", name, "--json").stdout)
    assert [h["source_id"] for h in hits] == ["notes.md"]
    assert json.loads(ragpipe("ingest", str(notes), "-c", name, "--json").stdout)["unchanged"] == 1


def test_a_search_with_no_results_says_so_and_json_is_an_empty_list(corpus, name):
    """Defect: `ragpipe search` with no results printed nothing and exited 0."""
    ragpipe("ingest", str(corpus), "-c", name)
    said = ragpipe("search", "zzqxv wvxqz", "-c", name, "--mode", "keyword")
    assert said.stdout.startswith("no results in") and "ragpipe status" in said.stdout and "--mode" in said.stdout
    assert json.loads(ragpipe("search", "zzqxv wvxqz", "-c", name, "--mode", "keyword", "--json").stdout) == []


def test_ingest_reports_progress_when_its_output_is_not_a_terminal(corpus, name):
    """Defect: 14 minutes of silence for 5,183 documents under cron, CI or a pipe."""
    result = ragpipe("ingest", str(corpus), "-c", name, "--json")
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"ingest {name}: ")]
    assert lines and lines[-1].startswith(f"ingest {name}: 30/30 documents (100%)"), result.stderr
    assert json.loads(result.stdout)["new"] == 30


def test_odd_values_are_refused_or_noted_in_one_short_line(sample, tmp_path):
    """Defects (#42.19): a non-string `language` was indexed in English with no note; a newline in one split its
    note in two; a 10 kB --language and a 10,000-character prompt were echoed whole; a long prompt said
    `chunk_tokens=-144 is too small` to a user who never set chunk_tokens; names `..` and `-x` were accepted."""
    from pipelines.config import ConfigError, parse_collection
    from pipelines.store.languages import language_of

    for value in (5, ["english"], {"a": 1}):
        language, note = language_of({"language": value}, "english", ["english", "german"])
        assert language == "english" and note and "is not a text" in note, (value, note)
    _, note = language_of({"language": "german\nERROR forged line " + "x" * 500}, "english", ["english"])
    assert "\n" not in note and len(note) < 300, note
    source = {"kind": "folder", "path": str(tmp_path)}
    for bad in ("..", "-x", ".hidden"):
        with pytest.raises(ConfigError, match="beginning with a letter"):
            parse_collection({"name": bad, "source": source}, where=bad, base=tmp_path)
    with pytest.raises(ConfigError) as err:
        parse_collection({"name": "p", "source": source, "prompts": {"document": "x" * 10_000}}, where="p",
                         base=tmp_path)
    assert len(str(err.value)) < 300, str(err.value)
    searched = ragpipe("search", "coffee", "-c", sample, "--language", "y" * 10_000, check=False)
    assert searched.returncode == 1 and len(searched.stderr) < 400, searched.stderr[:500]
    (tmp_path / "a.md").write_text("# A\n\nAlpha.")
    from pipelines.ingest import run_ingest

    long_prompt = parse_collection({"name": "long_prompt", "source": source, "prompts": {"document": "word " * 390}},
                                   where="long_prompt", base=tmp_path)
    with pytest.raises(ConfigError, match=r"the document prompt takes \d+ of the 256 tokens of each chunk \(the "
                                          r"model's limit\).*shorten prompts.document"):
        run_ingest(long_prompt)


def test_search_groups_chunks_by_document_unless_asked_for_chunks(sample):
    """Defect (#42.21): `ragpipe search` printed the same document two or three times in a top 3."""
    import re

    grouped = ragpipe("search", "coffee blood pressure", "-c", sample, "-k", "10").stdout
    raw = ragpipe("search", "coffee blood pressure", "-c", sample, "-k", "10", "--chunks").stdout
    chunks = json.loads(ragpipe("search", "coffee blood pressure", "-c", sample, "-k", "10", "--json").stdout)
    heads = [line for line in grouped.splitlines() if re.match(r"\d+\. \[", line)]
    ids = [re.search(r"\(([^()]+)\)(  \+\d+ more passages?)?$", h).group(1) for h in heads]
    assert len(ids) == len(set(ids)) == len({c["source_id"] for c in chunks}), grouped
    assert sum(int(m) for m in re.findall(r"\+(\d+) more passage", grouped)) == 10 - len(ids)
    assert len([line for line in raw.splitlines() if re.match(r"\d+\. \[", line)]) == 10
