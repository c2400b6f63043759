"""Token-aware chunking: split text into chunks the embedding model accepts without truncation.

The text is tokenized once with the model's own tokenizer. Every gap between two tokens gets a
boundary score (heading > blank line > line break > sentence end > word gap > inside a word); each
chunk ends at the best-scoring gap in the second half of its token budget, so chunks break at the
most natural place available. Every chunk is re-tokenized and shrunk if needed: no chunk is ever
longer than the model's limit, special tokens included.
"""

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
SENTENCE_END = ".!?;:"
MAX_SPAN_CHARS = 100
HEADING_SCORE = 5
WINDOW_CHARS = 200_000
"""Characters tokenized at once; chunks never cross a window boundary."""


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    """Tokens including the model's special tokens: what the model actually sees."""
    heading_path: tuple[str, ...] = field(default=())
    context: str = ""
    """Embedded before the text but not stored with it: the document's title and heading path
    (a collection's `chunk_context`), so a chunk cut from its document keeps its subject."""
    prompt: str = ""
    """The embedder's document prompt, put before embed_text by the embedder (part of the hash)."""
    written_context: str = ""
    """A chat model's sentence situating the chunk in its document (a collection's `enrich.context`):
    embedded after `context`, stored beside the text and part of its keyword text."""

    @property
    def embed_text(self) -> str:
        """What the model embeds."""
        return "\n".join(part for part in (self.context, self.written_context, self.text) if part)

    @property
    def content_hash(self) -> str:
        """Hash of what the model embeds: the key of stored vectors that can be reused."""
        seen = f"{self.prompt}\x00{self.embed_text}" if self.prompt else self.embed_text  # no stored text has NUL
        return hashlib.sha256(seen.encode()).hexdigest()


CONTEXT_TOKENS = 32
"""Tokens a collection with chunk_context reserves in each chunk for its context header."""


def with_context(chunks: list[Chunk], title: str | None, tokenizer: Any) -> list[Chunk]:
    """Each chunk with its context header "title › heading › subheading", cut to fit the tokens the
    chunks reserved (CONTEXT_TOKENS, less a margin for the line break between header and text)."""
    out = []
    for chunk in chunks:
        parts: list[str] = []
        for raw in (title, *chunk.heading_path):
            part = " ".join((raw or "").split())
            if part and (not parts or parts[-1] != part):
                parts.append(part)
        out.append(replace(chunk, context=first_tokens(" › ".join(parts), tokenizer, CONTEXT_TOKENS - 2)))
    return out


def first_tokens(text: str, tokenizer: Any, limit: int) -> str:
    """`text` cut after its first `limit` tokens of `tokenizer`."""
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                      verbose=False)["offset_mapping"]
    return text if len(spans) <= limit else text[:spans[limit - 1][1]]


def check_chunk_settings(tokenizer: Any, chunk_tokens: int, overlap: int) -> int:
    """The token budget of a chunk's text; ValueError saying what to set when the settings cannot work."""
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    budget = chunk_tokens - specials
    if budget < 8:
        raise ValueError(f"chunk_tokens={chunk_tokens} is too small for this tokenizer (min {specials + 8})")
    if not 0 <= overlap <= budget // 2:
        raise ValueError(f"chunk_overlap must be between 0 and {budget // 2} tokens for chunk_tokens={chunk_tokens}, "
                         f"got {overlap}")
    return budget


