"""Local sentence-transformers models: the torch backends (fp32, bf16/fp16 autocast) and onnx-int8.

A model is loaded once per process and model id; embedders that differ only in their prompts share it.
Documents go through the model's document side (`encode_document`), queries through its query side
(`encode_query`), with the prompts of the model's own config unless collections.yml overrides them.
"""

import threading
import time
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np

from pipelines.embed.base import Embedder
from pipelines.embed.errors import ModelUnavailable
from pipelines.embed.names import AUTOCAST, model_location, split_model_id

DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
"""The prompt names sentence-transformers' encode_document looks for, in its order."""


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass
class Loaded:
    model: Any
    lock: threading.Lock
    """One encode at a time: a fast tokenizer must not be used by two threads at once, and torch
    already uses every core for one call (the search service's request threads share it)."""


LOAD_SECONDS: dict[str, float] = {}
"""Seconds each model of this process took to load (`ragpipe_model_load_seconds` of /metrics)."""


@cache
def load(model_id: str, device: str) -> Loaded:
    """The model of `model_id` on `device`, loaded once per process."""
    started = time.perf_counter()
    loaded = _load(model_id, device)
    LOAD_SECONDS[model_id] = time.perf_counter() - started
    return loaded


def _load(model_id: str, device: str) -> Loaded:
    from transformers.utils import logging as hf_logging

    name, backend = split_model_id(model_id)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if backend == "onnx-int8":
            from pipelines.embed.onnx import OnnxInt8Encoder
            from pipelines.settings import load_settings

            return Loaded(OnnxInt8Encoder(model_location(name), load_settings().home / "models"), threading.Lock())
        from sentence_transformers import SentenceTransformer

        return Loaded(SentenceTransformer(model_location(name), device=device), threading.Lock())
    except (OSError, ValueError) as exc:
        from pipelines.store.database import first_line

        raise ModelUnavailable(
            f"cannot load embedding model {name!r}: {first_line(exc)}. Use a local path, the default "
            "model, or a hub name on a machine that can reach the hub"
        ) from None


class LocalEmbedder(Embedder):
    def __init__(self, model_id: str, batch_size: int = 32, query_prompt: str | None = None,
                 document_prompt: str | None = None, dimensions: int | None = None) -> None:
        self.model_id = model_id
        self.truncate_to = dimensions
        """Matryoshka truncation: the first `dimensions` of each vector, re-normalised."""
        self.name, self.backend = split_model_id(model_id)
        self.batch_size = batch_size
        self._prompts = {"query": query_prompt, "document": document_prompt}

    @cached_property
    def device(self) -> str:
        """"cpu" or "cuda", resolved when first needed (it imports torch)."""
        from pipelines.embed.hardware import choose_device

        return choose_device(self.backend)

    @cached_property
    def model(self) -> Any:
        return self._loaded.model

    @cached_property
    def _loaded(self) -> Loaded:
        return load(self.model_id, "cpu" if self.backend == "onnx-int8" else self.device)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @cached_property
    def chunk_tokenizer(self) -> Any:
        import copy

        return copy.deepcopy(self.model.tokenizer)

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def dimension(self) -> int:
        full = int(self.model.get_embedding_dimension())
        if self.truncate_to is None:
            return full
        if self.truncate_to > full:
            raise ModelUnavailable(f"`dimensions: {self.truncate_to}` is wider than model {self.name!r}'s "
                                   f"{full} dimensions; set at most {full}")
        return self.truncate_to

    def _own_prompt(self, side: str) -> str:
        """The prompt the model's own config gives `side` (as sentence-transformers chooses it)."""
        prompts = getattr(self.model, "prompts", None) or {}
        names = DOCUMENT_PROMPT_NAMES if side == "document" else ("query",)
        return next((prompts[n] for n in names if prompts.get(n)), "")

    @cached_property
    def query_prompt(self) -> str:
        return self._prompts["query"] if self._prompts["query"] is not None else self._own_prompt("query")

    @cached_property
    def document_prompt(self) -> str:
        return self._prompts["document"] if self._prompts["document"] is not None else self._own_prompt("document")

    def encode(self, texts: list[str], prompt: str = "") -> np.ndarray:
        """Vectors of `texts` as given, after `prompt`, normalised (no prompt of the model's config)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend == "onnx-int8":  # no prompt support there: the prompt is prepended
            with self._loaded.lock:
                return self.model.encode([prompt + t for t in texts], batch_size=self.batch_size)
        if self.backend in AUTOCAST:
            return self._encode_autocast(texts, prompt)
        with self._loaded.lock:
            vectors = self.model.encode(texts, prompt=prompt, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def _encode_autocast(self, texts: list[str], prompt: str) -> np.ndarray:
        """Encode under autocast (bf16 or fp16 matrix products, accumulated in fp32); the pooled
        vectors are normalised in fp32."""
        import torch

        dtype = getattr(torch, AUTOCAST[self.backend])
        with self._loaded.lock, torch.inference_mode(), torch.autocast(self.device, dtype=dtype):
            vectors = self.model.encode(texts, prompt=prompt, batch_size=self.batch_size, normalize_embeddings=False,
                                        convert_to_tensor=True, show_progress_bar=False)
        vectors = vectors.float().cpu().numpy()
        return normalised(vectors)

    def truncated(self, vectors: np.ndarray) -> np.ndarray:
        if self.truncate_to is None:
            return vectors
        return normalised(vectors[:, :self.dimension])

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self.truncated(self.encode(texts, self.document_prompt))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.truncated(self.encode(texts, self.query_prompt))
