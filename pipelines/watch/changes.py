"""What tells ragpipe that a source changed, one async stream per source kind; each item names a
change (or a batch of them). Streams never end on their own: they stop when `stop` is set.

- folder and tabular: the file system's own events (inotify on Linux, through watchfiles), with
  the folder's include/exclude rules;
- sql: LISTEN on the collection's channel, fed by the trigger `ragpipe watch NAME --setup` installs;
  a dropped connection is opened again, and the reconnection counts as a change (one may have
  been missed meanwhile);
- s3: the bucket's event notifications, read from an SQS queue (long polling);
- web: no events exist, so the source is listed again every `interval_s` and a change of any
  page's fingerprint (the sitemap's lastmod, or the page's ETag) counts.

Each stream sets `ready` once it is watching (the inotify watch made, LISTEN done, the first
listing taken): a run that lists the source after that misses no change."""

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pipelines.config import CollectionSpec
from pipelines.sources import make_source

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 30.0


def identifier(prefix: str, collection: str) -> str:
    """`prefix` + the collection's name as a PostgreSQL identifier (at most 63 bytes: a long name is
    cut and told apart by a hash of the whole)."""
    whole = prefix + collection
    if len(whole.encode()) <= 63:
        return whole
    digest = hashlib.sha1(collection.encode()).hexdigest()[:8]
    return f"{prefix}{collection.encode()[:40].decode(errors='ignore')}_{digest}"


def channel(collection: str) -> str:
    """The NOTIFY channel of a collection's sql source."""
    return identifier("ragpipe_", collection)


def queue_name(collection: str) -> str:
    """The SQS queue `ragpipe watch setup` makes for a collection's s3 source."""
    return f"ragpipe-{collection.replace('_', '-')}"


def source_changes(spec: CollectionSpec, stop: asyncio.Event,
                   ready: asyncio.Event | None = None) -> AsyncIterator[str]:
    """The stream of changes of the collection's source, chosen by its kind."""
    kind = spec.source["kind"]
    ready = ready or asyncio.Event()
    if kind in ("folder", "tabular"):
        return file_changes(spec, stop, ready)
    if kind == "sql":
        return notifications(spec, stop, ready)
    if kind == "s3":
        return queue_messages(spec, stop, ready)
    return listing_changes(spec, stop, ready)


async def file_changes(spec: CollectionSpec, stop: asyncio.Event, ready: asyncio.Event) -> AsyncIterator[str]:
    """The folder's (or the table file's folder's) file events. Each real folder of the tree is watched
    on its own (links to folders are not followed, as the listing follows none); a new or removed
    folder re-arms the watches. A folder removed and made again, or swapped (`mv dir dir.old; mkdir
    dir`), is watched again and counts as a change; with inotify out of watches, the folder is polled."""
    from watchfiles import Change

    source = make_source(spec.source)
    if spec.source["kind"] == "tabular":
        root, wanted = source.file.parent, (lambda rel: rel == source.file.name)
    else:
        root, wanted = source.root, (lambda rel: source.single == rel if source.single else source.wanted(rel))
    flat = spec.source["kind"] == "tabular" or bool(source.single)

    def relevant(change: Any, path: str) -> bool:
        """A wanted file's event, or a folder's: files made in a new folder before its own watch
        exists send no event of their own, and the run that follows lists them."""
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            return False
        if flat:
            return wanted(rel)
        return wanted(rel) or _is_folder_event(change, path)

    polling = False
    while not stop.is_set():
        if not root.is_dir():
            log.warning("collection %s: the folder %s is gone; watching for it to come back", spec.name, root)
            ready.set()
            while not root.is_dir():
                if await _stopped(stop, 1.0):
                    return
            yield f"the folder {root} is back"
        identity = _identity(root)
        folders = [root] if flat else _real_folders(root, spec.name)
        rearm = asyncio.Event()
        watchdog = asyncio.ensure_future(_watch_identity(root, identity, stop, rearm))
        try:
            async for changes in _file_events(folders, relevant, rearm, polling):
                if changes is None:  # watching now
                    ready.set()
                    continue
                yield ", ".join(sorted(f"{c.name} {_shown(p, root)}" for c, p in changes)[:3]) + (
                    f" and {len(changes) - 3} more" if len(changes) > 3 else "")
                if not flat and any(_is_folder_event(c, p) or c == Change.deleted and p == str(root)
                                    for c, p in changes):
                    rearm.set()  # a new folder needs a watch of its own; a removed one leaves
        except FileNotFoundError:  # a folder went between the walk and its watch: look again
            await _stopped(stop, 0.2)
            continue
        except OSError as exc:
            if polling:
                raise
            log.warning("collection %s: cannot watch %s with inotify (%s); polling it instead (raise "
                        "fs.inotify.max_user_watches to watch it with events)", spec.name, root, exc.strerror or exc)
            polling = True
            yield f"polling {root}"
            continue
        finally:
            watchdog.cancel()
        if stop.is_set():
            return
        if _identity(root) != identity:
            log.warning("collection %s: the folder %s was replaced; watching the new one", spec.name, root)
            yield f"the folder {root} was replaced"


