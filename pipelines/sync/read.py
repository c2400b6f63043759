"""Read: each document of a batch read, compared by content hash, extracted and chunked; what a
batch decides for each document is an Outcome, acted on by pipelines/sync/load.py."""

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from pipelines import store
from pipelines.chunking import Chunk, chunk_text, with_context
from pipelines.collection import text_tokens
from pipelines.embed import Embedder
from pipelines.embed.base import Tokens
from pipelines.extract import ExtractionError
from pipelines.extract.worker import extract_isolated
from pipelines.sources import DocumentRef, Gone, NotModified, RawDocument, ReadResult, Source
from pipelines.sync.enrich import enrich_documents

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    raw: RawDocument
    content_hash: str
    title: str | None
    chunks: list[Chunk]
    body_hash: str | None = None
    document: str = ""
    """The extracted text (what a chat model situates each chunk in: enrich.context)."""


@dataclass(frozen=True)
class Failure:
    stage: str
    reason: str


@dataclass(frozen=True)
class Duplicate:
    """The same content as another document of the collection: recorded, not indexed twice."""

    of: str


@dataclass(frozen=True)
class Touched:
    """Content unchanged: only the fingerprint is recorded."""

    fingerprint: str


@dataclass(frozen=True)
class Vanished:
    """The source says the document is gone (a 404/410): it is deleted with the batch."""


@dataclass(frozen=True)
class AlreadyWritten:
    """A retried batch finds the document already committed by this run: nothing to do."""


Outcome = Prepared | Touched | Failure | Duplicate | Vanished | AlreadyWritten
"""What a batch decided for one document; write_batch acts on each kind."""


@dataclass
class BatchWork:
    """A batch read, extracted and chunked; its vectors are filled in by embed_batch."""

    refs: list[DocumentRef]
    existing: dict[str, tuple[str, int | None, str | None]]
    outcome: dict[str, Outcome]
    vectors: dict[str, np.ndarray]
    fresh: set[str] = field(default_factory=set)
    """Chunk hashes embedded in this batch (the rest came from the database)."""
    api_tokens: Tokens = field(default_factory=Tokens)
    """What embedding this batch (and those embedded in the same call) spent at an API endpoint."""
    context_tokens: Tokens = field(default_factory=Tokens)
    """What writing its chunks' context spent at the chat model (enrich.context)."""
    skip_duplicates: bool = True

    def prepared(self) -> list[Prepared]:
        return [o for o in self.outcome.values() if isinstance(o, Prepared)]


def read_batch(conn: psycopg.Connection, collection: store.Collection, embedder: Embedder, source: Source,
               refs: list[DocumentRef], run_id: int, full_refresh: bool, skip_duplicates: bool = True,
               enrich: bool = True) -> BatchWork:
    """Everything before embedding: read, compare content hashes, extract, chunk, write each chunk's
    context (enrich.context; not when `enrich` is False: a dry run asks no model), find stored vectors."""
    existing = store.document_hashes(conn, collection.id, [r.source_id for r in refs])
    previous = {} if full_refresh else {sid: state[2] for sid, state in existing.items()}
    outcome: dict[str, Outcome] = {}
    bodies: dict[str, str] = {}  # body hash → the first document of this batch with that content
    for ref, read in source.read_many(refs, previous):
        sid = ref.source_id
        stored_hash, written_by, _ = existing.get(sid, (None, None, None))
        digest = content_hash(read) if isinstance(read, RawDocument) else None
        decided = classify(read, digest, stored_hash, written_by, run_id, full_refresh)
        if decided is not None:
            outcome[sid] = decided
            continue
        body = body_hash(read)
        original = skip_duplicates and (bodies.get(body)
                                        or store.duplicates_of(conn, collection.id, run_id, {sid: body}).get(sid))
        if original:
            outcome[sid] = Duplicate(original)
        else:
            outcome[sid] = _prepare_or_fail(read, digest, embedder, collection, body)
            if isinstance(outcome[sid], Prepared):  # copies of a failed file fail on their own
                bodies.setdefault(body, sid)
    work = BatchWork(refs, existing, outcome, {}, skip_duplicates=skip_duplicates)
    if enrich:
        failed, work.context_tokens = enrich_documents(conn, collection, {sid: o for sid, o in outcome.items()
                                                                          if isinstance(o, Prepared)},
                                                       embedder.chunk_tokenizer)
        outcome.update((sid, Failure("enrich", reason)) for sid, reason in failed.items())
    hashes = [c.content_hash for p in work.prepared() for c in p.chunks]
    if hashes and not full_refresh:
        work.vectors = store.cached_embeddings(conn, collection.model, collection.dimension, hashes,
                                               half=store.stores_halfvec(collection))
    return work


def classify(read: ReadResult, digest: str | None, stored_hash: str | None,
             written_by: int | None, run_id: int, full_refresh: bool) -> Outcome | None:
    """What a batch does with one document its source returned, before extracting it; None: extract
    and index it. `digest` is its content_hash, `stored_hash` and `written_by` what the database has."""
    if isinstance(read, Exception):
        return Failure("read", str(read))
    if isinstance(read, NotModified):
        return Touched(read.ref.fingerprint)
    if isinstance(read, Gone):
        return Vanished()
    if stored_hash != digest:
        return None
    if written_by == run_id:
        return AlreadyWritten()
    return None if full_refresh else Touched(read.ref.fingerprint)


def _prepare_or_fail(raw: RawDocument, digest: str, embedder: Embedder, collection: store.Collection,
                     body: str) -> Prepared | Failure:
    try:
        return dataclasses.replace(prepare(raw, digest, embedder, collection), body_hash=body)
    except ExtractionError as exc:
        return Failure("extract", str(exc))
    except Exception as exc:  # a parser bug on one document must not stop the run
        log.exception("unexpected error extracting %s", raw.ref.source_id)
        return Failure("extract", f"{type(exc).__name__}: {exc}")


def body_hash(raw: RawDocument) -> str:
    """Hash of the content and title only: equal for the same file under another name."""
    h = hashlib.sha256(raw.content)
    h.update(json.dumps(raw.title).encode())
    return h.hexdigest()


def content_hash(raw: RawDocument) -> str:
    """Hash of everything that makes a document: bytes, title and metadata."""
    h = hashlib.sha256(raw.content)
    h.update(json.dumps([raw.title, raw.metadata], sort_keys=True, default=str).encode())
    return h.hexdigest()


def prepare(raw: RawDocument, digest: str, embedder: Embedder, collection: store.Collection) -> Prepared:
    """Extract and chunk one document; raises ExtractionError when there is nothing to index."""
    extracted = extract_isolated(raw.content, raw.suffix)
    context = bool(collection.settings.get("chunk_context"))
    chunks = chunk_text(extracted.text, embedder.chunk_tokenizer,
                        text_tokens(collection.chunk_tokens, collection.settings, embedder.document_prompt_tokens),
                        collection.chunk_overlap)
    if not chunks:
        raise ExtractionError("document has no extractable text")
    raw = dataclasses.replace(raw, metadata=storable(raw.metadata))
    title = storable(raw.title or extracted.title)
    if context:
        chunks = [dataclasses.replace(c, context=storable(c.context))
                  for c in with_context(chunks, title, embedder.chunk_tokenizer)]
    if embedder.document_prompt:
        chunks = [dataclasses.replace(c, prompt=embedder.document_prompt) for c in chunks]
    return Prepared(raw, digest, title, chunks, document=extracted.text)


def storable(value: Any) -> Any:
    """The value without NUL characters, which PostgreSQL text and jsonb cannot hold (keys included)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value
