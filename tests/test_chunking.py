import random

import pytest

from pipelines.chunking import chunk_text, count_tokens
from tests.conftest import CORPUS

MARKDOWN = """# Guide

""" + "Intro paragraph about the guide. It has two sentences. " * 8 + """

## Install

Run the installer. Then check the version with the command shown below. """ + "Words keep going here. " * 80 + """

## Usage

### Searching

Search with SQL. """ + "More usage text follows in this paragraph. " * 60

pytestmark = pytest.mark.unit


def texts() -> list[str]:
    rng = random.Random(7)
    words = (CORPUS / "coffee" / "acute-effects-of-coffee-on-endothelial-function-in-healthy-s.md").read_text().split()
    long_word = "x" * 5000
    return [
        MARKDOWN,
        " ".join(rng.choice(words) for _ in range(3000)),
        "Tiny.",
        "a" * 20000,                          # one long line without whitespace
        "word " * 100 + long_word + " end",
        "\n\n".join(f"Sentence number {i} is here. " * 5 for i in range(60)),
        "日本語のテキストです。" * 300,
    ]


@pytest.mark.parametrize("size,overlap", [(256, 32), (128, 0), (64, 16)])
def test_chunks_fit_the_model_and_map_back_to_the_text(embedder, size, overlap):
    tok = embedder.tokenizer
    for text in texts():
        chunks = chunk_text(text, tok, size, overlap)
        assert chunks, "non-empty text gives chunks"
        for c in chunks:
            assert c.text == text[c.char_start:c.char_end]
            assert count_tokens(c.text, tok) == c.token_count <= size <= embedder.max_tokens
        assert chunks[0].char_start <= len(text) - len(text.lstrip()) + 1
        assert chunks[-1].char_end >= len(text.rstrip())
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert not text[a.char_end:b.char_start].strip(), "only whitespace lies between chunks"
            assert b.char_start > a.char_start
            if overlap == 0:
                assert b.char_start >= a.char_end - 1


def test_overlap_is_close_to_the_configured_token_count(embedder):
    tok = embedder.tokenizer
    text = texts()[1]
    chunks = chunk_text(text, tok, 128, 24)
    assert len(chunks) > 5
    for a, b in zip(chunks[:-1], chunks[1:-1], strict=False):
        shared = text[b.char_start:a.char_end]
        n = count_tokens(shared, tok) - 2
        assert 12 <= n <= 24, (n, shared)


def test_breaks_at_headings_and_keeps_heading_paths(embedder):
    chunks = chunk_text(MARKDOWN, embedder.tokenizer, 128, 0)
    starts = [c.text.splitlines()[0] for c in chunks]
    assert "## Install" in starts and "## Usage" in starts
    usage = next(c for c in chunks if c.text.startswith("## Usage"))
    assert usage.heading_path == ("Guide", "Usage")
    assert chunks[-1].heading_path == ("Guide", "Usage", "Searching")


def test_prefers_sentence_ends_over_word_gaps(embedder):
    text = " ".join(f"This is sentence {i} with a handful of ordinary words in it." for i in range(200))
    chunks = chunk_text(text, embedder.tokenizer, 100, 0)
    assert all(c.text.rstrip().endswith(".") for c in chunks)


def test_empty_and_whitespace_give_no_chunks(embedder):
    assert chunk_text("", embedder.tokenizer, 256, 32) == []
    assert chunk_text(" \n\t ", embedder.tokenizer, 256, 32) == []


def test_rejects_overlap_too_large(embedder):
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("some text", embedder.tokenizer, 64, 60)


def test_a_long_single_line_is_tokenized_in_bounded_windows(embedder):
    """Defect: a 30 MB single-line file was tokenized at once (3 GB peak for its offsets). The
    tokenizer now never sees more than a window, and chunks still cover the text in order."""
    from pipelines.chunking import WINDOW_CHARS

    tok = embedder.chunk_tokenizer
    longest = []

    class Recording:
        def __call__(self, text, **kw):
            longest.append(len(text))
            return tok(text, **kw)

        def __getattr__(self, name):
            return getattr(tok, name)

    rng = random.Random(4)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    text = " ".join(rng.choice(words) for _ in range(3 * WINDOW_CHARS // 5))  # ~3 windows, no line break
    chunks = chunk_text(text, Recording(), 128, 16)
    assert max(longest) <= WINDOW_CHARS
    assert all(c.token_count <= 128 and text[c.char_start:c.char_end] == c.text for c in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text.rstrip())
    gaps = [text[a.char_end:b.char_start] for a, b in zip(chunks[:-1], chunks[1:], strict=True)]
    assert not "".join(gaps).strip(), "no text is lost between chunks"


def test_context_headers_fit_the_reserved_tokens_and_change_only_what_is_embedded(embedder):
    from pipelines.chunking import CONTEXT_TOKENS, with_context

    tok = embedder.chunk_tokenizer
    long_title = "A randomized controlled trial of " + "walnut " * 60
    plain = chunk_text(MARKDOWN, tok, 128 - CONTEXT_TOKENS, 16)
    chunks = with_context(plain, long_title, tok)
    assert [c.text for c in chunks] == [c.text for c in plain], "the stored text stays the chunk's own"
    for c in chunks:
        assert c.embed_text == f"{c.context}\n{c.text}" and c.context.startswith("A randomized controlled trial")
        assert count_tokens(c.embed_text, tok) <= 128, "the model never truncates header + text"
        assert c.content_hash != next(p for p in plain if p.ordinal == c.ordinal).content_hash
    usage = next(c for c in with_context(plain, "Guide", tok) if c.heading_path[-1:] == ("Searching",))
    assert usage.context == "Guide › Usage › Searching", "the title is not repeated by the first heading"
    assert plain[0].embed_text == plain[0].text and plain[0].context == ""