async def _file_events(folders: list[Path], relevant: Any, stop: asyncio.Event,
                       polling: bool) -> AsyncIterator[set | None]:
    """watchfiles' events of `folders` (each without its sub-folders) until `stop`: None once watching,
    then each set of changes. OSError when the watches cannot be made (inotify's limit)."""
    from watchfiles import awatch

    from pipelines.faults import armed

    if not polling and armed("watch_limit"):
        raise OSError(28, "OS file watch limit reached")
    stream = awatch(*folders, watch_filter=relevant, stop_event=stop, recursive=False, debounce=50, step=20,
                    yield_on_timeout=False, rust_timeout=1000, force_polling=polling, poll_delay_ms=500,
                    ignore_permission_denied=True)
    following = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the stream's first step makes the watches, before its first await
    if following.done() and following.exception() is not None:
        raise following.exception()
    yield None
    try:
        while True:
            try:
                changes = await following
            except StopAsyncIteration:  # stopped
                return
            except FileNotFoundError:  # a watched folder went before its watch was made: watch again
                return
            following = asyncio.ensure_future(anext(stream))
            yield changes
    finally:
        following.cancel()


def _is_folder_event(change: Any, path: str) -> bool:
    from watchfiles import Change

    return Path(path).is_dir() or (change == Change.deleted and not Path(path).suffix)


def _shown(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _identity(root: Path) -> tuple[int, int] | None:
    try:
        st = root.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def _watch_identity(root: Path, identity: tuple[int, int] | None, stop: asyncio.Event,
                          rearm: asyncio.Event) -> None:
    """Set `rearm` when `stop` is set or the folder at `root` is no longer the one watched (checked each second)."""
    while not stop.is_set() and _identity(root) == identity:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    rearm.set()


def _real_folders(root: Path, collection: str) -> list[Path]:
    """`root` and every folder below it, not through links (as the folder source lists it); a folder
    that cannot be read is left out, saying so in one line (its files are listed as failures)."""
    import os

    folders = [root]
    for dirpath, dirnames, _ in os.walk(root, onerror=lambda e: log.warning(
            "collection %s: cannot watch %s (%s)", collection, e.filename, e.strerror)):
        dirnames.sort()
        folders += [Path(dirpath, d) for d in dirnames if not Path(dirpath, d).is_symlink()]
    return folders


async def notifications(spec: CollectionSpec, stop: asyncio.Event, ready: asyncio.Event) -> AsyncIterator[str]:
    """NOTIFYs on the collection's channel, on an autocommit connection (it never holds a
    transaction open); reconnects with backoff after the database goes away."""
    import psycopg
    from psycopg import sql

    source = make_source(spec.source)
    backoff = 0.5
    first = True
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(source.conninfo(), autocommit=True,
                                                               application_name="ragpipe watch") as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(spec.name))))
                ready.set()
                backoff = 0.5
                if not first:
                    yield "reconnected to the source database (a change may have been missed)"
                first = False
                while not stop.is_set():
                    async for note in conn.notifies(timeout=1.0, stop_after=1000):
                        yield f"{note.payload or 'change'} on {spec.watch['table']}"
                    await conn.execute("SELECT 1")  # notices a dropped connection between notifications
        except psycopg.OperationalError as exc:
            log.warning("collection %s: listening for changes: %s; again in %.1f s", spec.name,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, backoff)
            if await _stopped(stop, backoff):
                return
            backoff = min(backoff * 2, RECONNECT_MAX_S)


async def queue_messages(spec: CollectionSpec, stop: asyncio.Event, ready: asyncio.Event) -> AsyncIterator[str]:
    """Object-created and -removed notifications of the bucket, long-polled from its SQS queue and
    deleted once read (the run that follows lists the bucket, so nothing rests on a message). The
    queue keeps what arrives while nobody reads it."""
    sqs = sqs_client(spec)
    url = spec.watch.get("queue_url") or sqs.get_queue_url(QueueName=queue_name(spec.name))["QueueUrl"]
    ready.set()
    while not stop.is_set():
        got = await asyncio.to_thread(sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = got.get("Messages", [])
        if messages:
            await asyncio.to_thread(sqs.delete_message_batch, QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
            keys = [k for m in messages for k in object_keys(m["Body"])]
            if keys:
                yield ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def object_keys(body: str) -> list[str]:
    """`event key` of each record of an S3 event notification (none for s3:TestEvent)."""
    try:
        records = json.loads(body).get("Records", [])
    except (ValueError, AttributeError):
        return []
    return [f"{r.get('eventName', 'change')} {r.get('s3', {}).get('object', {}).get('key', '?')}" for r in records]


def sqs_client(spec: CollectionSpec) -> Any:
    import boto3

    options = {k: v for k, v in {"endpoint_url": spec.source.get("endpoint_url"),
                                 "region_name": spec.source.get("region") or "us-east-1"}.items() if v}
    return boto3.client("sqs", **options)


async def listing_changes(spec: CollectionSpec, stop: asyncio.Event, ready: asyncio.Event) -> AsyncIterator[str]:
    source = make_source(spec.source)
    before = None
    while not stop.is_set():
        listing = await asyncio.to_thread(source.list)
        now = {r.source_id: r.fingerprint for r in listing.refs}
        if before is not None and listing.complete and now != before:
            changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
            yield f"{len(changed)} documents changed in the listing ({', '.join(changed[:3])})"
        if listing.complete:
            before = now
        ready.set()
        if await _stopped(stop, spec.watch["interval_s"]):
            return


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less when `stop` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except TimeoutError:
        return False
