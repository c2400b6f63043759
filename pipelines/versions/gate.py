"""The gate a version passes to serve searches: scored against the active version (collections.yml
`eval:` and `smoke_queries`), then promoted in one transaction or marked rejected."""

import logging
from pathlib import Path
from typing import Any

import psycopg

from pipelines import store
from pipelines.collection import query_embedder
from pipelines.config import CollectionSpec, ConfigError, version_name
from pipelines.search import HYBRID_DEFAULTS
from pipelines.search.beir import load_qrels, load_queries
from pipelines.store.sqlfiles import query

log = logging.getLogger(__name__)


AUTO_PROMOTE = ("building", "ready", "previous")
"""States a run in `promote: auto` promotes once the gate passes (`ready`: built by a manual run). A
`rejected` version (scored worse, or rolled back) waits for `ragpipe promote`."""


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
    empty = [q for q in smoke if not top_sources(conn, candidate, q)]
    verdict["smoke_empty"] = empty
    passed = not empty
    if empty:
        verdict["reason"] = f"smoke queries with no results: {empty}"
    unjudged = evaluation and active is not None and judged_missing(conn, candidate, evaluation)
    if unjudged:
        passed = False
        verdict["reason"] = unjudged
        log.warning("collection %s: %s", candidate.family, unjudged)
    elif evaluation and active is not None:
        metric, scorer = version_scorer(evaluation)
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


def judged_documents(evaluation: dict[str, Any]) -> set[str]:
    """The source ids the eval set judges relevant (qrels, or the inline queries' `expect`)."""
    if evaluation.get("queries"):
        return {sid for q in evaluation["queries"] for sid in q["expect"]}
    qrels = load_qrels(Path(evaluation["path"]), evaluation.get("split", "test"))
    return {sid for judged in qrels.values() for sid in judged}


def judged_missing(conn: psycopg.Connection, candidate: store.Collection, evaluation: dict[str, Any]) -> str | None:
    """Why the eval set cannot score this collection (none of the documents it judges is in it), or None.
    A score of 0 against 0 would otherwise pass the gate, whatever the versions return."""
    judged = judged_documents(evaluation)
    if store.document_hashes(conn, candidate.id, sorted(judged)):
        return None
    return (f"none of the {len(judged)} documents the eval set judges is in the collection (its ids must be the "
            "collection's source ids): that is not a pass; fix `eval:` in collections.yml, or `--force`")


def check_eval_set(spec: CollectionSpec) -> None:
    """`eval.path` is a readable BEIR data set with judged queries (config check, and the start of a run)."""
    path = spec.eval.get("path")
    if not path:
        return
    dataset, split = Path(path), spec.eval.get("split", "test")
    where = f"collection {spec.family!r}: eval.path {dataset}"
    for needed in ("queries.jsonl", f"qrels/{split}.tsv"):
        if not (dataset / needed).is_file():
            raise ConfigError(f"{where} has no {needed} (a BEIR data set: queries.jsonl and qrels/<split>.tsv, "
                              "their ids the collection's source ids)")
    try:
        qrels = load_qrels(dataset, split)
        queries = load_queries(dataset, set(qrels))
    except (KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"{where} is not a BEIR data set ({type(exc).__name__}: {exc})") from None
    if not qrels or not queries:
        raise ConfigError(f"{where}: qrels/{split}.tsv judges no query of queries.jsonl, so nothing can be scored")


def pinned(c: store.Collection) -> str:
    """The name that reads this version whatever its state (`family@vN`)."""
    return version_name(c.family, c.version)


def top_sources(conn: psycopg.Connection, c: store.Collection, text: str, k: int = 10,
                 mode: str = "hybrid") -> list[str]:
    """Source ids of the best k documents for `text` in version `c` (hybrid search: as users search; semantic
    for a version without a keyword index)."""
    if not store.has_keyword_index(c):
        mode = "semantic"
    embedding = query_embedder(c.family, c.model, c.settings).embed_query(text)
    rows = conn.execute(query("search", mode), dict(HYBRID_DEFAULTS, collection=pinned(c), text=text,
                                                     embedding=embedding, k=10 * k, filter=None)).fetchall()
    return list(dict.fromkeys(r[1] for r in rows))[:k]


def version_scorer(options: dict[str, Any]):
    """(metric name, function scoring a version) for the eval options of collections.yml."""
    k, mode = options.get("k", 10), options.get("mode", "hybrid")
    if options.get("queries"):
        asked = [(q["query"], set(q["expect"])) for q in options["queries"]]

        def hit_rate(conn: psycopg.Connection, c: store.Collection) -> float:
            hits = sum(bool(expect & set(top_sources(conn, c, text, k, mode))) for text, expect in asked)
            return round(hits / len(asked), 4)

        return f"hit_rate@{k}", hit_rate
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    dataset = Path(options["path"])
    qrels = load_qrels(dataset, options.get("split", "test"))
    queries = load_queries(dataset, set(qrels))
    ids = sorted(queries)[:options.get("max_queries", 500)]

    def ndcg(conn: psycopg.Connection, c: store.Collection) -> float:
        run = {}
        for qid in ids:
            top = top_sources(conn, c, queries[qid], k, mode)
            run[qid] = {sid: float(len(top) - i) for i, sid in enumerate(top)} or {"__none__": 0.0}
        return round(float(ranx_evaluate(Qrels({q: qrels[q] for q in ids}), Run(run), f"ndcg@{k}")), 4)

    return f"ndcg@{k}", ndcg
