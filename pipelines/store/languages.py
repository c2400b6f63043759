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


def named_language(name: str) -> str:
    """A language as written by a user (a configuration name or an ISO 639-1 code) as its text search
    configuration's name: `de` and `German` are `german`."""
    wanted = name.strip().lower()
    return ISO_LANGUAGES.get(wanted, wanted)


def collection_languages(settings: dict[str, Any]) -> tuple[str, list[str]]:
    """(a collection's own language, every language its chunks may be made in), from its settings."""
    default = settings.get("language", "english")
    return default, [default, *(x for x in settings.get("languages", []) if x != default)]


def language_of(metadata: Any, default: str, allowed: Iterable[str]) -> tuple[str, str | None]:
    """The language a document's chunks are made in: its metadata `language` when that is one of
    `allowed`, else `default`; and the reason it fell back (None when it did not)."""
    named = metadata.get("language") if isinstance(metadata, dict) else None
    if named is None or (isinstance(named, str) and not named.strip()):
        return default, None
    if not isinstance(named, str):
        return default, f"language {shown(named)} is not a text: indexed in {default}"
    allowed = list(allowed)
    wanted = named_language(named)
    if wanted in allowed:
        return wanted, None
    return default, (f"language {shown(named)} is not among the collection's ({', '.join(allowed)}): indexed in "
                     f"{default}; add it to the collection's `languages` to stem it as {shown(wanted, 40)}")


def shown(value: Any, limit: int = 40) -> str:
    """A value from a document or a user in one line of a message: repr (a newline stays `\\n`), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def document_languages(conn: psycopg.Connection, collection: Any,
                       docs: list[Any]) -> tuple[dict[str, int], list[tuple[Any, str]]]:
    """Each document's text search configuration (as its oid, language_of), and the documents that
    fell back to the collection's language, with the reason (recorded with the run)."""
    default, names = collection_languages(collection.settings)
    allowed = language_oids(conn, names)
    chosen, notes = {}, []
    for d in docs:
        language, reason = language_of(d.metadata, default, allowed)
        chosen[d.source_id] = allowed[language]
        if reason:
            log.warning("collection %s: document %s: %s", collection.name, d.source_id, reason)
            notes.append((d, reason))
    return chosen, notes