def chunk_text(text: str, tokenizer: Any, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Split `text` into chunks of at most `chunk_tokens` tokens (special tokens included).
    A long text is tokenized in windows of about WINDOW_CHARS, cut at its most natural boundary,
    so memory stays bounded whatever the length (a 50 MB single-line file included)."""
    budget = check_chunk_settings(tokenizer, chunk_tokens, overlap)
    headings = [(m.start(), len(m.group(1)), m.group(2).strip()) for m in HEADING.finditer(text)]
    chunks: list[Chunk] = []
    for w_start, w_end in _windows(text, WINDOW_CHARS):
        window = text[w_start:w_end]
        for s, e, count in _chunk_window(window, tokenizer, chunk_tokens, budget, overlap):
            chunks.append(Chunk(len(chunks), window[s:e], w_start + s, w_start + e, count,
                                _heading_path(headings, w_start + s)))
    return chunks


def _chunk_window(text: str, tokenizer: Any, chunk_tokens: int, budget: int,
                  overlap: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, tokens) of each chunk of `text`."""
    spans = _token_spans(text, tokenizer)
    if not spans:
        return
    scores = _boundary_scores(text, spans)
    start, n = 0, len(spans)
    while start < n:
        end = n if start + budget >= n else _best_break(scores, start, budget)
        end, count = _fit(text, spans, tokenizer, start, end, chunk_tokens)
        yield spans[start][0], spans[end - 1][1], count
        if end >= n:
            break
        start = _overlap_start(scores, start, end, overlap)


def _windows(text: str, size: int) -> Iterator[tuple[int, int]]:
    """Consecutive [start, end) ranges of at most `size` characters, each ending at the most natural
    break in its second half (paragraph, line, sentence, word; a hard cut only in unbroken text)."""
    start, n = 0, len(text)
    while start < n:
        end = min(n, start + size)
        if end < n:
            for sep in ("\n\n", "\n", ". ", " "):
                cut = text.rfind(sep, start + size // 2, end)
                if cut > start:
                    end = cut + len(sep)
                    break
        yield start, end
        start = end


def count_tokens(text: str, tokenizer: Any) -> int:
    """Tokens the model sees for `text`, special tokens included."""
    return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def _token_spans(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    truncation=False, verbose=False)
    spans = enc["offset_mapping"]
    if all(e - s <= MAX_SPAN_CHARS for s, e in spans):
        return spans
    # A run of text longer than any word becomes one [UNK]; cut it so chunks stay bounded.
    return [(p, min(p + MAX_SPAN_CHARS, e)) for s, e in spans for p in range(s, e, MAX_SPAN_CHARS)]


def _boundary_scores(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """scores[i] rates breaking the text just before token i (index 0 is never used)."""
    heading_starts = {m.start() for m in HEADING.finditer(text) if not _follows_heading(text, m.start())}
    scores = [0] * (len(spans) + 1)
    for i in range(1, len(spans)):
        prev_end, start = spans[i - 1][1], spans[i][0]
        gap = text[prev_end:start]
        if start in heading_starts:
            scores[i] = HEADING_SCORE
        elif "\n\n" in gap or "\n\r\n" in gap:
            scores[i] = 4
        elif "\n" in gap:
            scores[i] = 3
        elif gap and text[prev_end - 1] in SENTENCE_END:
            scores[i] = 2
        elif gap:
            scores[i] = 1
    scores[len(spans)] = HEADING_SCORE
    return scores


def _follows_heading(text: str, pos: int) -> bool:
    """True when the line before `pos` (blank lines skipped) is itself a heading: keep them together."""
    before = text[:pos].rstrip()
    return bool(before) and HEADING.fullmatch(before[before.rfind("\n") + 1:]) is not None


def _best_break(scores: list[int], start: int, budget: int) -> int:
    """Where to end a chunk: the last heading past the first eighth of the budget, else the
    best-scoring break in the second half (the latest one among equals)."""
    hi = start + budget
    for i in range(hi, start + max(1, budget // 8) - 1, -1):
        if scores[i] >= HEADING_SCORE:
            return i
    return max(range(start + max(1, budget // 2), hi + 1), key=lambda i: (scores[i], i))


def _fit(text: str, spans: list[tuple[int, int]], tokenizer: Any, start: int, end: int,
         limit: int) -> tuple[int, int]:
    """Shrink [start, end) until its text re-tokenizes within `limit`; returns (end, token count)."""
    while True:
        count = count_tokens(text[spans[start][0]:spans[end - 1][1]], tokenizer)
        if count <= limit or end - start == 1:
            return end, count
        end = max(start + 1, end - (count - limit))


def _overlap_start(scores: list[int], start: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: `overlap` tokens back, moved forward to a word boundary."""
    if overlap == 0:
        return end
    lo = max(start + 1, end - overlap)
    for i in range(lo, end):
        if scores[i] >= 1:
            return i
    return end


def _heading_path(headings: list[tuple[int, int, str]], position: int) -> tuple[str, ...]:
    stack: list[tuple[int, str]] = []
    for pos, level, title in headings:
        if pos > position:
            break
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
    return tuple(title for _, title in stack)
