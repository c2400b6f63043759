"""Embedding through an OpenAI-compatible /v1/embeddings endpoint (OpenAI, Azure OpenAI, Ollama,
vLLM, Hugging Face TEI, LiteLLM): batched by count and estimated tokens, requests in parallel,
429 and 5xx retried with bounded back-off (honouring Retry-After), every answer checked."""

import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np

from pipelines.config import ApiOptions
from pipelines.embed.base import Embedder
from pipelines.embed.errors import EmbeddingFailed
from pipelines.embed.names import PACKAGED_MODELS, model_location, split_api_model_id

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 3
"""The token estimate of a text is its length / 3 (English averages about 4 characters a token)."""
DEFAULT_CHUNK_TOKENS = 512
QUERY_BACKOFF_S = 2.0
"""A query waits at most this long before its one retry (a search must answer soon or say why)."""
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def request_batches(texts: list[str], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indexes of `texts` in requests of at most batch_size texts and max_tokens estimated tokens
    (a text over the budget goes alone)."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i, text in enumerate(texts):
        cost = estimate_tokens(text)
        if current and (len(current) >= batch_size or tokens + cost > max_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += cost
    return batches + [current] if current else batches


def password_of(connection: str) -> str | None:
    """The password of an Airflow connection given as a URI or as JSON (AIRFLOW_CONN_<ID>)."""
    if connection.lstrip().startswith("{"):
        return json.loads(connection).get("password")
    password = urlsplit(connection).password
    return unquote(password) if password else None


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the endpoint asks to wait (Retry-After: seconds or an HTTP date), if it says."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


class ApiEmbedder(Embedder):
    def __init__(self, model_id: str, options: dict[str, Any], query_prompt: str | None = None,
                 document_prompt: str | None = None) -> None:
        self.model_id = model_id
        self.model, self.requested_dimensions = split_api_model_id(model_id)
        self.options = ApiOptions.model_validate({**options, "dimensions": self.requested_dimensions})
        self.batch_size = self.options.batch_size
        self.query_prompt = query_prompt or ""
        self.document_prompt = document_prompt or ""
        self.endpoint = self.options.base_url.rstrip("/") + "/embeddings"
        self._dimension = self.requested_dimensions
        self._dimension_lock = threading.Lock()

    @cached_property
    def _client(self) -> httpx.Client:
        return httpx.Client(follow_redirects=False, limits=httpx.Limits(max_connections=self.options.concurrency + 1))

    @property
    def where(self) -> str:
        """The endpoint, for messages (credentials in the URL masked; the key is never in it)."""
        from pipelines.store.database import mask_url

        return mask_url(self.endpoint)

    @property
    def max_tokens(self) -> int:
        return self.options.max_input_tokens

    @property
    def default_chunk_tokens(self) -> int:
        return min(DEFAULT_CHUNK_TOKENS, self.max_tokens)

    @cached_property
    def chunk_tokenizer(self) -> Any:
        """A local tokenizer to count chunk tokens with (the endpoint's own is not at hand)."""
        from transformers import AutoTokenizer

        name = self.options.tokenizer or next(iter(sorted(PACKAGED_MODELS)))
        tokenizer = AutoTokenizer.from_pretrained(model_location(name))
        tokenizer.model_max_length = 10**9  # counting only: no "sequence too long" warning
        return tokenizer

    @property
    def dimension(self) -> int:
        """The vectors' width: asked for, or the endpoint's answer to one probe text."""
        if self._dimension is None:
            self._post(["dimension probe"], self.options.timeout_s, self.options.retries, self.options.max_backoff_s)
        assert self._dimension is not None
        return self._dimension

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.document_prompt + t for t in texts], self.options.timeout_s,
                            self.options.retries, self.options.max_backoff_s)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.query_prompt + t for t in texts], self.options.query_timeout_s,
                            min(1, self.options.retries), min(QUERY_BACKOFF_S, self.options.max_backoff_s))

    def _encode(self, texts: list[str], timeout: float, retries: int, max_backoff: float) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = request_batches(texts, self.options.batch_size, self.options.max_tokens_per_request)
        out: list[np.ndarray | None] = [None] * len(texts)

        def one(indexes: list[int]) -> None:
            vectors = self._post([texts[i] for i in indexes], timeout, retries, max_backoff)
            for i, v in zip(indexes, vectors, strict=True):
                out[i] = v

        if len(batches) == 1 or self.options.concurrency == 1:
            for b in batches:
                one(b)
        else:
            with ThreadPoolExecutor(min(self.options.concurrency, len(batches)), "ragpipe-embed") as pool:
                futures = [pool.submit(one, b) for b in batches]
                try:
                    for f in futures:
                        f.result()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        return np.stack(out).astype(np.float32, copy=False)  # type: ignore[arg-type]

    def _headers(self) -> dict[str, str]:
        key = self._key()
        if not key:
            return {}
        return {"api-key": key} if self.options.key_header == "api-key" else {"Authorization": f"Bearer {key}"}

    def _key(self) -> str | None:
        """The API key: from the Airflow connection when one is named, else $api_key_env (unset: none)."""
        if self.options.connection:
            env = os.environ.get(f"AIRFLOW_CONN_{self.options.connection.upper()}")
            if env:
                return password_of(env)
            try:
                from airflow.sdk import BaseHook

                return BaseHook.get_connection(self.options.connection).password
            except Exception:
                raise EmbeddingFailed(
                    f"no Airflow connection {self.options.connection!r} for the embedding endpoint {self.where}: "
                    f"set AIRFLOW_CONN_{self.options.connection.upper()} (its password is the key) or add it "
                    "in Airflow") from None
        return os.environ.get(self.options.api_key_env) if self.options.api_key_env else None

    def _post(self, inputs: list[str], timeout: float, retries: int, max_backoff: float) -> list[np.ndarray]:
        """One request, tried 1 + `retries` times on 429, 5xx, a timeout or a lost connection."""
        body: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "float"}
        if self.requested_dimensions:
            body["dimensions"] = self.requested_dimensions
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                response = self._client.post(self.endpoint, json=body, headers=self._headers(),
                                             timeout=httpx.Timeout(timeout))
            except httpx.TimeoutException:
                reason, wait = f"no answer within {timeout:g} s", None
            except httpx.TransportError as exc:
                reason, wait = f"cannot connect ({type(exc).__name__})", None
            else:
                if response.status_code == 200:
                    return self._vectors(response, len(inputs))
                reason, wait = f"HTTP {response.status_code}{self._detail(response)}", retry_after(response)
                if response.status_code not in RETRY_STATUS:
                    hint = (f"; check the key in {self._key_source()}"
                            if response.status_code in (401, 403) else "")
                    raise EmbeddingFailed(f"the embedding endpoint {self.where} refused the request: {reason}{hint}")
            if last:
                break
            delay = min(max_backoff, wait if wait is not None else 0.5 * 2**attempt * (0.5 + random.random() / 2))
            log.warning("embedding endpoint %s: %s; try %d of %d in %.1f s", self.where, reason, attempt + 2,
                        retries + 1, delay)
            time.sleep(delay)
        raise EmbeddingFailed(f"the embedding endpoint {self.where} failed {retries + 1} tries: {reason}. Batches "
                              "already stored are kept; run again when it answers")

    def _key_source(self) -> str:
        if self.options.connection:
            return f"the Airflow connection {self.options.connection!r}"
        return f"${self.options.api_key_env}" if self.options.api_key_env else "embedder.api_key_env (none is set)"

    def _detail(self, response: httpx.Response) -> str:
        """The endpoint's own error message, short, with the key masked should it be echoed."""
        try:
            message = response.json().get("error", {})
            message = message.get("message", "") if isinstance(message, dict) else str(message)
        except (ValueError, AttributeError):
            message = response.text
        message = " ".join(str(message).split())[:200]
        key = self._key()
        if key:
            message = message.replace(key, "***")
        return f" ({message})" if message else ""

    def _vectors(self, response: httpx.Response, count: int) -> list[np.ndarray]:
        """The answer's vectors in input order, normalised; EmbeddingFailed when they cannot be used."""
        def bad(why: str) -> EmbeddingFailed:
            return EmbeddingFailed(f"the embedding endpoint {self.where} answered {why}; nothing of this batch "
                                   "is stored")

        try:
            data = response.json()["data"]
            rows = sorted(data, key=lambda d: d["index"])
            raw = [d["embedding"] for d in rows]
        except (ValueError, KeyError, TypeError):
            raise bad("something that is not an embeddings response") from None
        if len(raw) != count or sorted(d["index"] for d in rows) != list(range(count)):
            raise bad(f"{len(raw)} vectors for {count} texts")
        vectors = []
        for v in raw:
            if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
                raise bad("a vector that is not a list of numbers")
            array = np.asarray(v, dtype=np.float64)
            if not np.all(np.isfinite(array)):
                raise bad("a vector with NaN or infinite values")
            self._check_dimension(len(array), bad)
            norm = np.linalg.norm(array)
            if norm == 0:
                raise bad("a zero vector")
            vectors.append((array / norm).astype(np.float32))
        return vectors

    def _check_dimension(self, width: int, bad: Any) -> None:
        with self._dimension_lock:
            if self._dimension is None:
                self._dimension = width
        if width != self._dimension:
            raise bad(f"a vector of {width} dimensions where {self._dimension} were "
                      f"{'asked for' if self.requested_dimensions else 'answered before'}")
