"""Synthetic corpora for benchmarks: documents made of resampled sentences of a real corpus
(NFCorpus by default), so the tokenizer and the full-text parser see realistic text."""

import hashlib
import json
import os
import random
import re
from pathlib import Path

import numpy as np

from pipelines.settings import PROJECT_ROOT

NFCORPUS = PROJECT_ROOT.parent / "shared" / "data" / "beir" / "nfcorpus"
SAMPLE_RECORDS = PROJECT_ROOT / "examples" / "corpus" / "records.jsonl"
NEEDS_CORPUS = ("embedding", "quality", "versions", "search", "service")
"""The bench sections whose figures mean something only on a real corpus (BENCH_QUALITY's too)."""


def bench_corpus() -> Path | None:
    """The BEIR data set the bench uses: BENCH_CORPUS, else NFCorpus beside the checkout
    (../shared/data/beir/nfcorpus); None when it has no corpus.jsonl and queries.jsonl."""
    path = Path(os.environ.get("BENCH_CORPUS") or NFCORPUS).expanduser()
    return path if (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file() else None


def corpus_label(dataset: Path | None) -> str:
    """How the reports name the corpus a figure used."""
    return f"BEIR {dataset.name}" if dataset else f"the sample corpus ({SAMPLE_RECORDS.relative_to(PROJECT_ROOT)})"


def runnable_sections(sections: list[str], dataset: Path | None) -> tuple[list[str], list[str]]:
    """(sections to run, sections skipped because they need a real corpus and there is none)."""
    skipped = [s for s in sections if dataset is None and s in NEEDS_CORPUS]
    return [s for s in sections if s not in skipped], skipped


def sentences(dataset: Path | None = None, limit: int = 50_000) -> list[str]:
    """Sentences of the data set's corpus (default: bench_corpus()), or of the sample corpus when
    there is none (its 193 records: enough for synthetic test folders, not for search figures)."""
    dataset = dataset or bench_corpus()
    if dataset is not None:
        with (dataset / "corpus.jsonl").open() as f:
            texts = [json.loads(line)["text"] for line in f]
    else:
        texts = [json.loads(line)["text"] for line in SAMPLE_RECORDS.read_text().splitlines()]
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
