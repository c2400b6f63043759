"""A loopback OpenLineage receiver: an HTTP server that keeps every event POSTed to it, as a
Marquez-like backend would (`make smoke` and tests/test_lineage.py point Airflow's OpenLineage
transport at it)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENDPOINT = "api/v1/lineage"


class LineageReceiver:
    """Started on 127.0.0.1 (a free port); `events` holds each event received, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    event = json.loads(body)
                except ValueError:
                    receiver.bad.append(body[:200].decode(errors="replace"))
                    self.send_response(400)
                else:
                    receiver.events.append(event)
                    self.send_response(201 if self.path.strip("/") == ENDPOINT else 404)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="lineage receiver", daemon=True)

    @property
    def transport(self) -> str:
        """AIRFLOW__OPENLINEAGE__TRANSPORT for this receiver."""
        return json.dumps({"type": "http", "url": f"http://127.0.0.1:{self.server.server_port}",
                           "endpoint": ENDPOINT, "timeout": 5})

    def task_events(self, dag_id: str, run_id: str | None) -> list[dict[str, Any]]:
        """The task-level events of one DAG run (job name `dag_id.task_id`; any run when None)."""
        found = []
        for event in list(self.events):
            parent = (event.get("run", {}).get("facets", {}).get("parent") or {})
            airflow = event.get("run", {}).get("facets", {}).get("airflow") or {}
            dag_run = airflow.get("dagRun") or {}
            if (event.get("job", {}).get("name", "").startswith(f"{dag_id}.") and parent
                    and (run_id is None or dag_run.get("run_id", run_id) == run_id)):
                found.append(event)
        return found

    def __enter__(self) -> "LineageReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def wait_for_events(receiver: LineageReceiver, dag_id: str, run_id: str | None, expected: dict[tuple[str, str], int],
                    timeout_s: float = 60) -> list[dict[str, Any]]:
    """The DAG run's task events once each (job name, eventType) has arrived `expected` times;
    a clear error naming what is missing after `timeout_s`."""
    import time
    from collections import Counter

    deadline = time.monotonic() + timeout_s
    while True:
        events = receiver.task_events(dag_id, run_id)
        seen = Counter((e["job"]["name"], e["eventType"]) for e in events)
        missing = {key: n for key, n in expected.items() if seen[key] < n}
        if not missing:
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"OpenLineage events of {dag_id} run {run_id} missing after {timeout_s:.0f} s: "
                               f"{missing}; received {dict(seen)}")
        time.sleep(0.2)
