"""Scale-out for real: Airflow 3 with CeleryExecutor, a real Redis server on loopback and two
`airflow celery worker` processes serving the `default` and `embed` queues (the commands of
docker-compose.yml's celery profile). A mapped ingest spreads over both workers; a worker killed
with kill -9 mid-batch costs a retry on the other one, never a chunk."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipelines.airflow.environment import airflow_environment
from pipelines.airflow.rest import AirflowAPI, RunFailed, wait_for, wait_for_runs
from pipelines.ingest import run_ingest
from pipelines.proctree import ProcessTree
from tests.conftest import CORPUS, ROOT, assert_same_chunks, chunk_state, folder_spec, free_port
from tests.conftest import EMBEDDINGS_KEY as KEY
from tools.synthetic import write_folder

pytestmark = pytest.mark.slow

WORKERS = ("worker-a", "worker-b")
AIRFLOW = str(Path(sys.executable).parent / "airflow")
WORKER_COMMAND = ["celery", "worker", "--queues", "default,embed"]
"""docker-compose.yml's airflow-worker runs the same (tests/test_compose.py checks)."""
DOCS_PER_BATCH = 10




@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """60 documents: the sample corpus (PDF, HTML, DOCX, Markdown, text) and 30 generated Markdown files."""
    root = tmp_path_factory.mktemp("distributed") / "docs"
    shutil.copytree(CORPUS, root / "corpus", ignore=shutil.ignore_patterns("records.jsonl"))
    write_folder(root / "generated", 30, seed=5)
    assert sum(1 for p in root.rglob("*") if p.is_file()) == 60
    return root


@pytest.fixture(scope="module")
def cluster(ragpipe_home: Path, db_url: str, folder: Path, tmp_path_factory, api_server):
    redis = shutil.which("redis-server")
    if not redis:
        pytest.fail("redis-server is not installed: run `make system-deps` (apt-get install redis-server)")
    base = tmp_path_factory.mktemp("celery")
    collections = base / "collections.yml"
    collections.write_text(yaml.safe_dump({"collections": [
        {"name": name, "source": {"kind": "folder", "path": str(folder)}, "schedule": None,
         "docs_per_batch": DOCS_PER_BATCH} for name in ("dist", "dist_kill")] + [
        {"name": "dist_api", "source": {"kind": "folder", "path": str(folder)}, "schedule": None,
         "docs_per_batch": DOCS_PER_BATCH, "model": "openai:minilm-celery", "chunk_tokens": 256,
         "embedder": {"base_url": api_server.base_url, "connection": "ragpipe_embeddings", "concurrency": 2}}]}))
    redis_port, api_port = free_port(), free_port()
    env = dict(os.environ, **airflow_environment(base / "airflow", metadata_db="airflow_celery"))
    env.update({
        # the settings of docker-compose.yml's celery profile, on loopback
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "RAGPIPE_EMBED_QUEUE": "embed",
        # what this test adds: a dead worker is noticed in seconds, not minutes
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.airflow_hostname.hostname",
        "PYTHONPATH": str(ROOT),
        "RAGPIPE_COLLECTIONS": str(collections),
        "AIRFLOW_CONN_RAGPIPE_EMBEDDINGS": f"generic://:{KEY}@",  # the workers' key for the API model
        "RAGPIPE_RETRIES": "2", "RAGPIPE_RETRY_DELAY": "2",
        "RAGPIPE_FAILPOINTS": "slow_batch_dist_kill",  # its batches take 20 s more: one is surely killed mid-way
    })
    logs = base / "logs"
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    tree = ProcessTree()
    try:
        tree.start("redis", [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], env, logs / "redis.log")
        for component in ("scheduler", "dag-processor", "api-server"):
            tree.start(component, [AIRFLOW, component], env, logs / f"{component}.log")
        for worker in WORKERS:
            tree.start(worker, [AIRFLOW, *WORKER_COMMAND, "--celery-hostname", f"{worker}@%h", "--concurrency", "2"],
                       dict(env, RAGPIPE_TEST_WORKER=worker,  # each worker serves its task logs on its own port
                            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port())), logs / f"{worker}.log")
        home = Path(env["AIRFLOW_HOME"])
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for("the API server", lambda: _healthy(api_port) and passwords.exists(), 300, 2)
        import json

        api = AirflowAPI(f"http://127.0.0.1:{api_port}", "admin", json.loads(passwords.read_text())["admin"])
        for worker in WORKERS:
            wait_for(f"celery {worker}", lambda w=worker: _ready(tree, w, logs / f"{w}.log"), 300, 2)
        wait_for("the DAGs", lambda: {"ragpipe_ingest_dist", "ragpipe_ingest_dist_kill", "ragpipe_ingest_dist_api"}
                 <= set(api.dags()), 300, 2)
        yield {"api": api, "tree": tree, "logs": home / "logs", "env": env}
    finally:
        left = tree.stop()
        assert not left, f"left running: {left}"


