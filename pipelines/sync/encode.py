"""Embed: the new chunk texts of one or more read batches in one encode call; stored vectors of the
same texts were found when the batch was read."""

from collections.abc import Iterator

from pipelines.embed import Embedder, EmbeddingFailed
from pipelines.sync.read import BatchWork

EMBED_AT_LEAST = 1024
"""Chunk texts an in-process run gathers, from as many batches as it takes, before one encode call:
the model sorts a call's texts by length, so small calls pad more and leave more partial batches."""


def new_texts(work: BatchWork) -> dict[str, str]:
    """The batch's chunk texts with no stored vector, by content hash."""
    return {c.content_hash: c.embed_text for p in work.prepared() for c in p.chunks
            if c.content_hash not in work.vectors}


def embed_batch(*works: BatchWork, embedder: Embedder) -> None:
    """Embed the batches' new chunk texts in one call (the model sorts them by length); a text new
    to several of them is embedded once and counts as fresh in the first."""
    needed = [new_texts(work) for work in works]
    texts = {h: t for batch in needed for h, t in batch.items()}
    try:
        encoded = embedder.encode_documents(list(texts.values()))
    except EmbeddingFailed as exc:
        raise EmbeddingFailed(f"{exc}. Batches already stored are kept; run again when it answers") from None
    vectors = dict(zip(texts, encoded, strict=True))
    works[0].api_tokens = embedder.last_call_tokens()  # the call's: counted once, with the first batch
    for work, batch in zip(works, needed, strict=True):
        work.vectors.update((h, vectors[h]) for h in batch)
        work.fresh = {h for h in batch if texts.pop(h, None) is not None}


def embedding_groups(works: Iterator[BatchWork], at_least: int = EMBED_AT_LEAST) -> Iterator[list[BatchWork]]:
    """Consecutive batches whose new chunk texts add up to `at_least`; but the first batch and the
    last go alone, so that the model starts while the next batches are read, and the last load
    (the one no encoding overlaps) is a single batch's."""
    group: list[BatchWork] = []
    texts = 0
    for i, work in enumerate(works):
        group.append(work)
        texts += len(new_texts(work))
        if texts >= at_least or i == 0:
            yield group
            group, texts = [], 0
    if len(group) > 1:
        yield group[:-1]
    if group:
        yield group[-1:]
