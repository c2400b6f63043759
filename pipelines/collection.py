"""A collection's build settings: how a spec of collections.yml maps to one collection row.

The build key (model, chunking, chunk context, written context, document prompt, HNSW build
settings) is what a row was built with; a spec with another key is another version
(pipelines/versions decides which row a run writes). Search defaults, ef_search,
keyword_candidates, keyword_rescore, the query prompt, the reranker and the endpoint options of an
API model or a context writer are stored settings that change in place.
"""

import dataclasses
import functools
from typing import Any

import psycopg

from pipelines import store
from pipelines.chunking import CONTEXT_TOKENS, check_chunk_settings
from pipelines.config import DEFAULT_INDEX, STORAGE_LIMITS, CollectionSpec, ConfigError
from pipelines.embed import Embedder, embedder_for, resolve_model
from pipelines.store.languages import language_oids

REBUILD_INDEX_KEYS = ("m", "ef_construction", "quantization")
"""Index settings that only a new build can change."""


def stored_settings(spec: CollectionSpec) -> dict[str, Any]:
    """The collection settings stored with a version (ragpipe.collections.settings)."""
    return {"index": spec.index, **({"search": spec.search} if spec.search else {}),
            **({"chunk_context": True} if spec.chunk_context else {}),
            **({"prompts": spec.prompts} if spec.prompts else {}),
            **({"embedder": spec.embedder} if spec.embedder else {}),
            **({"storage": spec.storage} if spec.storage != "float32" else {}),
            **({"dimensions": spec.dimensions} if spec.dimensions else {}),
            **({"keyword": False} if not spec.keyword else {}),
            **({"rerank": spec.rerank} if spec.rerank else {}),
            **({"enrich": spec.enrich} if spec.enrich else {}),
            **({"language": spec.language} if spec.language != "english" else {}),
            **({"languages": sorted(set(spec.languages) - {spec.language})} if set(spec.languages) - {spec.language}
               else {})}


def text_tokens(chunk_tokens: int, settings: dict[str, Any], prompt_tokens: int = 0) -> int:
    """The tokens a chunk's own text may use: chunk_tokens less the context header's reserve, the
    written context's (enrich.context.max_tokens, and a line break) and the document prompt's tokens."""
    written = context_options(settings)
    return (chunk_tokens - (CONTEXT_TOKENS if settings.get("chunk_context") else 0) - prompt_tokens
            - (written["max_tokens"] + 1 if written else 0))


def context_options(settings: dict[str, Any]) -> dict[str, Any] | None:
    """enrich.context (ContextOptions, defaults filled in) of a collection's settings, or None."""
    given = (settings.get("enrich") or {}).get("context")
    if not given:
        return None
    from pipelines.config import ContextOptions

    return ContextOptions.model_validate(given).model_dump()


def context_key(settings: dict[str, Any]) -> tuple | None:
    """What the written context depends on (a change is a new version): model, prompt and budgets."""
    written = context_options(settings)
    return written and (written["model"], written["prompt"], written["max_tokens"], written["document_tokens"])


def chunk_tokens_for(spec: CollectionSpec, embedder: Embedder, existing: store.Collection | None) -> int:
    """The spec's chunk_tokens (unset: the model's limit, or what the same model was built with), checked."""
    same_model = existing is not None and existing.model == spec.model
    chunk_tokens = spec.chunk_tokens or (existing.chunk_tokens if same_model else embedder.default_chunk_tokens)
    if chunk_tokens > embedder.max_tokens:
        raise ConfigError(f"collection {spec.family!r}: chunk_tokens={chunk_tokens} exceeds the model's limit "
                          f"of {embedder.max_tokens} tokens; the model would truncate the chunks")
    try:
        check_chunk_settings(embedder.chunk_tokenizer,
                             text_tokens(chunk_tokens, stored_settings(spec), embedder.document_prompt_tokens),
                             spec.chunk_overlap)
    except ValueError as exc:
        prompt = embedder.document_prompt_tokens
        if prompt and prompt >= chunk_tokens // 2:
            limit = "" if spec.chunk_tokens else " (the model's limit)"
            raise ConfigError(f"collection {spec.family!r}: the document prompt takes {prompt} of the {chunk_tokens} "
                              f"tokens of each chunk{limit}, leaving too few for its text: shorten "
                              "prompts.document") from None
        raise ConfigError(f"collection {spec.family!r}: {exc}") from None
    return chunk_tokens


def build_key(model: str, chunk_tokens: int, chunk_overlap: int, settings: dict[str, Any]) -> tuple:
    """Everything a version is built with; a different key is a different version."""
    index = {**DEFAULT_INDEX, **settings.get("index", {})}
    return (model, chunk_tokens, chunk_overlap, bool(settings.get("chunk_context")),
            *(index[k] for k in REBUILD_INDEX_KEYS), (settings.get("prompts") or {}).get("document"),
            settings.get("storage", "float32"), settings.get("dimensions"), settings.get("language", "english"),
            tuple(settings.get("languages", ())), settings.get("keyword", True), context_key(settings))


