"""The `ragpipe` command: ingest, watch, search, serve, mcp, status, embed, db and config. Every command has --help.

One module per command group (ingest.py, watch.py, verify.py, forget.py, search.py, quality.py, versions.py, db.py,
service.py);
this one builds the group and turns expected failures into one-line errors.
"""

import logging
import sys

import click

from pipelines.cli import db, forget, ingest, quality, search, service, verify, versions, watch
from pipelines.config import ConfigError
from pipelines.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO level).")
def main(verbose: bool) -> None:
    """ragpipe: documents → chunks → embeddings → PostgreSQL/pgvector, searchable from SQL.

    The database is the embedded PostgreSQL under .ragpipe/pgdata unless RAGPIPE_DATABASE_URL is set.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


for command in (ingest.ingest, ingest.status, search.search, search.similar, search.ask, search.embed,
                quality.eval_, quality.tune, versions.versions, versions.promote, versions.rollback,
                versions.prune, db.db, db.cache, service.serve, service.mcp, service.config, watch.watch,
                verify.verify, forget.forget):
    main.add_command(command)


def run() -> None:
    """Entry point with one-line errors instead of tracebacks for expected failures."""
    import psycopg

    from pipelines.embed.errors import EmbeddingFailed
    from pipelines.settings import SettingsError
    from pipelines.sources import SourceError
    from pipelines.store import CollectionBusy, CollectionMismatch
    from pipelines.store.database import DatabaseError, first_line, mask_url

    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ConfigError, SettingsError, DatabaseError, SourceError, CollectionMismatch, CollectionBusy,
            LookupError, EmbeddingFailed) as exc:
        click.echo(f"Error: {mask_url(str(exc))}", err=True)
        sys.exit(1)
    except (psycopg.DataError, psycopg.errors.NoDataFound, psycopg.errors.RaiseException,
            psycopg.errors.UndefinedObject, psycopg.errors.ObjectNotInPrerequisiteState) as exc:
        click.echo(f"Error: {first_line(exc).removeprefix('ragpipe: ')}", err=True)
        sys.exit(1)
    except psycopg.Error as exc:  # lost connection, stopped server, full disk, or an error no retry fixes
        from pipelines.store.database import explain_failure

        settings = load_settings()
        click.echo(f"Error: {explain_failure(exc, None if settings.database_url else settings.pgdata)}", err=True)
        sys.exit(1)
