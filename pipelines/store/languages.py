"""Text search configurations: which languages the database has, and the one each document's
chunks are made in."""

import logging
from collections.abc import Iterable
from typing import Any

import psycopg

from pipelines.store.sqlfiles import query

log = logging.getLogger(__name__)

ISO_LANGUAGES = {"ar": "arabic", "ca": "catalan", "da": "danish", "de": "german", "el": "greek", "en": "english",
                 "es": "spanish", "eu": "basque", "fi": "finnish", "fr": "french", "ga": "irish", "hi": "hindi",
                 "hu": "hungarian", "hy": "armenian", "id": "indonesian", "it": "italian", "lt": "lithuanian",
                 "ne": "nepali", "nl": "dutch", "no": "norwegian", "pt": "portuguese", "ro": "romanian",
                 "ru": "russian", "sr": "serbian", "sv": "swedish", "ta": "tamil", "tr": "turkish", "yi": "yiddish"}
"""ISO 639-1 codes of PostgreSQL's built-in text search configurations (a document's `language: de`)."""


def language_oids(conn: psycopg.Connection, names: Iterable[str]) -> dict[str, int]:
    return dict(conn.execute(query("store", "language_oids"), (sorted(set(names)),)).fetchall())


def document_languages(conn: psycopg.Connection, collection: Any,
                       docs: list[Any]) -> dict[str, int]:
    """Each document's text search configuration (as its oid): its metadata `language` (a name or
    an ISO code) when it is one of the collection's languages, else the collection's own; an
    unknown value is logged and falls back."""
    default = collection.settings.get("language", "english")
    allowed = language_oids(conn, [default, *collection.settings.get("languages", [])])
    chosen = {}
    for d in docs:
        named = d.metadata.get("language") if isinstance(d.metadata, dict) else None
        language = default
        if isinstance(named, str) and named.strip():
            wanted = ISO_LANGUAGES.get(named.strip().lower(), named.strip().lower())
            if wanted in allowed:
                language = wanted
            else:
                log.warning("collection %s: document %s names language %r, which is not among the collection's "
                            "(%s): it is indexed in %s", collection.name, d.source_id, named, ", ".join(allowed),
                            default)
        chosen[d.source_id] = allowed[language]
    return chosen
