"""Python side of the SQL search API: embed the query with the collection's model, call the SQL function.

    from pipelines.search import search
    for hit in search("does coffee raise blood pressure?", collection="sample", k=5):
        print(hit.score, hit.title, hit.uri)
"""

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from . import store
from .database import connect
from .embedding import get_embedder
from .ingest import open_database
from .sqlfiles import query


@dataclass(frozen=True)
class SearchResult:
    chunk_id: int
    document_id: str
    """The document's stable source id (relative path, row id, URL)."""
    uri: str
    title: str | None
    text: str
    metadata: dict[str, Any]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UnknownCollection(LookupError):
    pass


def embed_query(collection: str, text: str, url: str | None = None) -> np.ndarray:
    """Embed `text` with the model the collection was built with."""
    with connect(open_database(url)) as conn:
        found = store.get_collection(conn, collection)
    if found is None:
        raise UnknownCollection(f"no collection named {collection!r}; `ragpipe status` lists them")
    return get_embedder(found.model).encode([text])[0]


def search(text: str, collection: str, k: int = 10, filter: dict[str, Any] | None = None,
           url: str | None = None) -> list[SearchResult]:
    """Semantic search: the k chunks closest to `text`, best first."""
    embedding = embed_query(collection, text, url)
    with connect(open_database(url)) as conn:
        cur = conn.cursor(row_factory=class_row(SearchResult))
        params = dict(collection=collection, embedding=embedding, k=k,
                      filter=Jsonb(filter) if filter is not None else None)
        return cur.execute(query("search", "semantic_search"), params).fetchall()
