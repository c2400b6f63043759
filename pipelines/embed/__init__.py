"""Texts → normalised vectors, by a local sentence-transformers model or an OpenAI-compatible API.

Every embedder (pipelines/embed/base.py) has a document side, which chunks go through, and a query
side, which searches go through; each prepends its prompt (collections.yml `prompts:`, else the
model's own). Local backends, named in the model id ("<model>#<backend>"), so two never mix in
one collection (pipelines/embed/local.py):
- "torch" (default, no suffix): fp32 on the CPU;
- "bf16": the same torch model run under bfloat16 autocast (fast on CPUs with AMX-BF16 or AVX512_BF16);
- "fp16": the torch model run under float16 autocast on a CUDA GPU (only there);
- "onnx-int8" (pipelines/embed/onnx.py): the model exported locally to ONNX and quantized to int8
  (no download), cached under $RAGPIPE_HOME/models; CPU only;
- "auto": resolved when a version is built to the backend best for this machine (hardware.best_backend)
  and recorded in the version's model id; later runs keep what the version was built with.
The torch backends run on RAGPIPE_DEVICE (auto: a visible CUDA GPU, else the CPU; hardware.choose_device).
"openai:<model>" is embedded by an endpoint speaking OpenAI's /v1/embeddings (pipelines/embed/api.py).
"""

import json
from functools import cache
from typing import Any

from pipelines.embed.base import Embedder
from pipelines.embed.errors import EmbeddingFailed, ModelUnavailable
from pipelines.embed.names import (
    API_PREFIX,
    AUTO,
    BACKENDS,
    PACKAGED_MODELS,
    api_model_id,
    is_api_model,
    model_location,
    resolve_model,
    split_model_id,
)

__all__ = ["API_PREFIX", "AUTO", "BACKENDS", "PACKAGED_MODELS", "EmbeddingFailed", "Embedder", "ModelUnavailable",
           "api_model_id", "embedder_for", "get_embedder", "is_api_model", "model_location", "resolve_model",
           "split_model_id"]


@cache
def get_embedder(model: str, batch_size: int = 32, query_prompt: str | None = None,
                 document_prompt: str | None = None, api: str = "{}", dimensions: int | None = None) -> Embedder:
    """One embedder per model, batch size, prompts and API options (JSON) in this process; local
    models are loaded once whatever the prompts. Prompts left None are the model's own."""
    model = resolve_model(model)
    if is_api_model(model):
        from pipelines.embed.api import ApiEmbedder

        return ApiEmbedder(model, json.loads(api), query_prompt, document_prompt)
    from pipelines.embed.local import LocalEmbedder

    return LocalEmbedder(model, batch_size, query_prompt, document_prompt, dimensions)


def embedder_for(model: str, settings: dict[str, Any] | None = None, batch_size: int = 32) -> Embedder:
    """The embedder of a version built with `model` and stored `settings` (its `prompts`, `embedder`
    options and `dimensions`, pipelines.collection.stored_settings)."""
    settings = settings or {}
    prompts = settings.get("prompts") or {}
    return get_embedder(model, batch_size, prompts.get("query"), prompts.get("document"),
                        json.dumps(settings.get("embedder") or {}, sort_keys=True), settings.get("dimensions"))
