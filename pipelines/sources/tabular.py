"""A CSV, JSONL or Parquet file: one document per row, the id column is the stable source id."""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.sources.base import DocumentRef, Listing, RawDocument, SourceError, row_document


def _csv(path: Path) -> list[Any]:
    """Every cell as the file wrote it: "007" stays "007", "NA" stays "NA"; only empty cells are null."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    return json.loads(frame.to_json(orient="records"))


def _jsonl(path: Path) -> list[Any]:
    """Each line's JSON value as written ("1" and 1 stay different); a bad line becomes a bad row."""
    rows: list[Any] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append(SourceError(f"not valid JSON ({exc.msg})"))
    return rows


def _parquet(path: Path) -> list[Any]:
    return json.loads(pd.read_parquet(path, dtype_backend="pyarrow").to_json(orient="records", date_format="iso"))


READERS = {".csv": _csv, ".jsonl": _jsonl, ".ndjson": _jsonl, ".parquet": _parquet}


@dataclass
class TabularSource:
    path: str
    id_column: str = "id"
    text_column: str = "text"
    title_column: str | None = None
    title_in_text: bool = True
    """Put the title before the text, as its first paragraph: embedded and searched with it."""
    kind: str = "tabular"

    def __post_init__(self) -> None:
        self.file = Path(self.path).expanduser().resolve()
        if self.file.suffix.lower() not in READERS:
            raise SourceError(f"unsupported table file {self.path!r} (use {', '.join(READERS)})")
        if not self.file.is_file():
            raise SourceError(f"table file {self.path!r} does not exist")

    @cached_property
    def table(self) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
        """Rows keyed by id, as JSON-safe dicts (read once per process), and the rows refused with why."""
        records = READERS[self.file.suffix.lower()](self.file)
        columns = {k for r in records if isinstance(r, dict) for k in r}
        missing = [c for c in (self.id_column, self.text_column, self.title_column) if c and c not in columns]
        if records and missing:
            raise SourceError(f"{self.file.name}: missing column(s) {missing}; columns are {sorted(columns)}")
        rows: dict[str, dict[str, Any]] = {}
        first_row: dict[str, int] = {}
        rejected: list[tuple[str, str]] = []
        for number, record in enumerate(records, 1):
            where = f"{self.file.name} row {number}"
            if isinstance(record, SourceError) or not isinstance(record, dict):
                rejected.append((where, str(record) if isinstance(record, SourceError) else "not a JSON object"))
                continue
            key, problem = _row_id(record.get(self.id_column), self.id_column)
            if problem:
                rejected.append((where, problem))
            elif key in rows:
                rejected.append((where, f"id {key!r} repeats row {first_row[key]}; only the first is loaded"))
            else:
                rows[key], first_row[key] = record, number
        return rows, rejected

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.table[0]

    def list(self) -> Listing:
        refs = [DocumentRef(key, f"{self.file.as_uri()}#{key}", _row_hash(row)) for key, row in self.rows.items()]
        return Listing(refs, complete=True, rejected=self.table[1])

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        for ref in refs:
            row = self.rows.get(ref.source_id)
            if row is None:
                yield ref, SourceError(f"row {ref.source_id!r} is no longer in {self.file.name}")
                continue
            yield ref, row_document(ref, row, self.id_column, self.text_column, self.title_column,
                                    self.title_in_text)


def _row_id(value: Any, column: str) -> tuple[str, None] | tuple[None, str]:
    """The row's id as text, exactly as the file wrote it (a JSON/Parquet integer as its digits)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"no id (column {column!r} is empty)"
    if isinstance(value, str):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return None, f"id {value!r} is a {type(value).__name__}; ids must be strings or integers"


def _row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:32]
