"""`ragpipe forget`: erase documents from every version of a collection, and keep them out."""

import click

from pipelines.cli.common import emit, fail
from pipelines.cli.search import parse_filter


@click.command()
@click.argument("collection")
@click.argument("source_ids", nargs=-1)
@click.option("--filter", "filter_", help='Forget every document whose metadata contains this (JSON), e.g. '
              '\'{"author": "Jane Doe"}\', instead of naming source ids.')
@click.option("--dry-run", is_flag=True, help="List what would be forgotten (and in how many versions); change "
              "nothing.")
@click.option("--list", "list_", is_flag=True, help="List the collection's tombstones: the source ids no run indexes.")
@click.option("--undo", is_flag=True, help="Remove the tombstones of SOURCE_IDS: the next run indexes them again if "
              "the source still holds them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def forget(collection: str, source_ids: tuple[str, ...], filter_: str | None, dry_run: bool, list_: bool, undo: bool,
           as_json: bool) -> None:
    """Erase documents of COLLECTION, named by SOURCE_IDS or matched by --filter, from every version of
    it (active, building, kept for rollback): their chunks, vectors, keyword postings, cached vectors
    and failure records, in one transaction under the collection's lock; then VACUUM. A tombstone (the
    source id and hashes, never text) keeps every later run, watch event and version build from
    indexing them again while the source still holds them; an audit row (who, when, how many, which
    filter) records the erasure. Details: docs/erasure.md.
    """
    from pipelines import forget as erase

    if list_:
        rows = erase.tombstones(collection)
        if as_json:
            emit(rows)
            return
        for row in rows:
            click.echo(f"{row['source_id']}  (forgotten {row['forgotten_at']:%Y-%m-%d %H:%M}, "
                       f"erasure #{row['erasure_id']})")
        return
    filt = parse_filter(filter_)
    if undo:
        if not source_ids:
            fail("name the source ids to un-forget (`ragpipe forget NAME --list` lists them)")
        removed = erase.undo(collection, list(source_ids))
        emit({"removed": removed}) if as_json else click.echo(
            f"removed {removed} tombstones of {collection!r}: its next run indexes them if the source holds them")
        return
    if bool(source_ids) == (filt is not None):
        fail("name the SOURCE_IDS to forget, or give --filter (one of the two)")
    ids = list(source_ids) if source_ids else None
    if dry_run:
        found = erase.matching(collection, ids, filt)
        if as_json:
            emit([{"source_id": s, "versions": n} for s, n in found])
            return
        for source_id, versions in found:
            click.echo(f"{source_id}  ({versions} version{'s' if versions > 1 else ''})")
        click.echo(f"would forget {len(found)} indexed documents" + (f" and tombstone {len(ids)} source ids"
                                                                     if ids else "") + " (nothing changed)")
        return
    erasure = erase.forget(collection, ids, filt)
    emit(erasure.__dict__) if as_json else click.echo(erasure.summary())
