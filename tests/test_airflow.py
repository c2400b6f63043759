"""The DAGs under real Airflow (`dag.test()`), on the embedded PostgreSQL, with the real model."""

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from pipelines import store
from pipelines.config import parse_collection
from pipelines.ingest import run_ingest
from pipelines.store.database import connect
from tests.conftest import ROOT, assert_same_chunks, chunk_state, hnsw_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def airflow(ragpipe_home: Path, db_url: str, tmp_path_factory):
    from pipelines.airflow.environment import airflow_environment

    env = airflow_environment(tmp_path_factory.mktemp("airflow"))
    env.update(RAGPIPE_RETRY_DELAY="1", RAGPIPE_RETRIES="2")
    os.environ.update(env)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env=os.environ)
    yield env
    from airflow import settings

    settings.dispose_orm()  # before the session's database stops


def write_collections(corpus: Path, name: str, **extra) -> None:
    entry = {"name": name, "source": {"kind": "folder", "path": str(corpus)}, "schedule": None,
             "docs_per_batch": 8, **extra}
    Path(os.environ["RAGPIPE_COLLECTIONS"]).write_text(yaml.safe_dump({"collections": [entry]}))


def get_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def run_dag(name: str, **conf):
    dag = get_dag(f"ragpipe_ingest_{name}")
    return dag.test(run_conf=conf or None)


def last_run(conn, name: str) -> dict:
    from psycopg.rows import dict_row

    return conn.cursor(row_factory=dict_row).execute(
        "SELECT r.* FROM ragpipe.ingest_runs r JOIN ragpipe.collections k ON k.id = r.collection_id "
        "WHERE k.name = %s ORDER BY r.id DESC LIMIT 1", (name,)).fetchone()




def mapped_count(dag_run) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                                                     task_id="process_batch", state="success").count()


