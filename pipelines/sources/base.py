"""What every source kind shares: document references, read results, listings, the Source protocol."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class SourceError(Exception):
    """A document (or a whole listing) could not be read from its source."""


@dataclass(frozen=True)
class DocumentRef:
    """What a listing knows about a document before reading it."""

    source_id: str
    uri: str
    fingerprint: str


@dataclass(frozen=True)
class RawDocument:
    """One document's bytes, ready for extraction."""

    ref: DocumentRef
    content: bytes
    suffix: str
    """Decides the extractor: ".pdf", ".md", ... (".txt" for text from records)."""
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotModified:
    """The source confirms the document did not change (e.g. HTTP 304); `ref` has the new fingerprint."""

    ref: DocumentRef


@dataclass(frozen=True)
class Gone:
    """The source says the document no longer exists (e.g. HTTP 404/410): delete it."""

    ref: DocumentRef
    reason: str


ReadResult = RawDocument | NotModified | Gone | Exception


def same_fingerprint(listed: str, stored: str | None) -> bool:
    """Listed and stored fingerprints agree. A stored fingerprint may carry validators after the
    listed part ("lastmod\x1fetag..."): then the listed part alone decides."""
    if stored is None:
        return False
    return listed == stored or (bool(listed) and stored.split(FIELD_SEP)[0] == listed)


FIELD_SEP = "\x1f"


@dataclass
class Listing:
    refs: list[DocumentRef]
    complete: bool
    """False when part of the source could not be listed: then nothing may be deleted."""
    problems: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(where, reason) of entries that can never be documents (a table row without a usable id):
    recorded as failures of the run; the listing stays complete."""


class Source(Protocol):
    kind: str

    def list(self) -> Listing: ...

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, ReadResult]]:
        """Read each document; a failure is yielded as the exception, never raised. `previous` maps
        source ids to stored fingerprints, for sources that can ask "changed since?"."""
        ...


def row_document(ref: DocumentRef, row: dict[str, Any], id_column: str, text_column: str,
                 title_column: str | None, title_in_text: bool) -> RawDocument | SourceError:
    """A table row as a document: its text column (after its title, as a first paragraph, when
    title_in_text, so the title is embedded and keyword-searchable), the title, the other columns
    as metadata."""
    text = row.get(text_column)
    if not isinstance(text, str):
        return SourceError(f"row {ref.source_id!r}: column {text_column!r} is empty or not text")
    title = row.get(title_column) if title_column else None
    title = " ".join(str(title).split()) if title is not None else ""
    if title and title_in_text:
        text = f"{title}\n\n{text}"
    metadata = {k: v for k, v in row.items() if k not in {id_column, text_column, title_column}}
    return RawDocument(ref, text.encode(), ".txt", title or None, metadata)
