"""Sources list documents with a cheap fingerprint and read them; one module per source kind, the
types they share in base.py."""

from typing import Any

from pipelines.sources.base import (
    FIELD_SEP,
    DocumentRef,
    Gone,
    Listing,
    NotModified,
    RawDocument,
    ReadResult,
    Source,
    SourceError,
    row_document,
    same_fingerprint,
)

__all__ = ["FIELD_SEP", "DocumentRef", "Gone", "Listing", "NotModified", "RawDocument", "ReadResult", "Source",
           "SourceError", "make_source", "row_document", "same_fingerprint", "source_classes"]


def source_classes() -> dict[str, type]:
    """Each source kind's class: its dataclass fields are the kind's options in collections.yml
    (types and bounds included; pipelines/config.py validates against them)."""
    from pipelines.sources import azure, folder, gcs, s3, sql_table, tabular, web

    return {"folder": folder.FolderSource, "tabular": tabular.TabularSource, "s3": s3.S3Source,
            "gcs": gcs.GcsSource, "azure": azure.AzureSource, "web": web.WebSource, "sql": sql_table.SqlSource}


def make_source(options: dict[str, Any]) -> Source:
    """Build a source from its options as written in collections.yml (`kind` plus that kind's options)."""
    kinds = source_classes()
    options = dict(options)
    kind = options.pop("kind", None)
    if kind not in kinds:
        raise SourceError(f"unknown source kind {kind!r} (known: {', '.join(kinds)})")
    return kinds[kind](**options)