def test_dags_import_cleanly_without_heavy_imports(airflow, corpus, name):
    write_collections(corpus, name, smoke_queries=["coffee"])
    code = ("import sys; from airflow.dag_processing.dagbag import DagBag; "
            f"b = DagBag(dag_folder={str(ROOT / 'dags')!r}); assert not b.import_errors, b.import_errors; "
            "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy; print(sorted(b.dags))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ragpipe_ingest_{name}" in out.stdout and f"ragpipe_smoke_check_{name}" in out.stdout
    from airflow.dag_processing.dagbag import DagBag

    for dag in DagBag(dag_folder=str(ROOT / "dags")).dags.values():
        assert dag.tags and dag.max_active_runs == 1 and dag.catchup is False
        for t in dag.tasks:
            assert t.owner == "ragpipe"
            assert t.retries >= 1 or dag.dag_id.startswith("ragpipe_smoke_check")


def test_config_errors_name_the_collection_and_key(airflow, corpus):
    Path(os.environ["RAGPIPE_COLLECTIONS"]).write_text(yaml.safe_dump({"collections": [
        {"name": "broken", "source": {"kind": "folder", "path": str(corpus)}, "schedule": "every tuesday"}]}))
    from airflow.dag_processing.dagbag import DagBag

    errors = DagBag(dag_folder=str(ROOT / "dags")).import_errors
    assert any("collection 'broken'" in e and "schedule" in e for e in errors.values()), errors
    out = subprocess.run([str(Path(sys.executable).parent / "ragpipe"), "config", "check"], capture_output=True,
                         text=True, env=os.environ, check=False)
    assert out.returncode == 1 and "collection 'broken'" in out.stderr and "schedule" in out.stderr
    assert "Traceback" not in out.stderr
    message = out.stderr.strip().removeprefix("Error: ")
    assert any(message in e for e in errors.values()), "the DAG import error shows the same message"


def test_dag_runs_are_incremental(airflow, corpus, name, conn):
    write_collections(corpus, name)
    first = run_dag(name)
    assert first.state == "success"
    run = last_run(conn, name)
    assert (run["status"], run["new"], run["failed"]) == ("succeeded", 30, 0)
    assert mapped_count(first) == math.ceil(30 / 8)
    coll = store.get_collection(conn, name)
    assert conn.execute("SELECT to_regclass(%s)", (hnsw_index(conn, coll.id),)).fetchone()[0]

    second = run_dag(name)
    assert second.state == "success" and mapped_count(second) == 0
    run = last_run(conn, name)
    assert (run["new"], run["changed"], run["chunks_embedded"], run["unchanged"]) == (0, 0, 0, 30)

    edited = next(corpus.glob("salt/*.md"))
    edited.write_text(edited.read_text() + "\n\nSodium reduction in processed chicken is discussed.\n")
    gone = next(corpus.glob("sleep/*.txt"))
    gone.unlink()
    third = run_dag(name)
    run = last_run(conn, name)
    assert third.state == "success" and mapped_count(third) == 1
    assert (run["changed"], run["deleted"], run["new"]) == (1, 1, 0) and 0 < run["chunks_embedded"] <= 2
    ids = {r[0] for r in chunk_state(conn, name)}
    assert gone.relative_to(corpus).as_posix() not in ids and len(ids) == 29


def test_params_dry_run_limit_full_refresh(airflow, corpus, name, conn):
    write_collections(corpus, name)
    dry = run_dag(name, dry_run=True)
    assert dry.state == "success"
    assert last_run(conn, name) is None and chunk_state(conn, name) == [], "a dry run writes nothing"
    limited = run_dag(name, limit=5)
    assert limited.state == "success" and last_run(conn, name)["new"] == 5
    assert len({r[0] for r in chunk_state(conn, name)}) == 5
    run_dag(name)
    before = chunk_state(conn, name)
    full = run_dag(name, full_refresh=True)
    run = last_run(conn, name)
    assert full.state == "success" and run["changed"] == 30 and run["chunks_embedded"] == len(before)
    assert_same_chunks(chunk_state(conn, name), before)


def task_states(dag_run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.state for ti in session.query(TaskInstance).filter_by(
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, map_index=-1)}


def test_a_chunking_change_is_built_by_the_build_version_group(airflow, corpus, name, conn):
    write_collections(corpus, name, chunk_tokens=128)
    plain = run_dag(name)
    assert plain.state == "success" and task_states(plain)["build_version.finalize"] == "skipped"
    write_collections(corpus, name, chunk_tokens=96)
    manual = run_dag(name, promote="manual")
    assert manual.state == "success" and task_states(manual)["build_version.finalize"] == "success"
    assert store.get_collection(conn, name).chunk_tokens == 128, "manual: the active version still serves"
    assert store.get_collection(conn, f"{name}@v2").state == "ready"
    auto = run_dag(name)
    assert auto.state == "success"
    active = store.get_collection(conn, name)
    assert (active.version, active.chunk_tokens) == (2, 96), "promoted"
    assert last_run(conn, name)["unchanged"] == 30, "the finished build was not redone"


@pytest.mark.parametrize("fault", ["batch_after_commit", "load_before_commit"])
def test_batch_that_dies_halfway_is_retried_to_a_clean_result(airflow, corpus, name, conn, tmp_path, fault):
    reference = parse_collection({"name": f"{name}_ref", "source": {"kind": "folder", "path": str(corpus)}},
                                 where=name, base=corpus)
    run_ingest(reference)
    write_collections(corpus, name, docs_per_batch=30)  # one batch of 30: two commits of 16 + 14
    os.environ.update(RAGPIPE_FAILPOINTS=fault, RAGPIPE_FAILPOINT_DIR=str(tmp_path / "faults"))
    try:
        dag_run = run_dag(name)
    finally:
        os.environ.pop("RAGPIPE_FAILPOINTS")
    assert (tmp_path / "faults" / f"{fault}.fired").exists(), "the fault was injected"
    assert dag_run.state == "success"
    # exactly the chunks of a clean run: no duplicates, nothing missing
    assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_ref"))
    run = last_run(conn, name)
    assert (run["status"], run["new"], run["unchanged"]) == ("succeeded", 30, 0), "counted once, not per attempt"


def test_a_batch_stuck_in_a_parser_is_stopped_by_its_timeout_and_retried(airflow, corpus, name, conn, tmp_path):
    """A parser that never returns (the worker's own limit set far away) is ended by the batch
    task's execution_timeout; the retry finishes the batch and the run equals a clean one."""
    from pipelines.extract.worker import stop_workers

    reference = parse_collection({"name": f"{name}_ref", "source": {"kind": "folder", "path": str(corpus)}},
                                 where=name, base=corpus)
    run_ingest(reference)
    write_collections(corpus, name, docs_per_batch=40)
    env = {"RAGPIPE_FAILPOINTS": "parser_hang", "RAGPIPE_FAILPOINT_DIR": str(tmp_path / "faults"),
           "RAGPIPE_BATCH_TIMEOUT": "20", "RAGPIPE_EXTRACT_TIMEOUT": "900"}
    os.environ.update(env)
    stop_workers()  # the next worker starts with the failpoint in its environment
    try:
        dag_run = run_dag(name)
    finally:
        for key in env:
            os.environ.pop(key)
        stop_workers()
    assert (tmp_path / "faults" / "parser_hang.fired").exists(), "a parser hung"
    assert dag_run.state == "success"
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tries = [ti.try_number for ti in session.query(TaskInstance).filter_by(
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id="process_batch")]
    assert tries == [2], "the one batch timed out once and its retry succeeded"
    assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_ref"))


def test_a_writer_holding_the_collection_makes_others_wait_or_fail_clearly(airflow, corpus, name, db_url):
    write_collections(corpus, name)
    os.environ["RAGPIPE_LOCK_TIMEOUT"] = "1"
    try:
        with connect(db_url, autocommit=True) as holder, store.collection_lock(holder, name, 5):
            cli = subprocess.run([str(Path(sys.executable).parent / "ragpipe"), "ingest", "-c", name],
                                 capture_output=True, text=True, env=os.environ, check=False)
            assert cli.returncode == 1 and "being written by another run" in cli.stderr
            blocked = run_dag(name)
            assert blocked.state == "failed"
        assert run_dag(name).state == "success"
    finally:
        os.environ["RAGPIPE_LOCK_TIMEOUT"] = "20"


def test_two_concurrent_ingests_never_interleave(airflow, corpus, name, conn):
    write_collections(corpus, name)
    cmd = [str(Path(sys.executable).parent / "ragpipe"), "ingest", "-c", name, "--full-refresh", "--json"]
    results = []

    def ingest() -> None:
        results.append(subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=False))

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    runs = conn.execute(
        "SELECT r.started_at, r.finished_at FROM ragpipe.ingest_runs r JOIN ragpipe.collections k "
        "ON k.id = r.collection_id WHERE k.name = %s ORDER BY r.started_at", (name,)).fetchall()
    assert len(runs) == 2 and runs[0][1] <= runs[1][0], "the second run started after the first finished"
    assert len(chunk_state(conn, name)) == len({(r[0], r[1]) for r in chunk_state(conn, name)})


