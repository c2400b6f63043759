"""Synthetic corpora for benchmarks: documents made of resampled sentences of a real corpus
(NFCorpus by default), so the tokenizer and the full-text parser see realistic text."""

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np

from pipelines.settings import PROJECT_ROOT

NFCORPUS = PROJECT_ROOT.parent / "shared" / "data" / "beir" / "nfcorpus"


def sentences(dataset: Path = NFCORPUS, limit: int = 50_000) -> list[str]:
    """Sentences of the data set's corpus (or of the sample corpus when it is not there)."""
    texts: list[str] = []
    if (dataset / "corpus.jsonl").exists():
        with (dataset / "corpus.jsonl").open() as f:
            texts = [json.loads(line)["text"] for line in f]
    else:
        texts = [json.loads(line)["text"] for line in
                 (PROJECT_ROOT / "examples" / "corpus" / "records.jsonl").read_text().splitlines()]
    out = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) >= 5]
    return out[:limit]


def document(rng: random.Random, pool: list[str], min_sentences: int = 3, max_sentences: int = 6) -> str:
    return " ".join(rng.choice(pool) for _ in range(rng.randint(min_sentences, max_sentences)))


def write_folder(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` Markdown files of resampled sentences under `folder` (100 per sub-folder)."""
    rng, pool = random.Random(seed), sentences()
    for i in range(count):
        path = folder / f"part{i // 100:04d}" / f"doc{i:06d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Document {i}\n\n{document(rng, pool)}\n")
    return folder


def sentence_vectors(embedder, pool: list[str], cache_dir: Path) -> np.ndarray:
    """The model's embeddings of `pool`, cached on disk (encoding 35k sentences takes ~12 min here)."""
    key = hashlib.sha256("\n".join([embedder.model_id, *pool]).encode()).hexdigest()[:16]
    path = cache_dir / f"sentence-vectors-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = np.asarray(embedder.encode(pool), dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def nearby_sentences(rng: np.random.Generator, pool_size: int, span: int = 12) -> list[int]:
    """2-4 sentence indices from a window of `span` neighbouring sentences (mostly one source
    document, so a chunk stays on one topic), in order."""
    start = int(rng.integers(0, pool_size - span))
    picked = rng.choice(span, size=int(rng.integers(2, 5)), replace=False)
    return sorted(start + int(i) for i in picked)


def chunk_vectors(vectors: np.ndarray, picks: list[list[int]]) -> np.ndarray:
    """A synthetic chunk's vector: the normalised mean of its sentences' real embeddings."""
    out = np.stack([vectors[p].mean(axis=0) for p in picks])
    return out / np.linalg.norm(out, axis=1, keepdims=True)