def _ready(tree: ProcessTree, worker: str, log: Path) -> bool:
    if tree.started[worker].poll() is not None:
        raise RunFailed(f"{worker} exited with {tree.started[worker].returncode}: {log.read_text()[-1500:]}")
    return " ready." in log.read_text()


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def batches(api: AirflowAPI, dag_id: str, run_id: str) -> list[dict]:
    return [ti for ti in api.task_instances(dag_id, run_id) if ti["task_id"] == "process_batch"]


def reference(folder: Path, name: str, conn) -> list[tuple]:
    run_ingest(folder_spec(f"{name}_ref", folder))
    return chunk_state(conn, f"{name}_ref")


def test_a_mapped_ingest_runs_on_both_workers_and_equals_a_cli_run(cluster, folder, conn):
    api = cluster["api"]
    run_id = api.trigger("ragpipe_ingest_dist", "distributed")
    wait_for_runs(api, {"ragpipe_ingest_dist": run_id}, cluster["logs"], 900, 600, settle_s=0)
    tis = batches(api, "ragpipe_ingest_dist", run_id)
    assert len(tis) == 60 // DOCS_PER_BATCH and all(ti["state"] == "success" for ti in tis)
    assert {ti["hostname"] for ti in tis} == set(WORKERS), "the batches ran on both workers"
    assert_same_chunks(chunk_state(conn, "dist"), reference(folder, "dist", conn))


def test_a_worker_killed_mid_batch_is_retried_on_the_other_worker(cluster, folder, conn):
    api, tree = cluster["api"], cluster["tree"]
    run_id = api.trigger("ragpipe_ingest_dist_kill", "killed-worker")
    victim = WORKERS[0]

    def on_victim() -> list[int]:
        return [ti["map_index"] for ti in batches(api, "ragpipe_ingest_dist_kill", run_id)
                if ti["state"] == "running" and ti["hostname"] == victim]

    wait_for(f"a batch running on {victim}", on_victim, 600, 1)
    time.sleep(3)  # into the batch's work (it holds the collection's lock and sleeps 20 s)
    interrupted = on_victim()
    assert interrupted
    killed = tree.session(victim)
    assert len(killed) >= 3, "the worker, its pool processes and the running task"
    for proc in killed:  # the worker and its task processes, as if its machine died
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(killed, timeout=10)
    try:
        wait_for_runs(api, {"ragpipe_ingest_dist_kill": run_id}, cluster["logs"], 900, 600, settle_s=0,
                      retries_allowed=True)
    except RunFailed as exc:
        pytest.fail(str(exc))
    tis = batches(api, "ragpipe_ingest_dist_kill", run_id)
    retried = [ti for ti in tis if ti["map_index"] in interrupted]
    assert all(ti["try_number"] > 1 and ti["hostname"] == WORKERS[1] for ti in retried), [
        (ti["map_index"], ti["try_number"], ti["hostname"], ti["state"]) for ti in tis]
    assert all(ti["state"] == "success" for ti in tis)
    assert_same_chunks(chunk_state(conn, "dist_kill"), reference(folder, "dist_kill", conn))
    running = conn.execute("SELECT count(*) FROM ragpipe.ingest_runs r JOIN ragpipe.collections k "
                           "ON k.id = r.collection_id WHERE k.name = 'dist_kill' AND r.status = 'running'").fetchone()
    assert running == (0,)


def test_celery_workers_embed_through_an_api_model_with_the_key_of_an_airflow_connection(cluster, folder, conn,
                                                                                        api_server):
    api = cluster["api"]
    run_id = api.trigger("ragpipe_ingest_dist_api", "distributed-api")
    wait_for_runs(api, {"ragpipe_ingest_dist_api": run_id}, cluster["logs"], 900, 600, settle_s=0)
    assert all(ti["state"] == "success" for ti in batches(api, "ragpipe_ingest_dist_api", run_id))
    assert f"Bearer {KEY}" in api_server.seen.authorization
    assert_same_chunks(chunk_state(conn, "dist_api"), reference(folder, "dist_api", conn))
    logs = "".join(p.read_text(errors="replace") for p in cluster["logs"].rglob("*.log"))
    assert KEY not in logs
