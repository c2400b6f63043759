"""A small client of Airflow 3's REST API (/api/v2): trigger DAG runs and watch them to the end.

Used by `make run`, `make smoke` and the distributed test. Every wait has a deadline, and a failed
or overrunning task ends the wait at once with that task's log excerpt.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

TERMINAL = {"success", "failed"}
BAD_TASK_STATES = ("failed", "up_for_retry", "upstream_failed")


class RunFailed(RuntimeError):
    """A DAG run or task failed, or a wait passed its deadline; the message says which and why."""


@dataclass
class AirflowAPI:
    base_url: str
    username: str
    password: str
    timeout_s: float = 15

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=self.timeout_s)
        self._token: str | None = None

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            r = self.client.post("/auth/token", json={"username": self.username, "password": self.password})
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, path: str, **params) -> dict:
        r = self.client.get(f"/api/v2{path}", params=params, headers=self._headers())
        if r.status_code == 401:  # token expired
            self._token = None
            r = self.client.get(f"/api/v2{path}", params=params, headers=self._headers())
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> dict:
        r = self.client.post(f"/api/v2{path}", json=body, headers=self._headers())
        r.raise_for_status()
        return r.json()

    def patch(self, path: str, body: dict) -> dict:
        r = self.client.patch(f"/api/v2{path}", json=body, headers=self._headers())
        r.raise_for_status()
        return r.json()

    def trigger(self, dag_id: str, run_id: str, conf: dict | None = None) -> str:
        self.post(f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}})
        return run_id

    def dag_runs(self) -> list[dict]:
        return self.get("/dags/~/dagRuns", limit=1000, order_by="id")["dag_runs"]

    def task_instances(self, dag_id: str = "~", run_id: str = "~", **params) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000, **params)["task_instances"]

    def import_errors(self) -> list[dict]:
        return self.get("/importErrors")["import_errors"]

    def dags(self) -> dict[str, dict]:
        return {d["dag_id"]: d for d in self.get("/dags", limit=1000)["dags"]}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 1) -> None:
    """Poll check() until it is true; RunFailed after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RunFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def wait_for_runs(api: AirflowAPI, triggered: dict[str, str], logs_dir: Path, timeout_s: float,
                  task_limit_s: float, must_succeed: tuple[str, ...] = (), settle_s: float = 10,
                  report: Callable[[str], None] = print, retries_allowed: bool | frozenset[str] = False,
                  killed: frozenset[str] = frozenset()) -> list[dict]:
    """Wait until every triggered run and every run the scheduler made on its own succeeded, and
    each DAG in must_succeed has a successful run. Fails at the first failed task (even one that
    will be retried, unless retries_allowed: True, or the set of DAG ids that may retry) or task
    running longer than task_limit_s, with its log.
    Runs whose id is in `killed` were marked failed on purpose: their state and tasks are ignored."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    quiet_since = None
    while True:
        runs = api.dag_runs()
        for run in runs:
            key = f"{run['dag_id']} ({run['dag_run_id']})"
            if seen.get(key) != run["state"]:
                seen[key] = run["state"]
                report(f"  {key}: {run['state']}")
        bad = [ti for ti in api.task_instances(state=list(BAD_TASK_STATES)) if ti["dag_run_id"] not in killed
               and not (ti["state"] == "up_for_retry" and (retries_allowed is True or ti["dag_id"] in
                                                           (retries_allowed or ())))]
        if bad:
            raise RunFailed(describe_failure(bad[0], logs_dir))
        for ti in api.task_instances(state=["running"]):
            started = datetime.fromisoformat(ti["start_date"]) if ti.get("start_date") else None
            if started and (datetime.now(UTC) - started).total_seconds() > task_limit_s:
                raise RunFailed(f"task ran longer than {task_limit_s:.0f} s; "
                                + describe_failure(ti, logs_dir))
        failed = [r for r in runs if r["state"] == "failed" and r["dag_run_id"] not in killed]
        if failed:
            raise RunFailed(f"DAG run {failed[0]['dag_id']} ({failed[0]['dag_run_id']}) failed")
        states = {(r["dag_id"], r["dag_run_id"]): r["state"] for r in runs}
        never_succeeded = [d for d in must_succeed
                           if not any(r["dag_id"] == d and r["state"] == "success" for r in runs)]
        done = (all(states.get(item) == "success" for item in triggered.items())
                and all(r["state"] in TERMINAL for r in runs) and not never_succeeded)
        if done:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:  # no new run (e.g. an Asset-triggered one) appeared
                return runs
        else:
            quiet_since = None
        if time.monotonic() > deadline:
            pending = sorted(k for k, s in seen.items() if s not in TERMINAL)
            raise RunFailed(f"timed out after {timeout_s:.0f} s; still not finished: {', '.join(pending) or 'none'}"
                            + "".join(f"; {d} has no successful run" for d in never_succeeded))
        time.sleep(2)


def describe_failure(ti: dict, logs_dir: Path, lines: int = 30) -> str:
    """One line naming the task and its state, then the end of its log."""
    where = f"{ti['dag_id']}.{ti['task_id']}" + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
    head = f"task {where} of run {ti['dag_run_id']} is {ti['state']} (try {ti.get('try_number')}, " \
           f"host {ti.get('hostname') or '?'})"
    return head + "\n" + log_excerpt(logs_dir, ti, lines)


def log_excerpt(logs_dir: Path, ti: dict, lines: int = 30) -> str:
    task_dir = logs_dir / f"dag_id={ti['dag_id']}" / f"run_id={ti['dag_run_id']}" / f"task_id={ti['task_id']}"
    if ti.get("map_index", -1) >= 0:
        task_dir = task_dir / f"map_index={ti['map_index']}"
    files = sorted(task_dir.glob("attempt=*.log"), key=lambda p: p.stat().st_mtime)
    if not files:
        return f"  (no log file under {task_dir})"
    out = []
    for raw in files[-1].read_text(errors="replace").splitlines()[-lines:]:
        try:
            entry = json.loads(raw)
            text = f"{entry.get('level', '')} {entry.get('event', '')}"
            if entry.get("error_detail"):
                last = entry["error_detail"][-1] if isinstance(entry["error_detail"], list) else entry["error_detail"]
                text += f" {last.get('exc_type', '')}: {last.get('exc_value', '')}" if isinstance(last, dict) else ""
        except (ValueError, AttributeError):
            text = raw
        out.append("  | " + text[:400])
    return f"  log: {files[-1]}\n" + "\n".join(out)
