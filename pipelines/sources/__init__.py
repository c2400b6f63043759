"""Sources list documents with a cheap fingerprint and read them; one module per source kind."""

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


@dataclass
class Listing:
    refs: list[DocumentRef]
    complete: bool
    """False when part of the source could not be listed: then nothing may be deleted."""
    problems: list[str] = field(default_factory=list)


class Source(Protocol):
    kind: str

    def list(self) -> Listing: ...

    def read_many(self, refs: Iterable[DocumentRef]) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        """Read each document; a failure is yielded as the exception, never raised."""
        ...


SOURCE_OPTIONS: dict[str, dict[str, set[str]]] = {
    "folder": {"required": {"path"}, "allowed": {"path", "include", "exclude", "max_bytes"}},
    "tabular": {"required": {"path"}, "allowed": {"path", "id_column", "text_column", "title_column"}},
}


def make_source(options: dict[str, Any]) -> Source:
    """Build a source from its options as written in collections.yml (`kind` plus that kind's options)."""
    from . import folder, tabular

    kinds: dict[str, Any] = {"folder": folder.FolderSource, "tabular": tabular.TabularSource}
    options = dict(options)
    kind = options.pop("kind", None)
    if kind not in kinds:
        raise SourceError(f"unknown source kind {kind!r} (known: {', '.join(kinds)})")
    return kinds[kind](**options)
