"""`ragpipe serve` as a user starts it, in a subprocess on a free loopback port: for the service tests
and `make bench`. Waiting and stopping have limits that end in a clear error."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from pipelines.airflow.rest import RunFailed, wait_for

RAGPIPE = str(Path(sys.executable).parent / "ragpipe")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ragpipe_serve(log: Path, env: dict[str, str] | None = None, start_timeout_s: float = 180,
                  stop_timeout_s: float = 20) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of `ragpipe serve` once /healthz answers; SIGTERM, then SIGKILL, when done.
    Its output goes to `log` (a file: a pipe nobody reads could fill up and block it)."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([RAGPIPE, "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RunFailed(f"ragpipe serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(f"ragpipe serve to answer {base}/healthz (log: {log})", healthy, start_timeout_s, 0.3)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise RuntimeError(f"ragpipe serve did not stop within {stop_timeout_s:g} s of SIGTERM") from None