def test_vector_database_comes_from_the_airflow_connection(airflow, corpus, name, db_url):
    import psycopg

    params = psycopg.conninfo.conninfo_to_dict(db_url)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS vectors_via_connection")
        admin.execute("CREATE DATABASE vectors_via_connection")
    write_collections(corpus, name)
    os.environ["AIRFLOW_CONN_RAGPIPE_DB"] = json.dumps({
        "conn_type": "postgres", "host": params["host"], "login": params.get("user", "postgres"),
        "schema": "vectors_via_connection"})
    try:
        assert run_dag(name).state == "success"
    finally:
        del os.environ["AIRFLOW_CONN_RAGPIPE_DB"]
    other = psycopg.conninfo.make_conninfo(db_url, dbname="vectors_via_connection")
    with connect(other) as conn:
        assert last_run(conn, name)["new"] == 30
    with connect(db_url) as conn:
        assert store.get_collection(conn, name) is None, "nothing went to the default database"


@pytest.mark.parametrize("kind", ["s3", "web", "sql"])
def test_dags_for_every_source_kind(airflow, kind, request, name, conn, db_url):
    if kind == "s3":
        endpoint, client = request.getfixturevalue("s3")
        for i in range(3):
            client.put_object(Bucket="docs", Key=f"dag/{i}.md", Body=f"# Note {i}\n\nAbout owls, number {i}.".encode())
        source = {"kind": "s3", "path": "s3://docs/dag", "endpoint_url": endpoint}
    elif kind == "web":
        base = request.getfixturevalue("site")
        source = {"kind": "web", "sitemap": f"{base}/sitemap.xml", "url_prefix": f"{base}/docs/",
                  "allow_private_networks": True}
    else:
        request.getfixturevalue("app_table")
        source = {"kind": "sql", "url": db_url, "text_column": "body", "title_column": "headline",
                  "updated_at_column": "updated_at", "query": "SELECT * FROM app.articles"}
    Path(os.environ["RAGPIPE_COLLECTIONS"]).write_text(yaml.safe_dump({"collections": [
        {"name": name, "source": source, "schedule": "@hourly", "docs_per_batch": 2}]}))
    assert run_dag(name).state == "success"
    assert (last_run(conn, name)["new"], last_run(conn, name)["failed"]) == (3, 0)
    again = run_dag(name)
    assert again.state == "success" and last_run(conn, name)["chunks_embedded"] == 0


