"""`make run` and `make smoke`: standalone Airflow 3 (scheduler, dag-processor, api-server,
triggerer; LocalExecutor) on the embedded PostgreSQL, with the servers behind the sample collections.

    python -m tools.standalone run     # trigger every sample DAG, print a search, run until Ctrl-C
    python -m tools.standalone smoke   # the same, then stop; exit 0 only if every run succeeded
                                           # and no process it started is left
    FRESHNESS_OUT=f.json python -m tools.standalone freshness   # FRESHNESS_PROBES (10) changes of
                                           # each watched sample source, their seconds to f.json (make bench)

Both stop everything they started (checked by pid) on Ctrl-C, on SIGTERM and on their own failure.
"""

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.airflow import SEARCH_URL_PREFIX as URL_PREFIX
from pipelines.airflow.environment import airflow_environment
from pipelines.airflow.rest import AirflowAPI, RunFailed, wait_for, wait_for_runs
from pipelines.proctree import ProcessTree
from pipelines.settings import load_settings
from pipelines.store.connection import open_database
from pipelines.store.database import database_url

SAMPLE_DAGS = tuple(f"ragpipe_ingest_{name}" for name in
                    ("sample", "sample_records", "sample_s3", "sample_gcs", "sample_azure", "sample_web", "sample_sql"))
NEEDS_AZURITE = "ragpipe_ingest_sample_azure"
ASSET_TRIGGERED = ("ragpipe_smoke_check_sample",)
"""Runs the scheduler starts when an ingest run updates its Asset; smoke waits for them too."""
START_TIMEOUT_S = 300
RUNS_TIMEOUT_S = 420
TASK_LIMIT_S = 240
"""smoke fails when one task runs longer than this (the DAGs' own execution_timeout is longer)."""
FRESHNESS_TIMEOUT_S = 120
SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus"
"""The sample collection's folder, which it watches (collections.yml)."""
PLUGIN_TIMEOUT_S = 120
"""The search plugin's first request loads the model in the API server."""


def say(text: str) -> None:
    print(text, flush=True)


def airflow_bin(name: str = "airflow") -> str:
    return str(Path(sys.executable).parent / name)


def api_healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_ports(ports: dict[str, int]) -> None:
    busy = [f"{what} port {port}" for what, port in ports.items() if port_in_use(port)]
    if busy:
        raise RunFailed(f"{', '.join(busy)} already in use: is `make run` or `make smoke` running? "
                        "Stop it, or set AIRFLOW__API__PORT for another Airflow port")


