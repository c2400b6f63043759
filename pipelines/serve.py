"""`make run`: Airflow 3 standalone on the embedded PostgreSQL, the sample DAGs triggered once,
a search shown, then everything kept running until Ctrl-C (which stops what this started)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

from .airflow_env import airflow_environment
from .database import database_url
from .ingest import open_database
from .settings import load_settings

SAMPLE_DAGS = [f"ragpipe_ingest_{name}" for name in
               ("sample", "sample_records", "sample_s3", "sample_web", "sample_sql")]


def airflow_bin(name: str = "airflow") -> str:
    return str(Path(sys.executable).parent / name)


def wait_for(what: str, check, timeout_s: float = 300, every_s: float = 2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f}s waiting for {what}; "
                             "see .ragpipe/airflow/standalone.log")
        time.sleep(every_s)


def api_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://localhost:{port}/api/v2/monitor/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def airflow_db(query: str, params: tuple) -> list[tuple]:
    url = database_url().replace("/postgres?", "/airflow?")
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def trigger(dag_id: str, env: dict[str, str]) -> str:
    run_id = f"make_run__{int(time.time())}"
    subprocess.run([airflow_bin(), "dags", "trigger", dag_id, "--run-id", run_id], env=env, check=True,
                   capture_output=True)
    return run_id


def main() -> None:
    settings = load_settings()
    db_was_running = bool(settings.database_url) or (settings.pgdata / "postmaster.pid").exists()
    open_database()
    from .samples import start_all

    env = dict(os.environ, **airflow_environment(), **start_all(database_url()))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # standalone runs `airflow`
    port = int(env.get("AIRFLOW__API__PORT", "8080"))
    home = Path(env["AIRFLOW_HOME"])
    log_path = home / "standalone.log"
    print(f"starting Airflow 3 standalone (log: {log_path.relative_to(settings.home.parent)}) ...", flush=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([airflow_bin(), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for("the Airflow API server", lambda: api_healthy(port) or proc.poll() is not None)
        if proc.poll() is not None:
            raise SystemExit(f"airflow standalone exited with {proc.returncode}; see {log_path}")
        wait_for("the DAGs to be parsed", lambda: len(airflow_db(
            "SELECT dag_id FROM dag WHERE dag_id = ANY(%s) AND NOT is_paused", (SAMPLE_DAGS,))) == len(SAMPLE_DAGS))
        runs = {dag_id: trigger(dag_id, env) for dag_id in SAMPLE_DAGS}
        for dag_id, run_id in runs.items():
            print(f"triggered {dag_id} ({run_id}); waiting for it to finish ...", flush=True)
            wait_for(dag_id, lambda d=dag_id, r=run_id: airflow_db(
                "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (d, r))[0][0] in ("success", "failed"))
            state = airflow_db("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))[0][0]
            print(f"{dag_id}: {state}")
            if state != "success":
                raise SystemExit(f"{dag_id} failed: open http://localhost:{port} to see its task logs")
        from .demo import main as demo

        demo("Does coffee affect blood vessel function?")
        passwords = home / "simple_auth_manager_passwords.json.generated"
        login = json.loads(passwords.read_text()) if passwords.exists() else {}
        print(f"Airflow UI: http://localhost:{port}   login: " +
              ", ".join(f"{user} / {pw}" for user, pw in login.items()))
        print("Running until Ctrl-C.", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        print("\nstopping Airflow ...")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if not db_was_running:
            subprocess.run([airflow_bin("ragpipe"), "db", "stop"], check=False)


if __name__ == "__main__":
    main()
