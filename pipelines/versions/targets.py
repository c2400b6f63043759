"""Which versions a run writes: the active one (with the build settings it was built with) and,
when collections.yml asks for other build settings, the version being built with them."""

import dataclasses
import logging
from dataclasses import dataclass

import psycopg

from pipelines import store
from pipelines.collection import (
    REBUILD_INDEX_KEYS,
    build_key,
    check_languages,
    check_storage,
    chunk_tokens_for,
    context_key,
    key_of,
    stored_settings,
)
from pipelines.config import DEFAULT_INDEX, CollectionSpec
from pipelines.embed import embedder_for, resolve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Targets:
    """What one run writes: the active version (with the settings it was built with) and, when
    collections.yml asks for other build settings, the version being built with them."""

    active: CollectionSpec
    candidate: CollectionSpec | None = None
    note: str | None = None

    def all(self) -> list[CollectionSpec]:
        return [self.active] + ([self.candidate] if self.candidate else [])


def as_built(spec: CollectionSpec, version: store.Collection) -> CollectionSpec:
    """The spec with the build settings of `version` (its other settings, and its name, kept)."""
    built = {**DEFAULT_INDEX, **version.settings.get("index", {})}
    index = {**spec.index, **{k: built[k] for k in REBUILD_INDEX_KEYS}}
    stored = version.settings.get("prompts") or {}
    if resolve_model(spec.model, version.model) == version.model:  # the query side follows collections.yml
        prompts = {**{k: v for k, v in spec.prompts.items() if k == "query"},
                   **{k: v for k, v in stored.items() if k == "document"}}
        embedder = spec.embedder
    else:  # another model's version keeps its own
        prompts, embedder = stored, version.settings.get("embedder") or {}
    enrich = version.settings.get("enrich") or {}
    if context_key({"enrich": spec.enrich}) == context_key(version.settings):  # its endpoint follows collections.yml
        enrich = spec.enrich
    return dataclasses.replace(spec, model=version.model, chunk_tokens=version.chunk_tokens, enrich=enrich,
                               chunk_overlap=version.chunk_overlap, prompts=prompts, embedder=embedder,
                               storage=version.settings.get("storage", "float32"),
                               language=version.settings.get("language", "english"),
                               languages=version.settings.get("languages", []),
                               dimensions=version.settings.get("dimensions"),
                               chunk_context=bool(version.settings.get("chunk_context")), index=index,
                               keyword=version.settings.get("keyword", True) is not False)


def spec_for(conn: psycopg.Connection, spec: CollectionSpec, name: str) -> CollectionSpec:
    """The spec that writes version `name` of the collection (a task given the name by its plan)."""
    version = store.get_collection(conn, name)
    return as_built(dataclasses.replace(spec, name=name), version) if version else spec


def plan_versions(conn: psycopg.Connection, spec: CollectionSpec) -> Targets:
    """The versions a run of `spec` writes; creates the new version's row when one is needed."""
    active = store.get_collection(conn, spec.name)
    spec = dataclasses.replace(spec, model=resolve_model(spec.model, active.model if active else None))
    if active is None:
        return Targets(spec)
    # Unchanged build settings (every plain re-run) are decided without loading the model: the model
    # is part of the key, so with the same model an unset chunk_tokens means the active version's.
    if key_of(active) == build_key(spec.model, spec.chunk_tokens or active.chunk_tokens, spec.chunk_overlap,
                                   stored_settings(spec)):
        return Targets(spec)
    embedder = embedder_for(spec.model, stored_settings(spec), spec.batch_size)
    chunk_tokens = chunk_tokens_for(spec, embedder, active)
    wanted = build_key(spec.model, chunk_tokens, spec.chunk_overlap, stored_settings(spec))
    if key_of(active) == wanted:
        return Targets(spec)
    same = [v for v in store.versions(conn, spec.name) if v["state"] != "active" and key_of(v) == wanted]
    note = None
    if same:
        name, state, version = same[-1]["name"], same[-1]["state"], same[-1]["version"]
        if state == "rejected":
            note = (f"version {version} of {spec.name!r} has the settings of collections.yml and is {state}; "
                    f"it is kept in step, and `ragpipe promote {spec.name} {version}` makes it active")
    else:
        check_storage(spec.family, spec.model, embedder.dimension, stored_settings(spec))
        check_languages(conn, spec)
        name = store.ensure_collection(conn, spec.name, spec.model, embedder.dimension, chunk_tokens,
                                       spec.chunk_overlap, stored_settings(spec), new_version_of=spec.name).name
        log.info("collection %s: new build settings in collections.yml; building version %s beside the active "
                 "version %d, which keeps serving searches", spec.name, name, active.version)
    return Targets(as_built(spec, active), dataclasses.replace(spec, name=name), note)