def start_sample_servers(log_path: Path, tree: ProcessTree) -> tuple[dict[str, str], bool]:
    """The object stores and web server of the sample collections, their access logs sent to log_path
    (Azurite as a process of `tree`); the environment they need, and whether Azurite runs."""
    handler = logging.FileHandler(log_path)
    for name in ("werkzeug", "moto", "gcp_storage_emulator"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
    from tools.samples import start_all

    env, azurite = start_all(database_url(), lambda argv: tree.start("azurite", argv, dict(os.environ), log_path))
    return env, azurite is not None


def login(home: Path) -> tuple[str, str]:
    """The admin user and password that standalone Airflow generated."""
    passwords = home / "simple_auth_manager_passwords.json.generated"
    wait_for(f"{passwords.name}", passwords.exists, 60)
    return next(iter(json.loads(passwords.read_text()).items()))


def wait_for_dags(api: AirflowAPI) -> None:
    def parsed() -> bool:
        errors = api.import_errors()
        if errors:
            raise RunFailed(f"DAG import error in {errors[0]['filename']}: {errors[0]['stack_trace'][-800:]}")
        dags = api.dags()
        return all(d in dags and not dags[d]["is_paused"] for d in SAMPLE_DAGS)

    wait_for("the sample DAGs to be parsed", parsed, START_TIMEOUT_S, every_s=2)


def check_search_plugin(api: AirflowAPI, port: int) -> None:
    """The search service answers inside Airflow (the plugin's app on the API server) with results,
    and the UI lists its "Search" view."""
    import httpx

    views = [v for p in api.get("/plugins")["plugins"] if p["name"] == "ragpipe" for v in p["external_views"]]
    if [v["href"] for v in views] != [f"{URL_PREFIX}/"]:
        raise RunFailed(f"Airflow did not load the ragpipe plugin's Search view (got {views})")

    base = f"http://127.0.0.1:{port}{URL_PREFIX}"
    try:
        found = httpx.get(f"{base}/api/search", params={"collection": "sample", "q": "coffee and blood vessels",
                                                         "k": 3}, timeout=PLUGIN_TIMEOUT_S)
        page = httpx.get(f"{base}/", params={"collection": "sample", "q": "coffee"}, timeout=PLUGIN_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise RunFailed(f"the search plugin at {base} did not answer: {exc}") from None
    if found.status_code != 200 or not found.json()["results"] or page.status_code != 200 \
            or 'id="results"' not in page.text:
        raise RunFailed(f"the search plugin at {base} answered HTTP {found.status_code}/{page.status_code}: "
                        f"{found.text[:300]}")
    say(f"search plugin: {len(found.json()['results'])} results from {base}/api/search "
        f"in {found.json()['took_ms']} ms")
    tools = mcp_tools(f"{base}/mcp")
    say(f"MCP under the plugin: {base}/mcp answers ({', '.join(tools)})")


def mcp_tools(url: str) -> list[str]:
    """The tool names an MCP client (the SDK's) gets from url, or RunFailed."""
    import asyncio

    from mcp import Client

    async def listed() -> list[str]:
        async with Client(url) as client:
            return sorted(t.name for t in (await client.list_tools()).tools)

    try:
        return asyncio.run(asyncio.wait_for(listed(), PLUGIN_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - any failure of the check is the run's failure
        raise RunFailed(f"the MCP endpoint {url} did not answer: {type(exc).__name__}: {exc}") from None


FAILING_ONCE = "sample_web"
"""In `make smoke`, this sample's plan fails at its first try (an injected fault): lineage's FAIL."""
SOURCE_NAMESPACES = {"sample": "file://", "sample_records": "file://", "sample_s3": "s3://ragpipe-sample",
                     "sample_gcs": "gs://ragpipe-sample", "sample_azure": "wasbs://ragpipe-sample",
                     "sample_web": "http://127.0.0.1:8765", "sample_sql": "postgres://"}


def check_lineage(api: AirflowAPI, receiver: Any, triggered: dict[str, str], home: Path) -> None:
    """Each task of each triggered sample run sent START and COMPLETE to the OpenLineage receiver,
    naming the source and the collection's chunk table, with the counts of its ingest_runs row
    (every event received is kept in lineage-events.jsonl)."""
    import psycopg
    from psycopg.rows import dict_row

    from pipelines.ingest import RUN_COUNTS
    from tools.lineage_receiver import wait_for_events

    with psycopg.connect(database_url(), autocommit=True, row_factory=dict_row) as conn:
        for dag_id, run_id in triggered.items():
            name = dag_id.removeprefix("ragpipe_ingest_")
            batches = sum(ti["task_id"] == "process_batch" and ti["state"] == "success"
                          for ti in api.task_instances(dag_id, run_id))
            expected = {(f"{dag_id}.{task}", kind): n for task, n in
                        (("plan", 1), ("process_batch", batches), ("finalize", 1)) for kind in ("START", "COMPLETE")}
            if name == FAILING_ONCE:
                expected.update({(f"{dag_id}.plan", "START"): 2, (f"{dag_id}.plan", "FAIL"): 1})
            try:
                events = wait_for_events(receiver, dag_id, run_id, expected, timeout_s=60)
            except TimeoutError as exc:
                raise RunFailed(str(exc)) from None
            if name == FAILING_ONCE:
                failed = next(e for e in events if e["eventType"] == "FAIL")
                if "injected fault" not in json.dumps(failed["run"]["facets"].get("errorMessage")):
                    raise RunFailed(f"lineage of {dag_id}: the FAIL event lacks the error: {json.dumps(failed)[:1500]}")
            [done] = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"{dag_id}.finalize"]
            facet = done["run"]["facets"]["ragpipe"]
            row = conn.execute("SELECT r.*, ragpipe.chunk_partition(r.collection_id) AS chunks "
                               "FROM ragpipe.ingest_runs r WHERE r.id = %s", (facet["ingest_run"],)).fetchone()
            sources = [i["namespace"] for i in done["inputs"]]
            outputs = [o["name"].rsplit(".", 2)[-2:] for o in done["outputs"]]
            if (not row or facet["counts"] != {k: row[k] for k in RUN_COUNTS} or outputs != [["ragpipe", row["chunks"]]]
                    or not sources or not all(ns.startswith(SOURCE_NAMESPACES[name]) for ns in sources)):
                raise RunFailed(f"lineage of {dag_id}: finalize's COMPLETE event does not match run "
                                f"{facet['ingest_run']} ({row}): {json.dumps(done)[:1500]}")
    received = home / "lineage-events.jsonl"
    received.write_text("".join(json.dumps(e) + "\n" for e in receiver.events))
    say(f"OpenLineage: {len(receiver.events)} events received ({received}); every task of the "
        f"{len(triggered)} sample runs sent START and COMPLETE with its source, its chunk table and its run's counts; "
        f"the failed try of {FAILING_ONCE}'s plan sent FAIL")


def check_freshness(api: AirflowAPI, home: Path, probes: int = 1) -> dict[str, dict[str, list[float]]]:
    """A change to each watched sample source (a file written into examples/corpus, a row of
    samples.articles, an object of the sample bucket) is found by search without a manual trigger
    (the AssetWatcher's event schedules the DAG), and is gone after it is deleted; `probes` times
    each. Returns the seconds of each: {kind: {"add": [...], "delete": [...]}}."""
    import boto3
    import psycopg

    from tools.freshness import file_probe, object_probe, row_probe
    from tools.samples import S3_PORT

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}")
    seconds: dict[str, dict[str, list[float]]] = {}
    with psycopg.connect(database_url(), autocommit=True) as conn:
        probe_of = {"folder": lambda: file_probe(SAMPLE_CORPUS, "sample", FRESHNESS_TIMEOUT_S),
                    "sql table": lambda: row_probe(conn, "samples.articles", "sample_sql", "freshness-probe",
                                                   FRESHNESS_TIMEOUT_S),
                    "S3 bucket": lambda: object_probe(s3, "ragpipe-sample", "kb", "sample_s3", FRESHNESS_TIMEOUT_S)}
        for kind, probe in probe_of.items():
            for _ in range(probes):
                try:
                    added, removed = probe()
                except TimeoutError as exc:
                    raise RunFailed(f"freshness of the watched {kind}: {exc} (see the triggerer in "
                                    f"{home / 'standalone.log'})") from None
                seconds.setdefault(kind, {"add": [], "delete": []})
                seconds[kind]["add"].append(added)
                seconds[kind]["delete"].append(removed)
                say(f"freshness under Airflow (watched {kind}): a new document searchable after {added:.1f} s, "
                    f"a deleted one gone after {removed:.1f} s")
    wait_for_runs(api, {}, home / "logs", RUNS_TIMEOUT_S, TASK_LIMIT_S, report=lambda _: None)
    return seconds


BURST_DAGS = {"folder": "sample", "S3 bucket": "sample_s3", "sql table": "sample_sql"}
"""The watched sample collections make smoke sends a burst of changes to, all at once."""


def check_bursts(api: AirflowAPI, home: Path, changes: int = 200) -> None:
    """A burst of `changes` new documents in each watched sample source at once (files in a new
    folder, objects under a new prefix, rows, each its own write and so its own event): a few DAG
    runs each (the watchers coalesce), every document searchable and indexed once; then all of them
    removed, and every one gone."""
    import shutil
    import uuid

    import boto3
    import psycopg

    from tools.samples import S3_PORT

    tag = uuid.uuid4().hex[:8]
    folder = SAMPLE_CORPUS / f"freshness-burst-{tag}"
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}")
    body = "# Note {i}\n\nBurst{tag}n{i:03d} is note {i} of a burst.\n"
    ids = {"folder": f"{folder.name}/%", "S3 bucket": f"burst-{tag}/%", "sql table": f"burst-{tag}-%"}
    count = ("SELECT count(DISTINCT d.id), count(c.id) FROM ragpipe.documents d JOIN ragpipe.collections k "
             "ON k.id = d.collection_id AND k.name = %s AND k.state = 'active' "
             "LEFT JOIN ragpipe.chunks c ON c.document_id = d.id WHERE d.source_id LIKE %s")

    def watched_runs() -> dict[str, int]:
        runs = [r["dag_id"] for r in api.dag_runs() if r.get("run_type") == "asset_triggered"]
        return {kind: runs.count(f"ragpipe_ingest_{name}") for kind, name in BURST_DAGS.items()}

    def remove(conn) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        for i in range(changes):
            s3.delete_object(Bucket="ragpipe-sample", Key=f"kb/burst-{tag}/note-{i:03d}.md")
        conn.execute("DELETE FROM samples.articles WHERE id LIKE %s", (ids["sql table"],))

    before = watched_runs()
    with psycopg.connect(database_url(), autocommit=True) as conn:
        def indexed(kind: str) -> tuple[int, int]:
            return conn.execute(count, (BURST_DAGS[kind], ids[kind])).fetchone()

        def wait_all(want: int, what: str) -> dict[str, float]:
            """Seconds from now until each kind has `want` burst documents indexed."""
            started, took = time.monotonic(), {}
            while len(took) < len(BURST_DAGS):
                for kind in BURST_DAGS.keys() - took.keys():
                    if indexed(kind)[0] == want:
                        took[kind] = time.monotonic() - started
                if time.monotonic() - started > 2 * RUNS_TIMEOUT_S:
                    late = {kind: indexed(kind)[0] for kind in BURST_DAGS.keys() - took.keys()}
                    raise RunFailed(f"burst: {what} not seen within {2 * RUNS_TIMEOUT_S} s ({late} of {changes} are)")
                time.sleep(0.5)
            return took

        try:
            folder.mkdir()
            for i in range(changes):
                text = body.format(i=i, tag=tag)
                (folder / f"note-{i:03d}.md").write_text(text)
                s3.put_object(Bucket="ragpipe-sample", Key=f"kb/burst-{tag}/note-{i:03d}.md", Body=text.encode())
                conn.execute("INSERT INTO samples.articles (id, title, body) VALUES (%s, %s, %s)",
                             (f"burst-{tag}-{i:03d}", f"Note {i}", text))
            took = wait_all(changes, f"{changes} burst documents indexed")
            counts = {kind: indexed(kind) for kind in BURST_DAGS}
        finally:
            remove(conn)
        runs = {kind: n - before[kind] for kind, n in watched_runs().items()}
        wrong = {kind: (runs[kind], counts[kind]) for kind in BURST_DAGS
                 if counts[kind] != (changes, changes) or runs[kind] > 4}
        if wrong:
            raise RunFailed(f"burst of {changes} documents: (DAG runs, (documents, chunks)) {wrong} "
                            "(want at most 4 runs and one chunk each)")
        gone = wait_all(0, "the burst documents gone")
    for kind in BURST_DAGS:
        say(f"a burst of {changes} new documents in the watched {kind}: {runs[kind]} DAG runs, all searchable "
            f"after {took[kind]:.1f} s, each indexed once; gone {gone[kind]:.1f} s after they were removed")
    wait_for_runs(api, {}, home / "logs", RUNS_TIMEOUT_S, TASK_LIMIT_S, report=lambda _: None)


def check_killed_run(api: AirflowAPI, home: Path) -> None:
    """A watched run killed while it runs (marked failed, as "Mark as failed" in the UI does) stops
    neither the watcher nor the change it was indexing: the next change starts a run that makes
    both searchable."""
    import uuid

    from tools.freshness import searchable, seconds_until

    def watched() -> list[dict]:
        return [r for r in api.dag_runs() if r["dag_id"] == "ragpipe_ingest_sample"
                and r.get("run_type") == "asset_triggered"]

    known = {r["dag_run_id"] for r in watched()}
    words = [f"killed{uuid.uuid4().hex[:10]}" for _ in range(2)]
    paths = [SAMPLE_CORPUS / f"freshness-{word}.md" for word in words]
    try:
        paths[0].write_text(f"# Killed run\n\nThe word {words[0]} was being indexed when its run was killed.\n")
        try:
            seconds_until(lambda: any(r["dag_run_id"] not in known for r in watched()), "a run of the change", 60)
        except TimeoutError as exc:
            raise RunFailed(f"killed run: {exc}") from None
        run = next(r for r in watched() if r["dag_run_id"] not in known)
        api.patch(f"/dags/ragpipe_ingest_sample/dagRuns/{run['dag_run_id']}", {"state": "failed"})
        paths[1].write_text(f"# After the killed run\n\nThe word {words[1]} came after it.\n")
        try:
            took = seconds_until(lambda: all(searchable("sample", word) for word in words),
                                 "both changes searchable", FRESHNESS_TIMEOUT_S)
        except TimeoutError as exc:
            raise RunFailed(f"after a killed run ({run['state']} when killed): {exc}") from None
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
    say(f"a watched run killed while {run['state']}: the next change's run made both changes searchable "
        f"{took:.1f} s later")
    wait_for_runs(api, {}, home / "logs", RUNS_TIMEOUT_S, TASK_LIMIT_S, report=lambda _: None,
                  killed=frozenset({run["dag_run_id"]}))


def run_stack(mode: str) -> int:
    settings = load_settings()
    db_was_running = bool(settings.database_url) or (settings.pgdata / "postmaster.pid").exists()
    tree = ProcessTree()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rc = 0
    receiver = None
    started = time.monotonic()
    try:
        from tools.samples import AZURE_PORT, GCS_PORT, S3_PORT, WEB_PORT

        check_ports({"Airflow API": int(os.environ.get("AIRFLOW__API__PORT", "8080")), "sample S3": S3_PORT,
                     "sample GCS": GCS_PORT, "sample Azure": AZURE_PORT, "sample web": WEB_PORT})
        open_database()
        env = airflow_environment()
        home = Path(env["AIRFLOW_HOME"])
        sample_env, azurite = start_sample_servers(home / "sample-servers.log", tree)
        env = dict(os.environ, **env, **sample_env)
        dags = [d for d in SAMPLE_DAGS if azurite or d != NEEDS_AZURITE]
        if not azurite:
            if mode != "run":
                raise RunFailed("Azurite (the Azure Blob emulator of sample_azure) is not installed: `make azurite` "
                                "installs it with npm")
            say("sample_azure is not run: its emulator, Azurite, is not installed (`make azurite`, with Node.js)")
        if mode == "smoke":  # the DAGs' OpenLineage events go to a receiver here (docs/lineage.md)
            from tools.lineage_receiver import LineageReceiver

            receiver = LineageReceiver().__enter__()
            env.update(AIRFLOW__OPENLINEAGE__TRANSPORT=receiver.transport,
                       AIRFLOW__OPENLINEAGE__NAMESPACE="ragpipe-smoke",
                       # the web sample's plan fails once (its retry succeeds): a FAIL event to check
                       RAGPIPE_FAILPOINTS=f"plan_{FAILING_ONCE}", RAGPIPE_FAILPOINT_DIR=str(home / "failpoints"),
                       # the burst check removes its 200 documents at once, most of each watched sample
                       # collection: deletions the mass-deletion guard would rightly refuse (tests cover it)
                       RAGPIPE_MASS_DELETE_FRACTION="1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # standalone runs `airflow`
        port = int(env.get("AIRFLOW__API__PORT", "8080"))
        log_path = home / "standalone.log"
        say(f"starting Airflow 3 standalone (parallelism {env['AIRFLOW__CORE__PARALLELISM']}; "
            f"log: {log_path}) ...")
        proc = tree.start("airflow standalone", [airflow_bin(), "standalone"], env, log_path)
        wait_for("the Airflow API server", lambda: api_healthy(port) or proc.poll() is not None, START_TIMEOUT_S, 2)
        if proc.poll() is not None:
            raise RunFailed(f"airflow standalone exited with {proc.returncode}; see {log_path}")
        user, password = login(home)
        api = AirflowAPI(f"http://127.0.0.1:{port}", user, password)
        wait_for_dags(api)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        triggered = {dag_id: api.trigger(dag_id, f"{mode}__{stamp}") for dag_id in dags}
        say(f"triggered {len(triggered)} sample DAGs; waiting for every run (the scheduler's own included) ...")
        wait_for_runs(api, triggered, home / "logs", RUNS_TIMEOUT_S, TASK_LIMIT_S, must_succeed=ASSET_TRIGGERED,
                      report=say, retries_allowed=frozenset({f"ragpipe_ingest_{FAILING_ONCE}"}) if mode == "smoke"
                      else False)
        say(f"every run succeeded ({time.monotonic() - started:.0f} s since start)")
        from tools.demo import main as demo

        demo("Does coffee affect blood vessel function?")
        check_search_plugin(api, port)
        if mode == "smoke":
            check_lineage(api, receiver, triggered, home)
        freshness = check_freshness(api, home, int(os.environ.get("FRESHNESS_PROBES", "10")) if mode == "freshness"
                                    else 1)
        if mode == "freshness":  # for make bench (tools/benchmarks/freshness.py bench_airflow_freshness)
            Path(os.environ["FRESHNESS_OUT"]).write_text(json.dumps(freshness))
            return rc
        if mode == "smoke":
            check_bursts(api, home)
            check_killed_run(api, home)
        say(f"Airflow UI: http://localhost:{port}   login: {user} / {password}")
        say(f"Search page (also \"Search\" in the Airflow UI): http://localhost:{port}{URL_PREFIX}/"
            f"   API: http://localhost:{port}{URL_PREFIX}/docs")
        say(f"MCP for agents: http://localhost:{port}{URL_PREFIX}/mcp (streamable HTTP), or over stdio: "
            '{"command": "' + str(Path(".venv/bin/ragpipe").resolve()) + '", "args": ["mcp"]} in the client\'s config')
        if mode == "run":
            say("Edit or add a file in examples/corpus: "
                "the sample collection watches it (collections.yml `watch:`), so within a minute, with no trigger, "
                "`.venv/bin/ragpipe search \"your words\" -c sample` finds it.")
            say("Running until Ctrl-C.")
            proc.wait()
            raise RunFailed(f"airflow standalone exited with {proc.returncode}; see {log_path}")
    except KeyboardInterrupt:
        say("\nstopping ...")
    except RunFailed as exc:
        say(f"FAILED: {exc}")
        rc = 1
    finally:
        left = tree.stop()
        if receiver is not None:
            receiver.__exit__(None, None, None)
        if not db_was_running:
            from pipelines.store.database import stop_embedded_server

            stop_embedded_server(settings.pgdata)
        if left:
            say("still running after stop: " + "; ".join(left))
            rc = 1
        else:
            say(f"stopped every process this started ({time.monotonic() - started:.0f} s in all)")
    return rc


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    mode = args[0] if args else "run"
    if mode not in ("run", "smoke", "freshness"):
        raise SystemExit("usage: python -m tools.standalone [run|smoke|freshness]")
    sys.exit(run_stack(mode))


if __name__ == "__main__":
    main()
