"""`ragpipe ask`: retrieve context with rag_context, then stream an answer from an OpenAI-compatible
chat completions endpoint (RAGPIPE_LLM_URL, RAGPIPE_LLM_API_KEY, RAGPIPE_LLM_MODEL)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

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


def llm_settings() -> LLMSettings | None:
    settings = load_settings()
    if not settings.llm_url:
        return None
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return LLMSettings(url=settings.llm_url, model=settings.llm_model, api_key=key or None)


def build_messages(question: str, ctx: RagContext) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n\n{ctx.context}\n\nQuestion: {question}"}]


def completions_url(base: str) -> str:
    """Accept either the API base (…/v1) or the full …/chat/completions URL."""
    base = base.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def stream_answer(settings: LLMSettings, messages: list[dict[str, str]]) -> Iterator[str]:
    """Yield the answer's text as the server streams it (server-sent events)."""
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    body = {"model": settings.model, "messages": messages, "stream": True}
    with httpx.stream("POST", completions_url(settings.url), json=body, headers=headers,
                      timeout=settings.timeout_s) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"LLM endpoint answered HTTP {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            delta = json.loads(data)["choices"][0].get("delta", {})
            if delta.get("content"):
                yield delta["content"]


def format_citations(ctx: RagContext) -> str:
    return "\n".join(f"[{c['n']}] {c.get('title') or c['source_id']} — {c['uri']}" for c in ctx.citations)
