"""A CSV, JSONL or Parquet file: one document per row, the id column is the stable source id."""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from . import DocumentRef, Listing, RawDocument, SourceError

READERS = {
    ".csv": lambda p: pd.read_csv(p, dtype_backend="pyarrow"),
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype_backend="pyarrow"),
    ".ndjson": lambda p: pd.read_json(p, lines=True, dtype_backend="pyarrow"),
    ".parquet": lambda p: pd.read_parquet(p, dtype_backend="pyarrow"),
}


@dataclass
class TabularSource:
    path: str
    id_column: str = "id"
    text_column: str = "text"
    title_column: str | None = None
    kind: str = "tabular"

    def __post_init__(self) -> None:
        self.file = Path(self.path).expanduser().resolve()
        if self.file.suffix.lower() not in READERS:
            raise SourceError(f"unsupported table file {self.path!r} (use {', '.join(READERS)})")
        if not self.file.is_file():
            raise SourceError(f"table file {self.path!r} does not exist")

    @cached_property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Rows keyed by id, as JSON-safe dicts (read once per process)."""
        frame = READERS[self.file.suffix.lower()](self.file)
        missing = [c for c in (self.id_column, self.text_column, self.title_column) if c and c not in frame]
        if missing:
            raise SourceError(f"{self.file.name}: missing column(s) {missing}; columns are {list(frame.columns)}")
        records = json.loads(frame.to_json(orient="records", date_format="iso"))
        rows: dict[str, dict[str, Any]] = {}
        for record in records:
            key = record.get(self.id_column)
            if key is None or str(key) in rows:
                continue  # rows without an id, and later duplicates of an id, are skipped
            rows[str(key)] = record
        return rows

    def list(self) -> Listing:
        refs = [DocumentRef(key, f"{self.file.as_uri()}#{key}", _row_hash(row)) for key, row in self.rows.items()]
        return Listing(refs, complete=True)

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        for ref in refs:
            row = self.rows.get(ref.source_id)
            if row is None:
                yield ref, SourceError(f"row {ref.source_id!r} is no longer in {self.file.name}")
                continue
            text = row.get(self.text_column)
            if not isinstance(text, str):
                yield ref, SourceError(f"row {ref.source_id!r}: column {self.text_column!r} is empty")
                continue
            skip = {self.id_column, self.text_column, self.title_column}
            metadata = {k: v for k, v in row.items() if k not in skip}
            title = row.get(self.title_column) if self.title_column else None
            yield ref, RawDocument(ref, text.encode(), ".txt", str(title) if title else None, metadata)


def _row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:32]
