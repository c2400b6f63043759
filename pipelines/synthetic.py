"""Synthetic corpora for benchmarks: documents made of resampled sentences of a real corpus
(NFCorpus by default), so the tokenizer and the full-text parser see realistic text."""

import json
import random
import re
from pathlib import Path

from .settings import PROJECT_ROOT

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
