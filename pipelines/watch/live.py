"""`ragpipe watch`: incremental runs of collections as their sources change, in one process.

Each collection has a listener (its source's change stream, pipelines/watch/changes.py) and a
runner. The runner starts with one run (what changed while nothing watched), then waits for a
change, lets a burst settle (`watch.debounce_s` without a new change, at most MAX_SETTLE_S), and
runs once for all of it. A change that arrives during a run starts one more run after it, so none
is lost between a run's listing and its end. Runs take the collection's lock, like every writer:
two watchers, or a watcher and an Airflow run, never interleave."""

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipelines.config import CollectionSpec
from pipelines.store.database import first_line
from pipelines.watch.changes import source_changes

log = logging.getLogger(__name__)
MAX_SETTLE_S = 30.0
"""A burst that never pauses still starts a run after this long."""
BUSY_RETRY_S = 5.0
READY_TIMEOUT_S = 60.0


@dataclass
class Pending:
    """The changes a collection's runner has not run for yet."""

    changes: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    watching: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the source's change stream is watching."""
    last_at: float = 0.0

    def add(self, change: str) -> None:
        self.changes.append(change)
        self.last_at = time.monotonic()
        self.arrived.set()

    def take(self) -> list[str]:
        taken, self.changes = self.changes, []
        self.arrived.clear()
        return taken


def default_run(spec: CollectionSpec) -> dict[str, Any]:
    from pipelines.ingest import run_ingest

    return run_ingest(spec, trigger="watch")


def describe(changes: list[str]) -> str:
    if not changes:
        return "catching up"
    more = f" (+{len(changes) - 1} more)" if len(changes) > 1 else ""
    return f"{changes[0]}{more}"


async def watch_collections(specs: list[CollectionSpec], stop: asyncio.Event, say: Callable[[str], None],
                            max_runs: int | None = None,
                            run: Callable[[CollectionSpec], dict[str, Any]] = default_run) -> int:
    """Watch until `stop` is set (or `max_runs` runs in all have ended); returns the runs made."""
    runs = 0

    async def listen(spec: CollectionSpec, pending: Pending) -> None:
        async for change in source_changes(spec, stop, pending.watching):
            pending.add(change)

    async def settle(spec: CollectionSpec, pending: Pending) -> None:
        started = time.monotonic()
        while not stop.is_set() and time.monotonic() - started < MAX_SETTLE_S:
            quiet = time.monotonic() - pending.last_at
            if quiet >= spec.watch["debounce_s"]:
                return
            await asyncio.sleep(min(spec.watch["debounce_s"] - quiet, 0.5))  # the burst's end, re-checked

    async def runner(spec: CollectionSpec, pending: Pending) -> None:
        nonlocal runs
        from pipelines.ingest import format_summary
        from pipelines.store import CollectionBusy

        try:  # the first run catches up, once the source is watched: no change falls in between
            await asyncio.wait_for(pending.watching.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            say(f"{_now()} {spec.name}: not watching its source after {READY_TIMEOUT_S:.0f} s (see the log); "
                "catching up anyway")
        pending.arrived.set()
        while not stop.is_set():
            waiter = asyncio.ensure_future(pending.arrived.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return
            await settle(spec, pending)
            if stop.is_set():  # stopped while the burst settled: no new run starts
                return
            changes = pending.take()
            started = time.monotonic()
            try:
                summary = await asyncio.to_thread(run, spec)
                line = format_summary(summary)
            except CollectionBusy as exc:
                say(f"{_now()} {spec.name}: busy ({exc}); trying again in {BUSY_RETRY_S:.0f} s")
                for change in changes:
                    pending.add(change)
                await asyncio.sleep(BUSY_RETRY_S)
                continue
            except Exception as exc:  # the next change tries again; the watcher keeps watching
                line = f"run failed: {type(exc).__name__}: {first_line(exc)}"
            runs += 1
            say(f"{_now()} {spec.name}: {describe(changes)} → {line} ({time.monotonic() - started:.1f} s)")
            if max_runs is not None and runs >= max_runs:
                stop.set()

    pendings = {spec.name: Pending() for spec in specs}
    tasks = [asyncio.create_task(listen(s, pendings[s.name]), name=f"listen-{s.name}") for s in specs]
    tasks += [asyncio.create_task(runner(s, pendings[s.name]), name=f"run-{s.name}") for s in specs]
    try:
        done, _ = await asyncio.wait({*tasks, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in tasks and task.exception():
                raise task.exception()
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=60)  # a run in progress ends (commits or rolls back) first
        for task in tasks:
            task.cancel()
    return runs


def run_watch(specs: list[CollectionSpec], say: Callable[[str], None], max_runs: int | None = None) -> int:
    """watch_collections until Ctrl-C or SIGTERM: the run in progress ends first; a second Ctrl-C
    stops at once (the interrupted run is rolled back, and the next run redoes it)."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def interrupted() -> None:
            if stop.is_set():  # the database rolls back what the run had not committed
                say(f"{_now()} stopped")
                os._exit(130)
            say(f"{_now()} stopping (the run in progress ends first; Ctrl-C again to stop now)")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupted)
        return await watch_collections(specs, stop, say, max_runs)

    return asyncio.run(main())


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S")
