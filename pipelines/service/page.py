"""The search page: server-rendered HTML; the query lives in the URL, so it works without JS."""

import logging
import re
import time
from functools import cache
from typing import Any

from markupsafe import Markup, escape
from starlette.datastructures import QueryParams

from pipelines.search import MODES
from pipelines.service.requests import MAX_K, BadRequest, error_status, parse_filter

DEFAULT_K = 10
log = logging.getLogger(__name__)


@cache
def _template():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("pipelines.service", "templates"), autoescape=select_autoescape())
    env.filters["highlight"] = highlight
    return env.get_template("search.html")


def render_page(service: Any, params: QueryParams, authorization: str | None) -> str:
    """The page for these URL parameters: the form, and results or a readable error."""
    view: dict[str, Any] = dict(collection=params.get("collection", ""), q=params.get("q", ""),
                                mode=params.get("mode", "hybrid"), filter=params.get("filter", ""),
                                similar=params.get("similar"), k=params.get("k", str(DEFAULT_K)),
                                modes=MODES, collections=[], results=None, error=None, took_ms=None)
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
        started = time.perf_counter()
        if view["similar"]:
            view["results"] = service.similar(role, view["collection"], view["similar"], k)
        elif view["q"].strip():
            view["results"] = service.search(role, view["collection"], view["q"], k, view["mode"],
                                             parse_filter(view["filter"]))
        view["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    except Exception as exc:
        status, message = error_status(exc)
        view["error"] = message
        if status == 500:
            log.error("search page failed", exc_info=exc)
    return _template().render(**view)


def highlight(text: str, query: str) -> Markup:
    """The text, escaped, with the words of the query marked (a word and its plural or other endings)."""
    words = {w.lower() for w in re.findall(r"\w{3,}", query or "")}
    stems = sorted({w[:-1] if len(w) > 4 and w.endswith("s") else w for w in words}, key=len, reverse=True)[:32]
    if not stems:
        return escape(text)
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(s) for s in stems) + r")\w*", re.IGNORECASE)
    parts, last = [], 0
    for match in pattern.finditer(text):
        parts += [escape(text[last:match.start()]), Markup("<mark>%s</mark>") % match.group(0)]
        last = match.end()
    parts.append(escape(text[last:]))
    return Markup("").join(parts)
