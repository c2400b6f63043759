"""Collection versions: which version a run writes, and the gate a new version passes to serve searches.

A change of `model`, `chunk_tokens`, `chunk_overlap`, `chunk_context` or the HNSW build settings
(`index.m`, `index.ef_construction`) makes the next run build a new version beside the active one:
its own documents, chunk partition and HNSW index, with every vector of the same model reused by
chunk text (pipelines/store cached_embeddings). The active version keeps serving, and is kept in
step by the same run, until the new one is built, scored (`eval:` and `smoke_queries`) and promoted:
two rows renamed in one transaction (ragpipe.promote_version). Nothing else is a new version:
search defaults, ef_search, keyword_candidates or keyword_rescore change in place.
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pipelines import store
from pipelines.chunking import CONTEXT_TOKENS, check_chunk_settings
from pipelines.config import DEFAULT_INDEX, VERSION_MARK, CollectionSpec, ConfigError
from pipelines.embed import Embedder, get_embedder, resolve_model

log = logging.getLogger(__name__)
REBUILD_INDEX_KEYS = ("m", "ef_construction")
"""Index settings that only a new build can change."""
AUTO_PROMOTE = ("building", "ready", "previous")
"""States a run in `promote: auto` promotes once the gate passes (`ready`: built by a manual run). A
`rejected` version (scored worse, or rolled back) waits for `ragpipe promote`."""


@dataclass(frozen=True)
class Targets:
    """What one run writes: the active version (with the settings it was built with) and, when
    collections.yml asks for other build settings, the version being built with them."""

    active: CollectionSpec
    candidate: CollectionSpec | None = None
    note: str | None = None

    def all(self) -> list[CollectionSpec]:
        return [self.active] + ([self.candidate] if self.candidate else [])


def version_name(family: str, version: int) -> str:
    return f"{family}{VERSION_MARK}{version}"


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


def as_built(spec: CollectionSpec, version: store.Collection) -> CollectionSpec:
    """The spec with the build settings of `version` (its other settings, and its name, kept)."""
    built = {**DEFAULT_INDEX, **version.settings.get("index", {})}
    index = {**spec.index, **{k: built[k] for k in REBUILD_INDEX_KEYS}}
    return dataclasses.replace(spec, model=version.model, chunk_tokens=version.chunk_tokens,
                               chunk_overlap=version.chunk_overlap,
                               chunk_context=bool(version.settings.get("chunk_context")), index=index)


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
    embedder = get_embedder(spec.model, spec.batch_size)
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
        name = store.ensure_collection(conn, spec.name, spec.model, embedder.dimension, chunk_tokens,
                                       spec.chunk_overlap, stored_settings(spec), new_version_of=spec.name).name
        log.info("collection %s: new build settings in collections.yml; building version %s beside the active "
                 "version %d, which keeps serving searches", spec.name, name, active.version)
    return Targets(as_built(spec, active), dataclasses.replace(spec, name=name), note)


def conclude(conn: psycopg.Connection, spec: CollectionSpec, promote: str | None = None) -> dict[str, Any]:
    """After a run built or refreshed version `spec.name`: score it against the active version and
    promote it if the gate passes (`promote`: auto, manual or force; default: collections.yml)."""
    candidate = store.get_collection(conn, spec.name)
    assert candidate is not None, f"version {spec.name!r} vanished during the run"
    mode = promote or spec.promote["mode"]
    if candidate.state not in AUTO_PROMOTE and mode != "force":
        return {"version": candidate.version, "state": candidate.state, "promoted": False}
    if candidate.state == "building":  # complete now: promotable
        store.set_version_state(conn, candidate, "ready")
    if mode == "manual":
        return {"version": candidate.version, "state": "ready", "promoted": False}
    return decide(conn, candidate, spec.eval, spec.smoke_queries, spec.promote["max_drop"], force=mode == "force")


def decide(conn: psycopg.Connection, candidate: store.Collection, evaluation: dict[str, Any], smoke: list[str],
           max_drop: float, force: bool = False) -> dict[str, Any]:
    """Promote the candidate if the gate passes (or `force`), else mark it rejected; the verdict is stored."""
    verdict = gate(conn, candidate, evaluation, smoke, max_drop)
    if verdict["passed"] or force:
        store.set_evaluation(conn, candidate, verdict)
        before = store.promote_version(conn, candidate.family, candidate.version)
        log.info("collection %s: version %d promoted (was %d)", candidate.family, candidate.version, before)
        return {"version": candidate.version, "state": "active", "promoted": True, "replaced": before,
                "evaluation": verdict}
    store.set_version_state(conn, candidate, "rejected", verdict)
    log.warning("collection %s: version %d not promoted: %s", candidate.family, candidate.version, verdict["reason"])
    return {"version": candidate.version, "state": "rejected", "promoted": False, "evaluation": verdict}


def gate(conn: psycopg.Connection, candidate: store.Collection, evaluation: dict[str, Any], smoke: list[str],
         max_drop: float) -> dict[str, Any]:
    """Score the candidate and the active version on the eval set; check the smoke queries. Passed:
    no smoke query comes back empty and the score drops by at most max_drop."""
    active = store.get_collection(conn, candidate.family)
    verdict: dict[str, Any] = {"max_drop": max_drop, "reason": "no eval set configured; smoke queries passed"}
    empty = [q for q in smoke if not _top_sources(conn, candidate, q)]
    verdict["smoke_empty"] = empty
    passed = not empty
    if empty:
        verdict["reason"] = f"smoke queries with no results: {empty}"
    if evaluation and active is not None:
        metric, scorer = _scorer(evaluation)
        new, old = scorer(conn, candidate), scorer(conn, active)
        drop = round(old - new, 4)
        verdict.update(metric=metric, candidate=new, active=old, drop=drop)
        if drop > max_drop:
            passed = False
            verdict["reason"] = (f"{metric} {new:.4f} against {old:.4f} for the active version: a drop of "
                                 f"{drop:.4f} > max_drop {max_drop}")
        elif not empty:
            verdict["reason"] = f"{metric} {new:.4f} against {old:.4f} for the active version"
    verdict["passed"] = passed
    return verdict


def pinned(c: store.Collection) -> str:
    """The name that reads this version whatever its state (`family@vN`)."""
    return version_name(c.family, c.version)


def _top_sources(conn: psycopg.Connection, c: store.Collection, text: str, k: int = 10,
                 mode: str = "hybrid") -> list[str]:
    """Source ids of the best k documents for `text` in version `c` (hybrid search: as users search)."""
    from pipelines.search import HYBRID_DEFAULTS
    from pipelines.store.sqlfiles import query

    embedding = get_embedder(c.model).encode([text])[0]
    rows = conn.execute(query("search", mode), dict(HYBRID_DEFAULTS, collection=pinned(c), text=text,
                                                     embedding=embedding, k=10 * k, filter=None)).fetchall()
    return list(dict.fromkeys(r[1] for r in rows))[:k]


def _scorer(options: dict[str, Any]):
    """(metric name, function scoring a version) for the eval options of collections.yml."""
    k, mode = options.get("k", 10), options.get("mode", "hybrid")
    if options.get("queries"):
        asked = [(q["query"], set(q["expect"])) for q in options["queries"]]

        def hit_rate(conn: psycopg.Connection, c: store.Collection) -> float:
            hits = sum(bool(expect & set(_top_sources(conn, c, text, k, mode))) for text, expect in asked)
            return round(hits / len(asked), 4)

        return f"hit_rate@{k}", hit_rate
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    from pipelines.search.evaluate import load_qrels, load_queries

    dataset = Path(options["path"])
    qrels = load_qrels(dataset, options.get("split", "test"))
    queries = load_queries(dataset, set(qrels))
    ids = sorted(queries)[:options.get("max_queries", 500)]

    def ndcg(conn: psycopg.Connection, c: store.Collection) -> float:
        run = {}
        for qid in ids:
            top = _top_sources(conn, c, queries[qid], k, mode)
            run[qid] = {sid: float(len(top) - i) for i, sid in enumerate(top)} or {"__none__": 0.0}
        return round(float(ranx_evaluate(Qrels({q: qrels[q] for q in ids}), Run(run), f"ndcg@{k}")), 4)

    return f"ndcg@{k}", ndcg


# The commands (ragpipe versions / promote / rollback / prune), each under the collection's lock.

def list_versions(family: str, url: str | None = None) -> list[dict[str, Any]]:
    from pipelines.ingest import open_database
    from pipelines.store.database import connect

    with connect(open_database(url)) as conn:
        rows = store.versions(conn, family)
    if not rows:
        raise ConfigError(f"no collection named {family!r}; `ragpipe status` lists them")
    return rows


def promote(spec: CollectionSpec, version: int, force: bool = False, url: str | None = None) -> dict[str, Any]:
    """Make `version` active: scored first (collections.yml eval and smoke_queries) unless `force`."""
    from pipelines.ingest import locked_connection

    with locked_connection(spec, url) as conn:
        candidate = store.get_collection(conn, version_name(spec.family, version))
        if candidate is None:
            raise ConfigError(f"collection {spec.family!r} has no version {version}; `ragpipe versions "
                              f"{spec.family}` lists them")
        if candidate.state == "active":
            return {"version": version, "state": "active", "promoted": False}
        if candidate.state == "building":
            raise ConfigError(f"version {version} of {spec.family!r} is still being built; run the ingest again "
                              "to finish it")
        return decide(conn, candidate, spec.eval, spec.smoke_queries, spec.promote["max_drop"], force=force)


def rollback(spec: CollectionSpec, url: str | None = None) -> int:
    """Make the previously active version active again; returns its number."""
    from pipelines.ingest import locked_connection

    with locked_connection(spec, url) as conn:
        return store.rollback_version(conn, spec.family)


def prune(spec: CollectionSpec, url: str | None = None) -> list[int]:
    """Drop every version that is neither active nor being built; their vectors stay in the cache."""
    from pipelines.ingest import locked_connection

    with locked_connection(spec, url) as conn:
        gone = [v for v in store.versions(conn, spec.family) if v["state"] not in ("active", "building")]
        for v in gone:
            store.drop_version(conn, v["id"])
        return [v["version"] for v in gone]
