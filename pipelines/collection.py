"""A collection's build settings: how a spec of collections.yml maps to one collection row.

The build key (model, chunking, chunk context, HNSW build settings) is what a row was built with;
a spec with another key is another version (pipelines/versions decides which row a run writes).
Search defaults, ef_search, keyword_candidates and keyword_rescore are stored settings that change
in place.
"""

import dataclasses
from typing import Any

import psycopg

from pipelines import store
from pipelines.chunking import CONTEXT_TOKENS, check_chunk_settings
from pipelines.config import DEFAULT_INDEX, CollectionSpec, ConfigError
from pipelines.embed import Embedder, get_embedder, resolve_model

REBUILD_INDEX_KEYS = ("m", "ef_construction")
"""Index settings that only a new build can change."""


def stored_settings(spec: CollectionSpec) -> dict[str, Any]:
    """The collection settings stored with a version (ragpipe.collections.settings)."""
    return {"index": spec.index, **({"search": spec.search} if spec.search else {}),
            **({"chunk_context": True} if spec.chunk_context else {})}


def text_tokens(chunk_tokens: int, chunk_context: bool) -> int:
    """The tokens a chunk's own text may use: all of chunk_tokens, less the context header's reserve."""
    return chunk_tokens - CONTEXT_TOKENS if chunk_context else chunk_tokens


def chunk_tokens_for(spec: CollectionSpec, embedder: Embedder, existing: store.Collection | None) -> int:
    """The spec's chunk_tokens (unset: the model's limit, or what the same model was built with), checked."""
    same_model = existing is not None and existing.model == spec.model
    chunk_tokens = spec.chunk_tokens or (existing.chunk_tokens if same_model else embedder.max_tokens)
    if chunk_tokens > embedder.max_tokens:
        raise ConfigError(f"collection {spec.family!r}: chunk_tokens={chunk_tokens} exceeds the model's limit "
                          f"of {embedder.max_tokens} tokens; the model would truncate the chunks")
    try:
        check_chunk_settings(embedder.chunk_tokenizer, text_tokens(chunk_tokens, spec.chunk_context),
                             spec.chunk_overlap)
    except ValueError as exc:
        raise ConfigError(f"collection {spec.family!r}: {exc}") from None
    return chunk_tokens


def build_key(model: str, chunk_tokens: int, chunk_overlap: int, settings: dict[str, Any]) -> tuple:
    """Everything a version is built with; a different key is a different version."""
    index = {**DEFAULT_INDEX, **settings.get("index", {})}
    return (model, chunk_tokens, chunk_overlap, bool(settings.get("chunk_context")),
            *(index[k] for k in REBUILD_INDEX_KEYS))


def key_of(c: store.Collection | dict[str, Any]) -> tuple:
    row = dataclasses.asdict(c) if isinstance(c, store.Collection) else c
    return build_key(row["model"], row["chunk_tokens"], row["chunk_overlap"], row["settings"])


def open_collection(conn: psycopg.Connection, spec: CollectionSpec) -> tuple[store.Collection, Embedder]:
    """The row named `spec.name` (a collection's first is created on first use) and its embedder; the
    model loads only when needed. Settings that need no rebuild (search defaults, ef_search) are
    updated; other build settings are a new version (pipelines.versions.plan_versions decides which)."""
    existing = store.get_collection(conn, spec.name)
    spec = dataclasses.replace(spec, model=resolve_model(spec.model, existing.model if existing else None))
    embedder = get_embedder(spec.model, spec.batch_size)
    settings = stored_settings(spec)
    if existing is not None and existing.model == spec.model and (
            spec.chunk_tokens in (None, existing.chunk_tokens) and spec.chunk_overlap == existing.chunk_overlap
            and existing.settings == settings):
        return existing, embedder
    chunk_tokens = chunk_tokens_for(spec, embedder, existing)
    if existing is not None and key_of(existing) != build_key(spec.model, chunk_tokens, spec.chunk_overlap, settings):
        raise ConfigError(f"collection {spec.name!r} was built with other settings; a run builds the new ones as "
                          "a new version (pipelines.versions.plan_versions)")
    collection = store.ensure_collection(conn, spec.name, spec.model, embedder.dimension, chunk_tokens,
                                         spec.chunk_overlap, settings)
    return collection, embedder
