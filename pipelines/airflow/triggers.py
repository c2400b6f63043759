"""The AssetWatcher trigger of watched collections: the triggerer runs it, and each burst of source
changes (pipelines/watch/changes.py, the streams `ragpipe watch` uses) becomes one event of the
collection's source Asset, which schedules its ingest DAG. The run lists the source and diffs
fingerprints, so one run catches up every change of the burst, and a change during a run is the
next event (the scheduler queues the next run)."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

MAX_SETTLE_S = 30.0


class SourceChangeTrigger(BaseEventTrigger):
    """Fires once per burst of changes of collection `collection`'s source (collections.yml at
    `collections_file`), a burst ending after `watch.debounce_s` without a change."""

    def __init__(self, collection: str, collections_file: str) -> None:
        super().__init__()
        self.collection = collection
        self.collections_file = collections_file

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "collection": self.collection, "collections_file": self.collections_file}

    def _spec(self) -> Any:
        """The collection from collections.yml, and the change streams' module imported (in a thread:
        never block the triggerer's event loop)."""
        from pathlib import Path

        import pipelines.watch.changes  # noqa: F401
        from pipelines.config import load_collections

        return load_collections(Path(self.collections_file))[self.collection]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from pipelines.watch.changes import source_changes

        spec = await asyncio.to_thread(self._spec)
        debounce = spec.watch["debounce_s"] if spec.watch else 2.0
        changes: asyncio.Queue[str] = asyncio.Queue()

        async def listen() -> None:
            async for change in source_changes(spec, asyncio.Event()):  # cancelled with the trigger
                changes.put_nowait(change)

        listener = asyncio.create_task(listen())
        try:
            while True:
                first = await _next(changes, listener)
                assert first is not None
                seen, started = [first], time.monotonic()
                while time.monotonic() - started < MAX_SETTLE_S:
                    more = await _next(changes, listener, timeout=debounce)
                    if more is None:
                        break
                    seen.append(more)
                self.log.info("%s: %d changes (%s): scheduling a run", self.collection, len(seen), first)
                yield TriggerEvent({"collection": self.collection, "changes": len(seen), "first": first})
        finally:
            listener.cancel()


async def _next(changes: "asyncio.Queue[str]", listener: "asyncio.Task[None]", timeout: float | None = None
                ) -> str | None:
    """The next change (None after `timeout` without one); the listener's error if it failed (the
    triggerer then logs the trigger as failed)."""
    if not changes.empty():
        return changes.get_nowait()
    getter = asyncio.ensure_future(changes.get())
    try:
        await asyncio.wait({getter, listener}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    if listener.done():
        listener.result()  # raises its error
        raise RuntimeError("the change stream ended")
    return None
