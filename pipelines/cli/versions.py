"""`ragpipe versions`, `promote`, `rollback` and `prune`: a collection's versions."""

import sys

import click

from pipelines.cli.common import emit, spec_or_bare, version_outcome


@click.command()
@click.argument("collection")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def versions(collection: str, as_json: bool) -> None:
    """The versions of COLLECTION: model, chunking, size, scores and state.

    States: active (searches read it, under the collection's name), building, ready (built, waiting
    for `ragpipe promote`), rejected (scored worse, or rolled back), previous (kept for rollback until
    `ragpipe prune`). Any version can be searched as COLLECTION@vN.
    """
    from pipelines.versions import list_versions

    rows = list_versions(collection)
    if as_json:
        emit(rows)
        return
    for v in rows:
        verdict = v["evaluation"] or {}
        score = (f" {verdict['metric']} {verdict['candidate']} (active then {verdict['active']})"
                 if "metric" in verdict else "")
        click.echo(f"v{v['version']} {v['state']:<9} {v['model']} chunk_tokens={v['chunk_tokens']} "
                   f"overlap={v['chunk_overlap']} context={bool(v['settings'].get('chunk_context'))}: "
                   f"{v['documents']} documents, {v['chunks']} chunks{score}")


@click.command()
@click.argument("collection")
@click.argument("version", type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Promote even if its scores drop or a smoke query finds nothing.")
def promote(collection: str, version: int, force: bool) -> None:
    """Make VERSION of COLLECTION the one searches read, in one transaction.

    It is scored against the active version first (collections.yml `eval:`, `smoke_queries`,
    `promote.max_drop`); a worse score refuses the promotion unless --force.
    """
    from pipelines.versions import promote as promote_version

    outcome = promote_version(spec_or_bare(collection), version, force=force)
    already = outcome["state"] == "active" and not outcome["promoted"]
    click.echo(f"{collection} v{version}: {'already active' if already else version_outcome(outcome)}")
    if outcome["state"] == "rejected":
        sys.exit(1)


@click.command()
@click.argument("collection")
def rollback(collection: str) -> None:
    """Make the version that was active before the current one active again.

    The current one is marked rejected: later runs keep it in step but do not promote it on their own.
    """
    from pipelines.versions import rollback as rollback_version

    click.echo(f"{collection}: version {rollback_version(spec_or_bare(collection))} is active again")


@click.command()
@click.argument("collection")
def prune(collection: str) -> None:
    """Drop the versions of COLLECTION that are neither active nor being built.

    Their vectors move to the embedding cache, so a later version with the same model reuses them.
    """
    from pipelines.versions import prune as prune_versions

    dropped = prune_versions(spec_or_bare(collection))
    click.echo(f"{collection}: dropped versions {dropped}" if dropped else f"{collection}: nothing to drop")
