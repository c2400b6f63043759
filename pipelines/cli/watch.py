"""`ragpipe watch`: keep collections fresh without Airflow, a run each time their sources change."""

import click

from pipelines.cli.common import fail
from pipelines.settings import load_settings


@click.command()
@click.argument("names", nargs=-1)
@click.option("--setup", is_flag=True, help="Install what makes NAME's source send change events (a trigger on a "
              "sql table, an S3 bucket's notification to SQS), then exit.")
@click.option("--remove", is_flag=True, help="With --setup: remove them instead.")
@click.option("--max-runs", type=click.IntRange(1), help="Stop after this many runs in all (scripts, tests).")
def watch(names: tuple[str, ...], setup: bool, remove: bool, max_runs: int | None) -> None:
    """Run collections as their sources change: NAMEs, or every collection with `watch:` in collections.yml.

    Starts with one run per collection (what changed while nothing watched), then one run per burst
    of changes: folders and table files by the file system's events, sql tables by NOTIFY (after
    `ragpipe watch NAME --setup`), S3 by the bucket's notifications through SQS (--setup makes them),
    web sources by listing the sitemap every watch.interval_s. A line per run; Ctrl-C stops after
    the run in progress. Runs take the collection's lock, so watchers and DAG runs never interleave.
    """
    from pipelines.config import load_collections

    settings = load_settings()
    declared = load_collections(settings.collections_file)
    unknown = [n for n in names if n not in declared]
    if unknown:
        fail(f"no collection {', '.join(map(repr, unknown))} in {settings.collections_file}")
    specs = [declared[n] for n in names] if names else [s for s in declared.values() if s.watch]
    if not specs:
        fail(f"no collection in {settings.collections_file} has `watch:` (add `watch: true` to one, or name it)")
    unwatched = [s.name for s in specs if not s.watch]
    if unwatched:
        fail(f"{', '.join(unwatched)}: no `watch:` in collections.yml (add `watch: true`)")
    if setup:
        from pipelines.watch.setup import set_up

        for spec in specs:
            click.echo(set_up(spec, remove))
        return
    if remove:
        fail("--remove goes with --setup")
    from pipelines.watch import run_watch

    click.echo(f"watching {', '.join(s.name for s in specs)} (Ctrl-C stops)")
    run_watch(specs, click.echo, max_runs)