def test_airflow_task_killed_with_sigkill_then_rerun_equals_a_clean_run(airflow, name, conn, tmp_path):
    """kill -9 the process running the DAG's tasks mid-batch, twice; the next DAG run repairs everything."""
    import random
    import signal
    import time

    from tools.synthetic import write_folder

    folder = write_folder(tmp_path / "docs", 120, seed=21)
    write_collections(folder, name, docs_per_batch=10)
    run_ingest(parse_collection({"name": f"{name}_ref", "source": {"kind": "folder", "path": str(folder)}},
                                where=name, base=folder))
    code = f"from tests.test_airflow import run_dag; run_dag({name!r})"
    rng = random.Random(5)
    for target in (rng.randint(1, 50), rng.randint(50, 110)):
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=os.environ,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and len(
                {r[0] for r in chunk_state(conn, name)}) < target:
            time.sleep(0.1)
        assert proc.poll() is None, "the DAG run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 0 < len({r[0] for r in chunk_state(conn, name)}) < 120, "killed partway"
    assert run_dag(name).state == "success"
    assert_same_chunks(chunk_state(conn, name), chunk_state(conn, f"{name}_ref"))
    stuck = conn.execute("SELECT count(*) FROM ragpipe.ingest_runs r JOIN ragpipe.collections k "
                         "ON k.id = r.collection_id WHERE k.name = %s AND status = 'running'", (name,)).fetchone()
    assert stuck[0] == 0, "the killed runs are closed as abandoned"


def test_an_api_model_under_airflow_takes_its_key_from_an_airflow_connection(airflow, corpus, name, conn,
                                                                               api_server, monkeypatch):
    """A DAG run embeds through the OpenAI-compatible endpoint; the key is the password of the
    Airflow connection ragpipe_embeddings (AIRFLOW_CONN_RAGPIPE_EMBEDDINGS), never in the task log."""
    from tests.conftest import EMBEDDINGS_KEY as KEY
    from tests.test_embedders import QUESTION
    from tools.embeddings_server import Faults, Seen

    api_server.faults, api_server.seen = Faults(), Seen()
    monkeypatch.setenv("AIRFLOW_CONN_RAGPIPE_EMBEDDINGS", json.dumps({"conn_type": "generic", "password": KEY}))
    write_collections(corpus, name, model="openai:minilm-airflow", chunk_tokens=256,
                      embedder={"base_url": api_server.base_url, "connection": "ragpipe_embeddings"})
    assert run_dag(name).state == "success"
    run = last_run(conn, name)
    assert (run["status"], run["new"], run["failed"]) == ("succeeded", 30, 0)
    assert api_server.seen.authorization == {f"Bearer {KEY}"} and api_server.seen.texts >= run["chunks_embedded"] > 0
    from pipelines.search import search

    assert [h.source_id for h in search(QUESTION, name, k=3, mode="semantic")][0].startswith("coffee/")
    logs = "".join(p.read_text(errors="replace") for p in Path(airflow["AIRFLOW_HOME"]).rglob("*.log"))
    assert KEY not in logs


