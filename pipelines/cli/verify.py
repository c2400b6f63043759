"""`ragpipe verify`: does the index still agree with the source?"""

import sys

import click

from pipelines.cli.common import configured, emit


@click.command()
@click.argument("name")
@click.option("--repair", is_flag=True, help="Fix what a normal run can (re-read documents, rewrite postings, "
              "build the index, refresh statistics, run the collection), then verify again.")
@click.option("--allow-mass-delete", is_flag=True, help="With --repair: let the run delete documents gone from the "
              "source even when they are more than RAGPIPE_MASS_DELETE_FRACTION of the collection.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(name: str, repair: bool, allow_mass_delete: bool, as_json: bool) -> None:
    """Audit collection NAME: source vs documents, chunks, BM25 postings, statistics, HNSW index.

    Finds documents in the source but not indexed (and not recorded as failed), indexed documents
    gone from the source or changed in it, a source that could not be listed whole (no run deletes
    then), documents with missing chunks or vectors of the wrong dimension, chunks whose postings do
    not match their text, statistics older than the data, and a missing or invalid index. Prints
    each finding with a count and examples; exits 1 when anything is wrong (after --repair: when
    anything is still wrong). --repair never deletes more than the mass-deletion guard allows unless
    --allow-mass-delete.
    """
    from pipelines.verify import repair as fix
    from pipelines.verify import verify as audit

    spec = configured(name)
    report = audit(name, spec)
    if repair and not report.clean:
        report = fix(report, spec, allow_mass_delete=allow_mass_delete)
    if as_json:
        emit(report.to_dict())
    else:
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for f in report.findings:
            click.echo(f"{f.check}: {f.count} — {f.meaning}; e.g. {', '.join(f.examples)} (--repair: {f.repair})")
        for note in report.notes:
            click.echo(f"note: {note}")
        if report.clean:
            click.echo(f"{name}: source, documents, chunks, postings, statistics and index agree")
    sys.exit(0 if report.clean else 1)
