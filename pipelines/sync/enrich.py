"""Enrich: a chat model writes each chunk a sentence or two situating it in its document (collections.yml
`enrich.context`), embedded before the chunk and part of its keyword text. Contexts are cached by what
they were written from (document, chunk, model, prompt, budgets), so an unchanged chunk never asks the
model again. A document whose contexts cannot all be written fails whole, with the reason (no document
is ever half enriched), and is retried by the next run."""

import dataclasses
import hashlib
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from pipelines import store
from pipelines.chunking import first_tokens
from pipelines.collection import context_options
from pipelines.config import ContextOptions
from pipelines.embed.api import CHARS_PER_TOKEN, endpoint_key, key_headers, post_once
from pipelines.embed.base import Tokens
from pipelines.embed.limits import RateLimited, acquire

PLACEHOLDER = re.compile(r"\{(document|chunk)\}")
ANSWER_BYTES = 256 * 1024
"""A chat answer larger than this is refused (a context is a sentence or two)."""


class ContextFailed(Exception):
    """The chat model did not write a chunk's context (after its tries)."""


class ContextWriter:
    """An endpoint speaking OpenAI's POST /chat/completions, asked for one chunk's context at a time."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = ContextOptions.model_validate(options)
        self.endpoint = self.options.base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.Client(follow_redirects=False)
        self._lock = threading.Lock()
        self.tokens = Tokens()
        """What the answers reported spending (estimated where they reported nothing), since the last take."""

    @property
    def where(self) -> str:
        from pipelines.store.database import mask_url

        return f"the chat endpoint {mask_url(self.endpoint)}"

    def keys(self, prepared: Any) -> list[str]:
        """The cache keys of the contexts of a prepared document's (sync/read.Prepared) chunks."""
        o = self.options
        return [hashlib.sha256(json.dumps([o.model, o.prompt, o.max_tokens, o.document_tokens,
                                           prepared.body_hash or prepared.content_hash,
                                           hashlib.sha256(c.text.encode()).hexdigest()]).encode()).hexdigest()
                for c in prepared.chunks]

    def prompt(self, document: str, chunk: str) -> str:
        """The template with {document} (cut to document_tokens) and {chunk} filled in, in one pass: a
        document or chunk that itself holds "{chunk}" or "{document}" is left as it is."""
        values = {"document": document[:self.options.document_tokens * CHARS_PER_TOKEN], "chunk": chunk}
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.options.prompt)

    def request_tokens(self, prompt: str) -> int:
        """What a request is counted as before it is sent: the prompt (3 characters a token) and the answer's limit."""
        return len(prompt) // CHARS_PER_TOKEN + self.options.max_tokens

    def write(self, document: str, chunk: str) -> str:
        """The chunk's context, tried 1 + retries times on 429, 5xx, a timeout or a lost connection."""
        o = self.options
        key = endpoint_key(o, self.where, ContextFailed)
        prompt = self.prompt(document, chunk)
        body = {"model": o.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": o.max_tokens,
                "temperature": 0}
        reason = ""
        for attempt in range(o.retries + 1):
            deadline = time.monotonic() + o.timeout_s
            try:
                acquire(o.rate_limit, self.endpoint, key, self.request_tokens(prompt), False)
            except RateLimited as exc:
                raise ContextFailed(str(exc)) from None
            done = post_once(self._client, self.endpoint, body, key_headers(o, key), deadline, ANSWER_BYTES, key, o,
                             self.where, ContextFailed, f"more than {ANSWER_BYTES} bytes")
            if done.content is not None:
                return self._context(done.content, prompt)
            reason = done.reason
            if attempt < o.retries:
                backoff = done.wait if done.wait is not None else min(30.0, 0.5 * 2**attempt)
                time.sleep(min(backoff, 60.0) * (0.5 + random.random() / 2))
        raise ContextFailed(f"{self.where}: {reason} ({o.retries + 1} tries)")

    def _context(self, content: bytes, prompt: str) -> str:
        try:
            answer = json.loads(content)
            text = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ContextFailed(f"{self.where} answered something that is not a chat completion") from None
        if not isinstance(text, str) or not text.strip():
            raise ContextFailed(f"{self.where} answered an empty context")
        text = " ".join(text.replace("\x00", "").split())
        usage = answer.get("usage") if isinstance(answer, dict) else None
        spent = usage.get("total_tokens") if isinstance(usage, dict) else None
        with self._lock:
            if isinstance(spent, int) and not isinstance(spent, bool) and spent >= 0:
                self.tokens += Tokens(reported=spent)
            else:
                self.tokens += Tokens(estimated=(len(prompt) + len(text)) // CHARS_PER_TOKEN + 1)
        return text

    def take_tokens(self) -> Tokens:
        with self._lock:
            spent, self.tokens = self.tokens, Tokens()
        return spent


_writers: dict[str, ContextWriter] = {}


def writer_for(options: dict[str, Any]) -> ContextWriter:
    """One writer (and connection pool) per set of options in this process."""
    name = json.dumps(options, sort_keys=True, default=str)
    if name not in _writers:
        _writers[name] = ContextWriter(options)
    return _writers[name]


def enrich_documents(conn: psycopg.Connection, collection: store.Collection, prepared: dict[str, Any],
                     tokenizer: Any) -> tuple[dict[str, str], Tokens]:
    """Each prepared document's (sync/read.Prepared, by source id) chunks with their written context
    (from the cache, else the model), cut to enrich.context.max_tokens of `tokenizer`. Returns the
    documents whose contexts could not all be written, with the reason (their chunks are left as
    they were: they must fail whole), and the tokens the model spent."""
    options = context_options(collection.settings)
    if not options or not prepared:
        return {}, Tokens()
    writer = writer_for(options)
    keys = {sid: writer.keys(p) for sid, p in prepared.items()}
    cached = store.cached_contexts(conn, [k for ks in keys.values() for k in ks])
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=writer.options.concurrency, thread_name_prefix="context") as pool:
        for sid, p in prepared.items():
            missing = [(k, c.text) for k, c in zip(keys[sid], p.chunks, strict=True) if k not in cached]
            try:
                written = list(pool.map(lambda kc, text=p.document: writer.write(text, kc[1]), missing))
            except ContextFailed as exc:
                failed[sid] = str(exc)
                continue
            new = {k: w for (k, _), w in zip(missing, written, strict=True)}
            if new:
                store.cache_contexts(conn, collection.family, sid, new)
                cached.update(new)
            limit = options["max_tokens"]
            p.chunks = [dataclasses.replace(c, written_context=first_tokens(cached[k], tokenizer, limit))
                        for k, c in zip(keys[sid], p.chunks, strict=True)]
    return failed, writer.take_tokens()


def context_tokens_to_send(conn: psycopg.Connection, collection: store.Collection, prepared: list[Any]) -> int:
    """The chat tokens writing the contexts of these prepared documents' chunks would spend (those
    not cached), estimated at 3 characters a token, each answer at its max_tokens."""
    options = context_options(collection.settings)
    if not options or not prepared:
        return 0
    writer = writer_for(options)
    asks = [(p.document, c.text, key) for p in prepared for c, key in zip(p.chunks, writer.keys(p), strict=True)]
    cached = store.cached_contexts(conn, [key for _, _, key in asks])
    return sum(writer.request_tokens(writer.prompt(document, chunk)) for document, chunk, key in asks
               if key not in cached)
