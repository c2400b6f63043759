"""Embedding through an OpenAI-compatible /v1/embeddings endpoint (OpenAI, Azure OpenAI, Ollama,
vLLM, Hugging Face TEI, LiteLLM): batched by count and estimated tokens, requests in parallel,
429 and 5xx retried with bounded back-off (honouring Retry-After), every answer checked."""

import base64
import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import numpy as np

from pipelines.config import ApiOptions, EndpointKey
from pipelines.embed.base import Embedder, Tokens
from pipelines.embed.errors import EmbeddingFailed
from pipelines.embed.names import PACKAGED_MODELS, model_location, split_api_model_id

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 3
"""The token estimate of a text is its length / 3 (English averages about 4 characters a token)."""
DEFAULT_CHUNK_TOKENS = 512
QUERY_BACKOFF_S = 2.0
"""A query waits at most this long before its one retry (a search must answer soon or say why)."""
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
ERROR_BODY_BYTES = 64 * 1024
"""An error answer is read this far (only its message is shown)."""
BYTES_PER_NUMBER = 32
"""An answer may spend this many bytes of JSON on each number of its vectors (a float is 20 at most)."""
ANSWER_SLACK_BYTES = 1 << 20
WIDEST = 16_000
"""Widths an answer's size cap assumes before the endpoint's width is known (ApiOptions.dimensions' limit)."""
DETAIL_CHARS = 200


class AnswerTooLarge(Exception):
    pass


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def used_tokens(answer: Any, texts: list[str]) -> Tokens:
    """The tokens an answer's `usage` reports (total, else prompt tokens); the estimate when it reports none."""
    try:
        usage = answer.get("usage")
        n = usage.get("total_tokens", usage.get("prompt_tokens"))
    except AttributeError:
        n = None
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return Tokens(reported=n)
    return Tokens(estimated=sum(estimate_tokens(t) for t in texts))


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
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # neither seconds nor an HTTP date: as if absent
    return max(0.0, when.timestamp() - time.time()) if when else None


def secret_forms(secret: str) -> set[str]:
    """The ways a secret can come back in an answer: as is, URL- and JSON-escaped, base64 (alone, or as
    the password of a `Basic` header)."""
    forms = {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1]}
    for raw in (secret, f":{secret}"):
        forms.add(base64.b64encode(raw.encode()).decode().rstrip("="))
    return {f for f in forms if f}


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every form of each secret replaced by ***, and any run of 8 or more characters that
    begins a secret or ends it (an endpoint that echoes part of a key); run it before cutting a text."""
    from pipelines.store.database import mask_url

    for secret in (s for s in secrets if s):
        for form in sorted(secret_forms(secret), key=len, reverse=True):
            text = text.replace(form, "***")
        if len(secret) >= 8:
            text = _mask_partial(text, secret)
    return mask_url(text)


def _mask_partial(text: str, secret: str) -> str:
    """Each run that begins like `secret` (8 characters or more), and each that ends like it, masked."""
    head, tail = secret[:8], secret[-8:]
    i = text.find(head)
    while i >= 0:
        n = len(head)
        while n < len(secret) and i + n < len(text) and text[i + n] == secret[n]:
            n += 1
        text = text[:i] + "***" + text[i + n:]
        i = text.find(head, i + 3)
    j = text.find(tail)
    while j >= 0:
        end, n = j + len(tail), len(tail)
        while n < len(secret) and end - n - 1 >= 0 and text[end - n - 1] == secret[-n - 1]:
            n += 1
        text = text[:end - n] + "***" + text[end:]
        j = text.find(tail, end - n + 3)
    return text


def read_within(response: httpx.Response, deadline: float, cap: int) -> bytes:
    """The body of a streamed answer, read by `deadline` (time.monotonic()) and up to `cap` bytes:
    httpx.ReadTimeout past the deadline (an answer that drips), AnswerTooLarge past the cap."""
    body = bytearray()
    timeouts = response.request.extensions.get("timeout")
    if isinstance(timeouts, dict):  # the first read too: the headers may have taken most of the time
        timeouts["read"] = max(0.001, deadline - time.monotonic())
    for piece in response.iter_bytes():
        body += piece
        if len(body) > cap:
            raise AnswerTooLarge(len(body))
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpx.ReadTimeout("the answer did not arrive in time")
        if isinstance(timeouts, dict):
            timeouts["read"] = left  # httpcore reads this at each read: no read outlives the deadline
    return bytes(body)


def endpoint_key(options: EndpointKey, what: str, error: type[Exception]) -> str | None:
    """The key of an endpoint (`what`, for the message): from the Airflow connection when one is named,
    else $api_key_env (unset: none); `error` when the connection cannot be found."""
    if options.connection:
        env = os.environ.get(f"AIRFLOW_CONN_{options.connection.upper()}")
        if env:
            return password_of(env)
        try:
            from airflow.sdk import BaseHook

            return BaseHook.get_connection(options.connection).password
        except Exception:
            raise error(f"no Airflow connection {options.connection!r} for {what}: set "
                        f"AIRFLOW_CONN_{options.connection.upper()} (its password is the key) or add it "
                        "in Airflow") from None
    return os.environ.get(options.api_key_env) if options.api_key_env else None


def key_headers(options: EndpointKey, key: str | None) -> dict[str, str]:
    if not key:
        return {}
    return {"api-key": key} if options.key_header == "api-key" else {"Authorization": f"Bearer {key}"}


def key_source(options: EndpointKey) -> str:
    """Where the key comes from, for a message that asks to check it."""
    if options.connection:
        return f"the Airflow connection {options.connection!r}"
    return f"${options.api_key_env}" if options.api_key_env else "api_key_env (none is set)"


def error_detail(content: bytes, key: str | None) -> str:
    """An endpoint's own error message, short, with every form of the key masked before it is cut."""
    text = content.decode("utf-8", "replace")
    try:
        message = json.loads(text).get("error", {})
        message = message.get("message", "") if isinstance(message, dict) else str(message)
    except (ValueError, AttributeError):
        message = text
    message = redact(" ".join(str(message).split()), [key] if key else [])
    if len(message) > DETAIL_CHARS:
        message = message[:DETAIL_CHARS] + "…"
    return f" ({message})" if message else ""


