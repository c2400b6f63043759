"""The search page: server-rendered HTML; the query lives in the URL, so it works without JS."""

import logging
import re
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from markupsafe import Markup, escape
from starlette.datastructures import QueryParams

from pipelines.search import MODES
from pipelines.service.backend import MARK_END, MARK_START
from pipelines.service.requests import MAX_K, BadRequest, error_status, parse_filter

DEFAULT_K = 10
MARKED_HITS = 50
"""The page marks the query's words in this many hits at most (the rest are shown plain): marking is
PostgreSQL's ts_headline over each whole text, the page's costliest step at a large k."""
AROUND_NEIGHBOURS = 2
"""Chunks before and after a hit that the page's "in context" view shows."""
RERANK_CHOICES: dict[str, bool | None] = {"": None, "on": True, "off": False}
"""The page's `rerank` parameter: as the collection says, on, off."""
log = logging.getLogger(__name__)


@cache
def _template():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("pipelines.service", "templates"), autoescape=select_autoescape())
    return env.get_template("search.html")


def render_page(service: Any, params: QueryParams, authorization: str | None) -> tuple[str, int]:
    """The page for these URL parameters (the form, and results grouped by document or a readable error)
    and its HTTP status: an error is the status error_status gives it, as in the API."""
    view: dict[str, Any] = dict(collection=params.get("collection", ""), q=params.get("q", ""),
                                mode=params.get("mode", "hybrid"), filter=params.get("filter", ""),
                                similar=params.get("similar"), k=params.get("k", str(DEFAULT_K)),
                                language=params.get("language") or None, rerank=params.get("rerank", ""),
                                around=None, modes=MODES, collections=[], results=None, documents=None, error=None,
                                took_ms=None)
    try:
        role = service.role(authorization)
        view["collections"] = service.collections(role)
        if not view["collection"] and view["collections"]:
            view["collection"] = view["collections"][0]["name"]
        if view["mode"] not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}")
        if not view["k"].isdigit() or not 1 <= int(view["k"]) <= MAX_K:
            raise BadRequest(f"k must be a whole number from 1 to {MAX_K}")
        k = int(view["k"])
        if view["rerank"] not in RERANK_CHOICES:
            raise BadRequest("rerank must be on, off or empty (as the collection says)")
        started = time.perf_counter()
        marked: list[Markup] = []
        if params.get("around"):  # a hit's passage in context: its chunk and AROUND_NEIGHBOURS each side
            if not params["around"].isdigit():
                raise BadRequest("around must be a chunk id (a search hit's chunk_id)")
            view["around"] = service.chunk_context(role, view["collection"], int(params["around"]), AROUND_NEIGHBOURS)
        elif view["similar"]:
            view["results"] = service.similar(role, view["collection"], view["similar"], k)
            marked = [escape(r.text) for r in view["results"]]
        elif view["q"].strip():
            view["results"] = service.search(role, view["collection"], view["q"], k, view["mode"],
                                             parse_filter(view["filter"]), view["language"],
                                             RERANK_CHOICES[view["rerank"]])
            results = view["results"]
            marked = [highlight(t) for t in service.marked(view["collection"], results[:MARKED_HITS], view["q"],
                                                           view["language"])]
            marked += [escape(r.text) for r in results[MARKED_HITS:]]
        if view["results"] is not None:
            view["documents"] = by_document(view["results"], marked)
        view["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    except Exception as exc:
        status, message = error_status(exc)
        view["error"] = message
        service.metrics.errors.labels(type(exc).__name__).inc()
        if status == 500:
            log.error("search page failed", exc_info=exc)
        return _template().render(**view), status
    return _template().render(**view), 200


@dataclass
class DocumentHits:
    """One document's hits on the page: its best passage, and the others folded under it."""

    best: Any
    text: Markup
    others: list[tuple[Any, Markup]] = field(default_factory=list)


def by_document(results: list, marked: list[Markup]) -> list[DocumentHits]:
    """Hits grouped by document in the order of each document's best hit (results come best first)."""
    groups: dict[str, DocumentHits] = {}
    for hit, text in zip(results, marked, strict=True):
        if hit.source_id in groups:
            groups[hit.source_id].others.append((hit, text))
        else:
            groups[hit.source_id] = DocumentHits(hit, text)
    return list(groups.values())


def highlight(marked: str) -> Markup:
    """A text marked by SearchService.marked, escaped, with the marked words in <mark>."""
    parts = re.split(f"{MARK_START}(.*?){MARK_END}", marked, flags=re.S)
    return Markup("").join(escape(p) if i % 2 == 0 else Markup("<mark>%s</mark>") % p for i, p in enumerate(parts))