def test_a_watched_collection_is_scheduled_by_its_source_asset_watcher(airflow, corpus, name, conn):
    """`watch:` gives the DAG an Asset whose AssetWatcher's trigger (run here as the triggerer runs
    it) fires once per burst of changes; the cron schedule stays beside it."""
    import asyncio

    from airflow.sdk import AssetOrTimeSchedule

    from pipelines.airflow.triggers import SourceChangeTrigger

    def assets(dag) -> list:
        condition = dag.timetable.asset_condition
        return list(getattr(condition, "objects", [condition]))

    write_collections(corpus, name, schedule="@daily", watch={"debounce_s": 0.5})
    dag = get_dag(f"ragpipe_ingest_{name}")
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    [asset] = assets(dag)
    [watcher] = asset.watchers
    assert asset.name == f"ragpipe_source_{name}" and isinstance(watcher.trigger, SourceChangeTrigger)
    path, kwargs = watcher.trigger.serialize()
    trigger = SourceChangeTrigger(**kwargs)  # as the triggerer rebuilds it
    assert path == "pipelines.airflow.triggers.SourceChangeTrigger"

    async def events(count: int, write: int) -> list:
        stream = trigger.run()
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(1.5)  # the watch is set up
        for i in range(write):
            (corpus / f"burst-{count}-{i}.md").write_text(f"# Burst {i}\n\nFile {i} of a burst.")
        got = [await asyncio.wait_for(first, 30)]
        try:
            got.append(await asyncio.wait_for(anext(stream), 3))
        except TimeoutError:
            pass
        await stream.aclose()
        return got

    got = asyncio.run(events(1, 50))
    assert len(got) == 1, f"a burst of 50 writes is one event: {[e.payload for e in got]}"
    assert got[0].payload["collection"] == name and got[0].payload["changes"] >= 1
    write_collections(corpus, name, watch={"debounce_s": 0.5})
    assert [a.name for a in assets(get_dag(f"ragpipe_ingest_{name}"))] == [f"ragpipe_source_{name}"], \
        "without a schedule the DAG runs on its source's changes only"


def test_each_task_emits_openlineage_with_the_source_the_chunk_table_and_the_counts(airflow, corpus, name, conn,
                                                                                       tmp_path):
    """`airflow dags test` with the OpenLineage transport set to a loopback receiver (in its own
    process: Airflow reads that setting once a process): START and COMPLETE per task, the folder in,
    the collection's chunk partition out, the run's counts; the plan's first try fails (an injected
    fault) and emits FAIL, its retry COMPLETE."""
    from tools.lineage_receiver import LineageReceiver, wait_for_events

    write_collections(corpus, name)
    dag_id, batches = f"ragpipe_ingest_{name}", math.ceil(30 / 8)
    with LineageReceiver() as lineage:
        out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "test", dag_id],
                             capture_output=True, text=True, timeout=600, check=False, env=dict(
                                 os.environ, AIRFLOW__OPENLINEAGE__TRANSPORT=lineage.transport,
                                 AIRFLOW__OPENLINEAGE__NAMESPACE="ragpipe-test", RAGPIPE_FAILPOINTS=f"plan_{name}",
                                 RAGPIPE_FAILPOINT_DIR=str(tmp_path / "faults")))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        expected = {(f"{dag_id}.plan", "START"): 2, (f"{dag_id}.plan", "FAIL"): 1,
                    (f"{dag_id}.plan", "COMPLETE"): 1, (f"{dag_id}.process_batch", "START"): batches,
                    (f"{dag_id}.process_batch", "COMPLETE"): batches, (f"{dag_id}.finalize", "START"): 1,
                    (f"{dag_id}.finalize", "COMPLETE"): 1}
        events = wait_for_events(lineage, dag_id, None, expected)
    run = last_run(conn, name)
    coll = store.get_collection(conn, name)
    assert run["status"] == "succeeded"
    [failed] = [e for e in events if e["eventType"] == "FAIL"]
    assert "injected fault" in failed["run"]["facets"]["errorMessage"]["message"]
    assert failed["inputs"][0]["name"] == str(corpus), "a failed task still names its source"
    complete = {e["job"]["name"].removeprefix(f"{dag_id}."): e for e in events if e["eventType"] == "COMPLETE"}
    [source] = complete["finalize"]["inputs"]
    assert source["namespace"].startswith("file://") and source["name"] == str(corpus)
    [chunks] = complete["finalize"]["outputs"]
    assert chunks["namespace"].startswith("postgres://") and chunks["name"].endswith(f".ragpipe.chunks_c{coll.id}")
    written = run["chunks_embedded"] + run["chunks_reused"]  # earlier tests' chunks of the same texts are reused
    assert chunks["outputFacets"]["outputStatistics"]["rowCount"] == written > 0
    facet = complete["finalize"]["run"]["facets"]["ragpipe"]
    assert (facet["collection"], facet["ingest_run"]) == (name, run["id"])
    assert facet["_schemaURL"].endswith("#the-ragpipe-run-facet")
    assert facet["counts"] == {k: run[k] for k in facet["counts"]} and facet["counts"]["new"] == 30
    assert complete["plan"]["run"]["facets"]["ragpipe"]["counts"]["listed"] == 30
    done = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".process_batch")]
    assert sum(e["run"]["facets"]["ragpipe"]["counts"]["new"] for e in done) == 30
    assert sum(e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] for e in done) == written
