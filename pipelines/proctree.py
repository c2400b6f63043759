"""Start server processes and stop every process they started, checked by pid.

Airflow puts each task in a process group of its own, and a killed LocalExecutor or Celery worker
leaves its task processes behind with parent pid 1, so neither the process group nor the parent
links find them all. Each process started here leads a session of its own, which its descendants
keep (a new process group is not a new session); one that starts a session of its own is still
found by a marker in its environment, which children inherit (unless setproctitle overwrote it).
"""

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil

MARKER = "RAGPIPE_PROCESS_TREE"


class ProcessTree:
    """Processes started with one marker; `stop()` ends them and everything they started."""

    def __init__(self) -> None:
        self.marker = uuid.uuid4().hex
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(cmd, env=dict(env, **{MARKER: self.marker}), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.started[name] = proc
        return proc

    def session(self, name: str) -> list[psutil.Process]:
        """The live processes of one started process's session (it and what it started)."""
        sid = self.started[name].pid
        found = []
        for proc in self.members():
            try:
                if os.getsid(proc.pid) == sid:
                    found.append(proc)
            except OSError:
                continue
        return found

    def members(self) -> list[psutil.Process]:
        """Every live process in a session this tree started or carrying its marker."""
        sessions = {proc.pid for proc in self.started.values()}
        found = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if os.getsid(proc.pid) in sessions or proc.environ().get(MARKER) == self.marker:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def stop(self, grace_s: float = 30) -> list[str]:
        """SIGTERM the started processes' groups, then every member; SIGKILL what is left after
        grace_s. Returns a description of each process still alive afterwards (empty when clean)."""
        for proc in self.started.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self.started.values()):
            time.sleep(0.2)
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10), (signal.SIGKILL, 5)):
            members = self.members()
            if not members:
                break
            for proc in members:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(members, timeout=wait_s)
        for proc in self.started.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return [f"pid {p.pid} ({' '.join(_cmdline(p))[:120]})" for p in self.members()]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return ["?"]
