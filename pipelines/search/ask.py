"""`ragpipe ask`: retrieve context with rag_context, then stream an answer from an OpenAI-compatible
chat completions endpoint (RAGPIPE_LLM_URL, RAGPIPE_LLM_API_KEY, RAGPIPE_LLM_MODEL)."""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from pipelines.config import RateLimit
from pipelines.embed.api import error_detail, estimate_tokens
from pipelines.embed.base import Tokens
from pipelines.search import RagContext
from pipelines.settings import load_settings

SYSTEM = ("Answer the question using only the numbered context passages. Cite the passages you use "
          "as [n]. If the context does not contain the answer, say so.")


@dataclass(frozen=True)
class LLMSettings:
    url: str
    model: str
    api_key: str | None
    timeout_s: float = 120.0
    rate_limit: RateLimit | None = None


def llm_settings() -> LLMSettings | None:
    settings = load_settings()
    if not settings.llm_url:
        return None
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    limit = (RateLimit(requests_per_minute=settings.llm_requests_per_minute,
                       tokens_per_minute=settings.llm_tokens_per_minute)
             if settings.llm_requests_per_minute or settings.llm_tokens_per_minute else None)
    return LLMSettings(url=settings.llm_url, model=settings.llm_model, api_key=key or None, rate_limit=limit)


def build_messages(question: str, ctx: RagContext) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n\n{ctx.context}\n\nQuestion: {question}"}]


def completions_url(base: str) -> str:
    """Accept either the API base (…/v1) or the full …/chat/completions URL."""
    base = base.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def stream_answer(settings: LLMSettings, messages: list[dict[str, str]],
                  spent: Callable[[Tokens], None] | None = None) -> Iterator[str]:
    """Yield the answer's text as the server streams it (server-sent events); at its end, `spent` gets
    the tokens the server reported (its last event's `usage`), or the estimate when it reported none."""
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    body = {"model": settings.model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    answer: list[str] = []
    reported: list[Any] = []
    try:
        for piece in _events(settings, body, headers, reported):
            answer.append(piece)
            yield piece
    finally:
        if spent is not None:
            spent(_chat_tokens(reported, messages, answer))


def _chat_tokens(reported: list[Any], messages: list[dict[str, str]], answer: list[str]) -> Tokens:
    n = reported[-1].get("total_tokens") if reported and isinstance(reported[-1], dict) else None
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return Tokens(reported=n)
    return Tokens(estimated=sum(estimate_tokens(m["content"]) for m in messages) + estimate_tokens("".join(answer)))


def _events(settings: LLMSettings, body: dict[str, Any], headers: dict[str, str], usage: list[Any]) -> Iterator[str]:
    from pipelines.embed.limits import acquire

    acquire(settings.rate_limit, completions_url(settings.url), settings.api_key,
            sum(estimate_tokens(m["content"]) for m in body["messages"]), True, time.monotonic() + settings.timeout_s)
    with httpx.stream("POST", completions_url(settings.url), json=body, headers=headers,
                      timeout=settings.timeout_s) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"LLM endpoint answered HTTP {response.status_code}"
                               f"{error_detail(response.content, settings.api_key)}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if event.get("usage"):
                usage.append(event["usage"])
            for choice in event.get("choices") or []:  # the usage event has none
                if (choice.get("delta") or {}).get("content"):
                    yield choice["delta"]["content"]


def format_citations(ctx: RagContext) -> str:
    return "\n".join(f"[{c['n']}] {c.get('title') or c['source_id']} — {c['uri']}" for c in ctx.citations)
