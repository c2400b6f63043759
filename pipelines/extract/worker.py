"""Extraction in a separate worker process, with a per-document time limit and a memory cap.

A hostile or broken PDF, DOCX or HTML file can make its parser loop or allocate without bound; in
the worker that costs one killed process and a recorded failure instead of a hung or dead ingest.

The worker is its own program, `python -m pipelines.extract.worker`, talking over its stdin and
stdout: it never re-imports the caller's `__main__` (a multiprocessing "spawn" child does, and
under Airflow 3 that is the `airflow` entry point, which cannot start inside a task) and never
inherits the model or database connections. So it starts the same way in the CLI, `dag.test()`,
a LocalExecutor task and a Celery worker. Every wait has a limit: start-up (`START_TIMEOUT_S`) and
each document (RAGPIPE_EXTRACT_TIMEOUT). Only the file's bytes go in and JSON comes back (never a
pickle: a parser compromised by a hostile file cannot make the caller execute anything).
"""

import atexit
import collections
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines.extract import Extracted, ExtractionError, extract
from pipelines.settings import load_settings

PARSED = {".pdf", ".docx", ".html", ".htm"}
"""Formats whose parsers run in the worker; plain text and Markdown are decoded in-process."""
START_TIMEOUT_S = 60.0
"""How long a new worker may take to import the parsers and say it is ready."""
START_ATTEMPTS = 2
"""Consecutive failed starts after which this process stops trying (each document then fails at once)."""
READY = b"ready"
_HEADER = struct.Struct("!I")


class WorkerUnavailable(ExtractionError):
    """The worker could not be started; the message carries the reason (its last stderr line)."""


def extract_isolated(data: bytes, suffix: str) -> Extracted:
    """extract() in the worker; a timeout, crash or memory blow-up becomes an ExtractionError."""
    if suffix.lower() not in PARSED:  # plain text: nothing to isolate
        return extract(data, suffix)
    settings = load_settings()
    if settings.extract_timeout_s <= 0:
        return extract(data, suffix)
    return _client(settings.extract_memory_mb).extract(data, suffix, settings.extract_timeout_s)


class WorkerClient:
    """One worker process, started on first use and replaced after a timeout or crash."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.failed_starts = 0
        self.start_error = ""
        self.lock = threading.Lock()

    def extract(self, data: bytes, suffix: str, timeout_s: float) -> Extracted:
        with self.lock:
            proc = self._running()
            try:
                _write(proc.stdin, suffix.encode())
                _write(proc.stdin, data)
                reply = json.loads(_read(proc.stdout, timeout_s))
            except TimeoutError:
                self.stop()
                raise ExtractionError(f"extraction took longer than {timeout_s:g} s "
                                      "(RAGPIPE_EXTRACT_TIMEOUT); the parser was stopped") from None
            except (EOFError, BrokenPipeError, OSError):
                raise ExtractionError(f"the parser crashed ({self._exit_reason()})") from None
            except BaseException:  # e.g. the task's own timeout: a late reply must not answer the next request
                self.stop()
                raise
        status, *rest = reply
        if status == "ok":
            return Extracted(*rest)
        if status == "memory":
            raise ExtractionError(f"extraction needed more than {self.memory_mb} MB (RAGPIPE_EXTRACT_MEMORY_MB)")
        raise ExtractionError(rest[0])

    def _running(self) -> subprocess.Popen:
        """The live worker, started when needed; raises WorkerUnavailable within START_TIMEOUT_S."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        self.stop()
        if self.failed_starts >= START_ATTEMPTS:
            raise WorkerUnavailable(self.start_error)
        try:
            self.proc = self._start()
            self.failed_starts = 0
            return self.proc
        except WorkerUnavailable as exc:
            self.failed_starts += 1
            self.start_error = str(exc)
            raise

    def _start(self) -> subprocess.Popen:
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent,
                                                                         os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.memory_mb), str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.stderr_tail.clear()
        threading.Thread(target=self._forward_stderr, args=(proc,), daemon=True).start()
        try:
            if _read(proc.stdout, START_TIMEOUT_S) == READY:
                return proc
        except (TimeoutError, EOFError, OSError):  # no handshake: described below from its exit and stderr
            pass
        self.proc = proc
        reason = self._exit_reason()
        self.stop()
        time.sleep(0.1)  # let the stderr thread catch the last lines
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "no error output")
        raise WorkerUnavailable(f"the parser worker could not start ({reason}): {last.strip()[:300]}")

    def _forward_stderr(self, proc: subprocess.Popen) -> None:
        """Copy the worker's stderr to ours (the task log) and keep its last lines for error messages."""
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            self.stderr_tail.append(line)
            sys.stderr.write(line)

    def _exit_reason(self) -> str:
        proc = self.proc
        if proc is None:
            return "not started"
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            return f"no answer within {START_TIMEOUT_S:g} s"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout) if proc is not None else ():
            try:
                stream.close()
            except OSError:
                pass


_clients: dict[int, WorkerClient] = {}
_clients_lock = threading.Lock()


def stop_workers() -> None:
    """Stop this process's workers (the next document starts a new one, with the current environment)."""
    with _clients_lock:
        for client in _clients.values():
            client.stop()
            client.failed_starts = 0


def _client(memory_mb: int) -> WorkerClient:
    """This process's worker for the given memory cap."""
    with _clients_lock:
        client = _clients.get(memory_mb)
        if client is None:
            client = _clients[memory_mb] = WorkerClient(memory_mb)
            atexit.register(client.stop)
        return client


def _write(stream, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read(stream, timeout_s: float | None) -> bytes:
    """One framed message; TimeoutError after timeout_s (None: no limit), EOFError when the other side is gone."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    fd = stream.fileno()

    def take(n: int) -> bytes:
        buf = bytearray()  # appending in place: a 50 MB document arrives in ~800 pipe reads
        while len(buf) < n:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and (remaining <= 0 or not select.select([fd], [], [], remaining)[0]):
                raise TimeoutError
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    (size,) = _HEADER.unpack(take(_HEADER.size))
    return take(size)


# The worker side.

def _serve(memory_mb: int, parent_pid: int) -> None:
    """Answer (bytes, suffix) requests until stdin closes; exit if the parent process dies."""
    proto_in, proto_out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a parser that prints must not corrupt the protocol
    _limit_memory(memory_mb)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    from pipelines.faults import armed, failpoint

    failpoint("parser_worker_start")
    _write(proto_out, READY)
    while True:
        try:
            suffix, data = _read(proto_in, None).decode(), _read(proto_in, None)
        except EOFError:
            return
        if armed("parser_crash"):
            os.kill(os.getpid(), 9)
        if armed("parser_hang"):
            time.sleep(3600)
        try:
            result = extract(data, suffix)
            reply = ("ok", result.text, result.title)
        except MemoryError:
            reply = ("memory",)
        except ExtractionError as exc:
            reply = ("error", str(exc))
        except Exception as exc:  # a parser bug: only its message crosses the boundary
            reply = ("error", f"{type(exc).__name__}: {exc}")
        _write(proto_out, json.dumps(reply).encode())


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose caller was killed (kill -9 of a task) must not outlive it."""
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


def _limit_memory(memory_mb: int) -> None:
    """Cap the worker's address space so that a decompression or parser blow-up fails cleanly."""
    try:
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