@dataclass(frozen=True)
class Attempt:
    """One POST: the answer of a 200 (`content`), or why there is none and how long the endpoint asks to wait."""

    content: bytes | None
    reason: str = ""
    wait: float | None = None


def post_once(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str], deadline: float,
              cap: int, key: str | None, options: EndpointKey, what: str, error: type[Exception],
              too_large: str) -> Attempt:
    """POST `body` and read the answer by `deadline` (time.monotonic()): a 200's body up to `cap` bytes;
    else why (a timeout, a lost connection, a 408/409/429/5xx with the endpoint's message, key masked).
    `error` (naming `what`) when another try cannot help: a 200 over the cap, or any other status."""
    timeout = max(0.001, deadline - time.monotonic())
    try:
        with client.stream("POST", url, json=body, headers=headers, timeout=httpx.Timeout(timeout)) as response:
            ok = response.status_code == 200
            try:
                content = read_within(response, deadline, cap if ok else ERROR_BODY_BYTES)
            except AnswerTooLarge:
                if ok:
                    raise error(f"{what} answered {too_large}") from None
                content = b""
    except httpx.TimeoutException:
        return Attempt(None, f"no answer within {timeout:.3g} s")
    except httpx.TransportError as exc:
        return Attempt(None, f"cannot connect ({type(exc).__name__})")
    if ok:
        return Attempt(content)
    reason = f"HTTP {response.status_code}{error_detail(content, key)}"
    if response.status_code not in RETRY_STATUS:
        hint = f"; check the key in {key_source(options)}" if response.status_code in (401, 403) else ""
        raise error(f"{what} refused the request: {reason}{hint}")
    return Attempt(None, reason, retry_after(response))


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
        self._stored_dimension: int | None = None
        self._dimension_lock = threading.Lock()
        self._spent = threading.local()

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
            self._encode(["dimension probe"], self.options.timeout_s, self.options.retries, self.options.max_backoff_s)
        assert self._dimension is not None
        return self._dimension

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.document_prompt + t for t in texts], self.options.timeout_s,
                            self.options.retries, self.options.max_backoff_s)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.query_prompt + t for t in texts], self.options.query_timeout_s,
                            min(1, self.options.retries), min(QUERY_BACKOFF_S, self.options.max_backoff_s),
                            query=True)

    def last_call_tokens(self) -> Tokens:
        return getattr(self._spent, "tokens", Tokens())

    def _encode(self, texts: list[str], timeout: float, retries: int, max_backoff: float,
                query: bool = False) -> np.ndarray:
        self._spent.tokens = Tokens()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = request_batches(texts, self.options.batch_size, self.options.max_tokens_per_request)
        out: list[np.ndarray | None] = [None] * len(texts)
        spent = [Tokens()]
        lock = threading.Lock()

        def one(indexes: list[int]) -> None:
            vectors, tokens = self._post([texts[i] for i in indexes], timeout, retries, max_backoff, query)
            with lock:
                spent[0] += tokens
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
        self._spent.tokens = spent[0]  # the calling thread's (a failed call spent what it did not record)
        return np.stack(out).astype(np.float32, copy=False)  # type: ignore[arg-type]

    def _headers(self) -> dict[str, str]:
        return key_headers(self.options, self._key())

    def _key(self) -> str | None:
        return endpoint_key(self.options, f"the embedding endpoint {self.where}", EmbeddingFailed)

    def _post(self, inputs: list[str], timeout: float, retries: int, max_backoff: float,
              query: bool = False) -> tuple[list[np.ndarray], Tokens]:
        """One request, tried 1 + `retries` times on 429, 5xx, a timeout or a lost connection; each try
        ends within `timeout` seconds (connect and the whole answer), each wait between tries within
        `max_backoff`."""
        body: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "float"}
        if self.requested_dimensions:
            body["dimensions"] = self.requested_dimensions
        for attempt in range(retries + 1):
            last = attempt == retries
            self._take_slot(inputs, query, time.monotonic() + timeout)
            cap = self._answer_cap(len(inputs))
            done = post_once(self._client, self.endpoint, body, self._headers(), time.monotonic() + timeout, cap,
                             self._key(), self.options, f"the embedding endpoint {self.where}", EmbeddingFailed,
                             f"more than {cap >> 20} MiB for {len(inputs)} texts; nothing of this batch is stored "
                             "(is base_url an embeddings endpoint?)")
            if done.content is not None:
                return self._vectors(done.content, inputs)
            reason, wait = done.reason, done.wait
            if last:
                break
            delay = min(max_backoff, wait if wait is not None else 0.5 * 2**attempt * (0.5 + random.random() / 2))
            log.warning("embedding endpoint %s: %s; try %d of %d in %.1f s", self.where, reason, attempt + 2,
                        retries + 1, delay)
            time.sleep(delay)
        raise EmbeddingFailed(f"the embedding endpoint {self.where} failed {retries + 1} tries: {reason}")

    def _take_slot(self, inputs: list[str], query: bool, deadline: float) -> None:
        """Wait for the shared rate limit (embedder.rate_limit), if one is set; a query waits until `deadline`."""
        from pipelines.embed.limits import RateLimited, acquire

        try:
            acquire(self.options.rate_limit, self.endpoint, self._key(), sum(estimate_tokens(t) for t in inputs),
                    query, deadline if query else None)
        except RateLimited as exc:
            raise EmbeddingFailed(str(exc)) from None

    def _answer_cap(self, count: int) -> int:
        """The most bytes an answer of `count` vectors may take (the width asked for or seen, else the widest)."""
        width = self._dimension or WIDEST
        return ANSWER_SLACK_BYTES + count * width * BYTES_PER_NUMBER

    def _vectors(self, content: bytes, inputs: list[str]) -> tuple[list[np.ndarray], Tokens]:
        """The answer's vectors in input order, normalised, and the tokens it spent; EmbeddingFailed when
        they cannot be used."""
        count = len(inputs)
        def bad(why: str) -> EmbeddingFailed:
            return EmbeddingFailed(f"the embedding endpoint {self.where} answered {why}; nothing of this batch "
                                   "is stored")

        try:
            answer = json.loads(content)
            data = answer["data"]
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
        return vectors, used_tokens(answer, inputs)

    def expect_dimension(self, stored: int) -> None:
        """The width the collection stores: an answer of another width fails, naming the setting."""
        self._stored_dimension = stored
        with self._dimension_lock:
            self._dimension = self._dimension or stored

    def _check_dimension(self, width: int, bad: Any) -> None:
        if self._stored_dimension is not None and width != self._stored_dimension:
            setting = (f"embedder.dimensions: {self.requested_dimensions}" if self.requested_dimensions
                       else "no embedder.dimensions")
            raise bad(f"a vector of {width} dimensions where the collection stores {self._stored_dimension} "
                      f"(model {self.model!r}, {setting}): ask for {self._stored_dimension} with "
                      "embedder.dimensions, or give the new width a new model name (a new version)")
        with self._dimension_lock:
            if self._dimension is None:
                self._dimension = width
        if width != self._dimension:
            raise bad(f"a vector of {width} dimensions where {self._dimension} were "
                      f"{'asked for' if self.requested_dimensions else 'answered before'}")
