"""Re-ranking: a search's best candidates re-scored by a cross-encoder, here (sentence-transformers
CrossEncoder) or behind a /rerank endpoint, before the top k are returned.

    from pipelines.search import search
    hits = search("does coffee raise blood pressure?", collection="sample", k=5, rerank=True)
    print(hits.reranked, hits.rerank_error)

A reranker that fails or times out never fails the search: the first-stage order comes back with
`rerank_error` saying why (docs/rerank.md).
"""

import dataclasses
import functools
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from pipelines.config import RerankOptions
from pipelines.embed.api import endpoint_key, key_headers, post_once, redact
from pipelines.embed.limits import RateLimited, acquire

log = logging.getLogger(__name__)
ANSWER_BYTES_PER_CANDIDATE = 4096
"""An answer may spend this much JSON on each candidate (an index and a score take about 50 bytes)."""
ERROR_CHARS = 300


class RerankFailed(Exception):
    """The reranker gave no usable order (the search returns the first-stage one, flagged)."""


class Reranker(Protocol):
    def scores(self, query: str, texts: list[str]) -> list[float]:
        """One relevance score a text, in the texts' order (higher is more relevant)."""
        ...


@dataclass(frozen=True)
class Reranking:
    """What a rerank did: the top k (re-ordered, or the first-stage order when it failed)."""

    hits: list[Any]
    reranked: bool
    error: str | None
    """Why the first-stage order is returned (None: reranked)."""
    seconds: float


class LocalReranker:
    """A sentence-transformers CrossEncoder run here (a path, or an id in the local Hugging Face cache)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()

    @functools.cached_property
    def _encoder(self) -> Any:
        import os

        from sentence_transformers import CrossEncoder

        from pipelines.embed.names import model_location

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a reranker is never downloaded at search time
        try:
            return CrossEncoder(model_location(self.model), device="cpu", local_files_only=True)
        except Exception as exc:
            raise RerankFailed(f"cannot load the CrossEncoder {self.model!r} ({type(exc).__name__}): give a path "
                               "or a model already in the local Hugging Face cache") from None

    def scores(self, query: str, texts: list[str]) -> list[float]:
        with self._lock:  # one model, one thread at a time
            encoder = self._encoder
            return [float(s) for s in encoder.predict([(query, t) for t in texts], batch_size=32,
                                                      show_progress_bar=False)]


class ApiReranker:
    """An endpoint speaking the common /rerank shape: {model, query, documents, top_n} in, {results:
    [{index, relevance_score}]} out (also `data`, a bare list, or `score`, as TEI and Voyage answer)."""

    def __init__(self, options: RerankOptions) -> None:
        self.options = options
        assert options.base_url
        self.endpoint = options.base_url.rstrip("/") + "/rerank"
        self._client = httpx.Client(follow_redirects=False)

    @property
    def where(self) -> str:
        from pipelines.store.database import mask_url

        return mask_url(self.endpoint)

    def scores(self, query: str, texts: list[str]) -> list[float]:
        """The endpoint's scores, tried 1 + retries times on 429, 5xx or a lost connection, all within timeout_s."""
        options = self.options
        key = endpoint_key(options, f"the rerank endpoint {self.where}", RerankFailed)
        body = {"model": options.model, "query": query, options.documents_field: texts, "top_n": len(texts),
                "return_documents": False}
        deadline = time.monotonic() + options.timeout_s
        reason = f"no answer within {options.timeout_s:g} s"
        for attempt in range(options.retries + 1):
            try:  # the shared rate limit (rerank.rate_limit): a slot before the deadline, or the first-stage order
                acquire(options.rate_limit, self.endpoint, key, sum(len(t) // 3 + 1 for t in [query, *texts]), True,
                        deadline)
            except RateLimited as exc:
                raise RerankFailed(str(exc)) from None
            if deadline - time.monotonic() <= 0.001:
                break
            cap = 65536 + len(texts) * ANSWER_BYTES_PER_CANDIDATE
            done = post_once(self._client, self.endpoint, body, key_headers(options, key), deadline, cap, key,
                             options, f"the rerank endpoint {self.where}", RerankFailed,
                             f"more than {cap} bytes for {len(texts)} texts")
            if done.content is not None:
                return self._scores(done.content, len(texts))
            reason = done.reason
            delay = done.wait if done.wait is not None else 0.1 * 2**attempt * (0.5 + random.random() / 2)
            if attempt == options.retries or time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
        raise RerankFailed(f"the rerank endpoint {self.where}: {reason}")

    def _scores(self, content: bytes, count: int) -> list[float]:
        def bad(why: str) -> RerankFailed:
            return RerankFailed(f"the rerank endpoint {self.where} answered {why}")

        try:
            answer = json.loads(content)
            rows = answer if isinstance(answer, list) else answer.get("results", answer.get("data"))
            pairs = [(row["index"], row["relevance_score"] if "relevance_score" in row else row["score"])
                     for row in rows]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise bad("something that is not a rerank response") from None
        if sorted(i for i, _ in pairs if isinstance(i, int)) != list(range(count)):
            raise bad(f"{len(pairs)} scores for {count} texts")
        scores = [0.0] * count
        for i, score in pairs:
            if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
                raise bad("a score that is not a finite number")
            scores[i] = float(score)
        return scores


@functools.lru_cache(maxsize=16)
def _reranker(settings: str) -> Reranker:
    options = RerankOptions.model_validate_json(settings)
    return ApiReranker(options) if options.base_url else LocalReranker(options.model)


def reranker_for(options: dict[str, Any]) -> Reranker:
    """The reranker `options` (RerankOptions as stored) describe; one a description, loaded once."""
    return _reranker(json.dumps(options, sort_keys=True))


def candidates(options: dict[str, Any] | None, k: int) -> int:
    """How many first-stage hits a search of k fetches: max(k, rerank.candidates) with a reranker, else k."""
    return max(k, RerankOptions.model_validate(options).candidates) if options else k


def rerank(query: str, hits: list[Any], options: dict[str, Any], k: int) -> Reranking:
    """The top k of `hits` (SearchResults, best first) by the reranker's scores (each hit's score becomes
    its reranker score); the first k as they are when the reranker fails, with the reason."""
    started = time.perf_counter()
    if not hits:
        return Reranking([], True, None, 0.0)
    settings = RerankOptions.model_validate(options)
    try:
        scores = reranker_for(options).scores(query, [h.text[:settings.max_chars] for h in hits])
    except Exception as exc:
        key = _key_or_none(settings)
        why = redact(" ".join(str(exc).split()), [key] if key else [])[:ERROR_CHARS]
        if not isinstance(exc, RerankFailed):
            why = f"{type(exc).__name__}: {why}"
        log.warning("rerank failed, the first-stage order is returned: %s", why)
        return Reranking(hits[:k], False, why, time.perf_counter() - started)
    order = sorted(range(len(hits)), key=lambda i: -scores[i])  # stable: ties keep the first-stage order
    ranked = [dataclasses.replace(hits[i], score=scores[i]) for i in order[:k]]
    return Reranking(ranked, True, None, time.perf_counter() - started)


def _key_or_none(options: RerankOptions) -> str | None:
    try:
        return endpoint_key(options, "the rerank endpoint", RerankFailed)
    except RerankFailed:
        return None