def check_languages(conn: psycopg.Connection, spec: CollectionSpec) -> None:
    """ConfigError naming a language the database has no text search configuration for."""
    wanted = {spec.language, *spec.languages}
    missing = wanted - set(language_oids(conn, wanted))
    if missing:
        raise ConfigError(f"collection {spec.family!r}: the database has no text search configuration "
                          f"{', '.join(sorted(missing))}; `SELECT cfgname FROM pg_ts_config` lists those it has "
                          "(simple works for any language, without stemming)")


def check_storage(family: str, model: str, dimension: int, settings: dict[str, Any]) -> None:
    """ConfigError, before anything is embedded, when the index cannot hold vectors this wide."""
    index = {**DEFAULT_INDEX, **settings.get("index", {})}
    kind = "binary" if index["quantization"] == "binary" else settings.get("storage", "float32")
    limit = STORAGE_LIMITS[kind]
    if dimension <= limit:
        return
    options = [f"`{option}`" for option, widest in (("storage: halfvec", STORAGE_LIMITS["halfvec"]),
                                                      ("index: {quantization: binary}", STORAGE_LIMITS["binary"]))
               if widest >= dimension and widest > limit]
    raise ConfigError(f"collection {family!r}: model {model!r} makes {dimension}-dimension vectors and an HNSW index "
                      f"on {kind} holds at most {limit}: set " + " or ".join(
                          [*options, f"`dimensions: {limit}` or fewer (Matryoshka models)"]))


def key_of(c: store.Collection | dict[str, Any]) -> tuple:
    row = dataclasses.asdict(c) if isinstance(c, store.Collection) else c
    return build_key(row["model"], row["chunk_tokens"], row["chunk_overlap"], row["settings"])


def open_collection(conn: psycopg.Connection, spec: CollectionSpec) -> tuple[store.Collection, Embedder]:
    """The row named `spec.name` (a collection's first is created on first use) and its embedder; the
    model loads only when needed. Settings that need no rebuild (search defaults, ef_search) are
    updated; other build settings are a new version (pipelines.versions.plan_versions decides which)."""
    existing = store.get_collection(conn, spec.name)
    spec = dataclasses.replace(spec, model=resolve_model(spec.model, existing.model if existing else None))
    settings = stored_settings(spec)
    embedder = embedder_for(spec.model, settings, spec.batch_size)
    if existing is not None and existing.model == spec.model and (
            spec.chunk_tokens in (None, existing.chunk_tokens) and spec.chunk_overlap == existing.chunk_overlap
            and existing.settings == settings):
        embedder.expect_dimension(existing.dimension)
        return existing, embedder
    chunk_tokens = chunk_tokens_for(spec, embedder, existing)
    if existing is not None and key_of(existing) != build_key(spec.model, chunk_tokens, spec.chunk_overlap, settings):
        raise ConfigError(f"collection {spec.name!r} was built with other settings; a run builds the new ones as "
                          "a new version (pipelines.versions.plan_versions)")
    check_storage(spec.family, spec.model, embedder.dimension, settings)
    check_languages(conn, spec)
    collection = store.ensure_collection(conn, spec.name, spec.model, embedder.dimension, chunk_tokens,
                                         spec.chunk_overlap, settings)
    return collection, embedder


def embedder_of(c: store.Collection, batch_size: int = 32) -> Embedder:
    """The embedder version `c` was built with (model, prompts, endpoint options)."""
    return embedder_for(c.model, c.settings, batch_size)


def query_embedder(family: str, model: str, settings: dict[str, Any]) -> Embedder:
    """What a search of a version of `family` built with `model` and `settings` embeds its query with:
    that model and endpoint, and the query prompt collections.yml declares for the collection now
    (when it declares the same model; else the one stored with the version), so a new query prompt
    applies at once, with no run."""
    declared = declared_spec(family)
    if declared is not None and resolve_model(declared.model, model) == model:
        prompts = {k: v for k, v in (settings.get("prompts") or {}).items() if k != "query"}
        prompts.update({k: v for k, v in declared.prompts.items() if k == "query"})
        settings = {**settings, "prompts": prompts}
    return embedder_for(model, settings)


def rerank_options(family: str, settings: dict[str, Any], asked: bool | None = None) -> dict[str, Any] | None:
    """The reranker (RerankOptions) a search of `family` uses: collections.yml's `rerank:` now when it
    declares the collection (a change applies at once, with no run), else the one stored with the
    version; None when `asked` is False. asked=True of a collection without one is a ConfigError."""
    if asked is False:
        return None
    declared = declared_spec(family)
    options = declared.rerank if declared is not None else settings.get("rerank")
    if asked and not options:
        raise ConfigError(f"collection {family!r} has no reranker: add `rerank: {{model: ...}}` to it in "
                          "collections.yml (docs/rerank.md), or search without rerank")
    return options


def declared_spec(family: str) -> CollectionSpec | None:
    """The collection as collections.yml declares it now (None: not declared, or no readable file)."""
    from pipelines.settings import load_settings

    path = load_settings().collections_file
    try:
        stat = path.stat()
    except OSError:
        return None
    return _declared(str(path), stat.st_mtime_ns, stat.st_size).get(family)


@functools.lru_cache(maxsize=4)
def _declared(path: str, mtime_ns: int, size: int) -> dict[str, CollectionSpec]:
    from pathlib import Path

    from pipelines.config import load_collections

    try:
        return load_collections(Path(path))
    except ConfigError:
        return {}
