"""Extraction in a separate worker process, with a per-document time limit and a memory cap.

A hostile or broken PDF, DOCX or HTML file can make its parser loop or allocate without bound; in
the worker that costs one killed process and a recorded failure instead of a hung or dead ingest.
The worker is started once per process (spawn: it never inherits the model or database connections)
and replaced by pebble after a timeout. Only bytes and the extracted text cross the boundary.
"""

import atexit
import multiprocessing
import threading
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessExpired, ProcessPool

from .extract import Extracted, ExtractionError, extract
from .settings import load_settings

PARSED = {".pdf", ".docx", ".html", ".htm"}
"""Formats whose parsers run in the worker; plain text and Markdown are decoded in-process."""
_pools: dict[int, ProcessPool] = {}
_lock = threading.Lock()


def extract_isolated(data: bytes, suffix: str) -> Extracted:
    """extract() in the worker; a timeout, crash or memory blow-up becomes an ExtractionError."""
    settings = load_settings()
    if settings.extract_timeout_s <= 0 or suffix.lower() not in PARSED:
        return extract(data, suffix)
    future = _worker(settings.extract_memory_mb).schedule(extract, (data, suffix),
                                                          timeout=settings.extract_timeout_s)
    try:
        return future.result()
    except FutureTimeout:
        raise ExtractionError(f"extraction took longer than {settings.extract_timeout_s:g} s "
                              "(RAGPIPE_EXTRACT_TIMEOUT); the parser was stopped") from None
    except MemoryError:
        raise ExtractionError(f"extraction needed more than {settings.extract_memory_mb} MB "
                              "(RAGPIPE_EXTRACT_MEMORY_MB)") from None
    except ProcessExpired as exc:
        raise ExtractionError(f"the parser crashed (exit code {exc.exitcode})") from None


def _worker(memory_mb: int) -> ProcessPool:
    """This process's extraction worker (pebble replaces it after a timeout or crash)."""
    with _lock:
        pool = _pools.get(memory_mb)
        if pool is None or not pool.active:
            pool = _pools[memory_mb] = ProcessPool(max_workers=1, initializer=_limit_memory, initargs=(memory_mb,),
                                                   context=multiprocessing.get_context("spawn"))
            atexit.register(pool.stop)
        return pool


def _limit_memory(memory_mb: int) -> None:
    """Cap the worker's address space so that a decompression or parser blow-up fails cleanly."""
    try:
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
