"""The "onnx-int8" embedding backend: a sentence-transformers model exported locally to ONNX,
dynamically quantized to int8 with onnxruntime, and run on onnxruntime's CPU kernels.

Export happens once (no download) and is cached under $RAGPIPE_HOME/models. Supports the common
Transformer + mean pooling (+ normalize) architecture, such as all-MiniLM-L6-v2.
"""

import json
import re
from pathlib import Path
from typing import Any

import numpy as np


class OnnxInt8Encoder:
    """Mimics the part of SentenceTransformer that ragpipe uses: tokenizer, max_seq_length, encode."""

    def __init__(self, source: str, cache_dir: Path) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.source = Path(source)
        _check_mean_pooling(self.source)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.source))
        config = json.loads((self.source / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(config.get("max_seq_length", 512))
        path = export_int8(self.source, cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def get_embedding_dimension(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: list[str], batch_size: int = 32, **_: Any) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts])  # similar lengths together: less padding
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_seq_length, return_tensors="np")
            feed = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
            hidden = self.session.run(None, feed)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out


def export_int8(source: Path, cache_dir: Path) -> Path:
    """ONNX export + int8 dynamic quantization, once per model; returns the int8 model path."""
    target = cache_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", str(source)).strip("_")[-80:] + "-onnx")
    int8 = target / "model_int8.onnx"
    if int8.exists():
        return int8
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    target.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(source)).eval()
    sample = AutoTokenizer.from_pretrained(str(source))(["an example sentence"], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    fp32 = target / "model_fp32.onnx"
    class ByName(torch.nn.Module):
        """Positional ONNX inputs → the model's keyword arguments."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(ByName(), tuple(sample[n] for n in names), str(fp32), input_names=names,
                          output_names=["last_hidden_state"],
                          dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "sequence"}},
                          opset_version=17, dynamo=False)
    partial = target / "model_int8.onnx.partial"
    quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8, per_channel=True)
    partial.rename(int8)  # atomic: a crashed export is redone, never half-used
    fp32.unlink()
    return int8


def _check_mean_pooling(source: Path) -> None:
    pooling = source / "1_Pooling" / "config.json"
    if not pooling.exists() or not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
        raise ValueError(f"the onnx-int8 backend supports mean-pooling models only; {source} is not one")
