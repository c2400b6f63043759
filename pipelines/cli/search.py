"""`ragpipe search`, `similar`, `ask` and `embed`: querying collections from the shell."""

import json
from typing import Any

import click

from pipelines.cli.common import MAX_K, MAX_NEIGHBOURS, emit, fail
from pipelines.settings import load_settings


def parse_filter(filter_: str | None) -> dict[str, Any] | None:
    try:
        filt = json.loads(filter_) if filter_ else None
    except json.JSONDecodeError as exc:
        fail(f"--filter is not valid JSON: {exc}")
    if filt is not None and not isinstance(filt, dict):
        fail('--filter must be a JSON object, e.g. {"topic": "soy"}')
    return filt


def print_hits(results: list, as_json: bool, by_document: bool = False) -> None:
    """One line a hit and its text; `by_document`: one entry a document (its best passage, and how many
    more of its chunks are among the results), in the order of each document's best hit."""
    if as_json:
        emit([r.to_dict() for r in results])
        return
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(r.source_id if by_document else str(len(groups)), []).append(r)
    for i, (best, *others) in enumerate(groups.values(), 1):
        more = f"  +{len(others)} more passage{'s' if len(others) > 1 else ''}" if others else ""
        click.echo(f"{i}. [{best.score:.3f}] {best.title or best.source_id}  ({best.source_id}){more}")
        click.echo("   " + " ".join(best.text.split())[:240])


@click.command()
@click.argument("query")
@click.option("-c", "--collection", required=True, help="Collection to search.")
@click.option("-k", "--k", "k", default=5, show_default=True, type=click.IntRange(1, MAX_K), help="Number of results.")
@click.option("--mode", type=click.Choice(["hybrid", "semantic", "keyword"]), default="hybrid", show_default=True,
              help="hybrid fuses semantic and keyword rankings (reciprocal rank fusion); best on NFCorpus.")
@click.option("--filter", "filter_", help='Document metadata that must match (JSON), e.g. \'{"topic": "soy"}\'.')
@click.option("--language", help="Parse QUERY's words in this language alone (a text search configuration or ISO "
              "code: german, de); default: in every language the collection holds. Keyword and hybrid modes.")
@click.option("--chunks", is_flag=True, help="List every chunk of the K on a line of its own, instead of grouping "
              "them by document.")
@click.option("--rerank/--no-rerank", default=None, help="Re-rank the best candidates with the collection's "
              "reranker (`rerank:` in collections.yml) [default: when it has one].")
@click.option("--json", "as_json", is_flag=True, help="Print the K chunks as a JSON list.")
def search(query: str, collection: str, k: int, mode: str, filter_: str | None, language: str | None,
           chunks: bool, rerank: bool | None, as_json: bool) -> None:
    """Search a collection: the K chunks that best match QUERY, grouped by document (its best passage
    first, with the count of its other chunks among the K), as the search page shows them."""
    from pipelines.search import search as run_search

    hits = run_search(query, collection=collection, k=k, filter=parse_filter(filter_), mode=mode, language=language,
                      rerank=rerank)
    say_rerank_failure(hits)
    print_hits(hits, as_json, by_document=not chunks)
    if not hits and not as_json:
        click.echo(f"no results in {collection!r} ({mode} search{', with that filter' if filter_ else ''}): "
                   "is it the collection you meant (`ragpipe status` lists them, with their document counts)? "
                   + ("A looser --filter, or " if filter_ else "")
                   + ("--mode semantic finds text by meaning" if mode == "keyword"
                      else "--mode keyword finds exact words"))


def say_rerank_failure(found: Any) -> None:
    """One line on stderr when the reranker failed and the first-stage order is shown."""
    if found.rerank_error:
        click.echo(f"rerank failed, first-stage order: {found.rerank_error}", err=True)


@click.command()
@click.argument("source_id")
@click.option("-c", "--collection", required=True, help="Collection of the document.")
@click.option("-k", "--k", "k", default=5, show_default=True, type=click.IntRange(1, MAX_K),
              help="Number of documents.")
@click.option("--json", "as_json", is_flag=True, help="Print results as a JSON list.")
def similar(source_id: str, collection: str, k: int, as_json: bool) -> None:
    """Documents most like DOCUMENT_ID (its source id), no query needed."""
    from pipelines.search import similar_documents

    print_hits(similar_documents(collection, source_id, k), as_json)


@click.command()
@click.argument("question")
@click.option("-c", "--collection", required=True, help="Collection to answer from.")
@click.option("-k", "--k", "k", default=8, show_default=True, type=click.IntRange(1, MAX_K), help="Chunks to retrieve.")
@click.option("--max-tokens", default=1500, show_default=True, help="Token budget of the context.")
@click.option("--filter", "filter_", help="Document metadata that must match (JSON).")
@click.option("--neighbours", default=0, show_default=True, type=click.IntRange(0, MAX_NEIGHBOURS),
              help="Chunks before and after each hit to bring along from its document (its passage in context).")
@click.option("--rerank/--no-rerank", default=None, help="Re-rank the best candidates with the collection's "
              "reranker (`rerank:` in collections.yml) [default: when it has one].")
def ask(question: str, collection: str, k: int, max_tokens: int, filter_: str | None, neighbours: int,
        rerank: bool | None) -> None:
    """Answer QUESTION from the collection with an LLM, citing the sources.

    Set RAGPIPE_LLM_URL to an OpenAI-compatible API (e.g. http://localhost:11434/v1 for Ollama,
    https://api.openai.com/v1), and RAGPIPE_LLM_MODEL / RAGPIPE_LLM_API_KEY as needed. Without it,
    the assembled prompt is printed instead.
    """
    import httpx

    from pipelines.search import rag_context
    from pipelines.search.ask import build_messages, format_citations, llm_settings, stream_answer
    from pipelines.store.database import mask_url

    ctx = rag_context(question, collection, k=k, max_tokens=max_tokens, filter=parse_filter(filter_),
                      neighbours=neighbours, rerank=rerank)
    say_rerank_failure(ctx)
    messages = build_messages(question, ctx)
    settings = llm_settings()
    if settings is None:
        for m in messages:
            click.echo(f"--- {m['role']} ---\n{m['content']}\n")
        click.echo("No LLM configured: set RAGPIPE_LLM_URL (an OpenAI-compatible /v1 endpoint), and "
                   "RAGPIPE_LLM_MODEL / RAGPIPE_LLM_API_KEY if needed, to get an answer.", err=True)
        return
    try:
        for piece in stream_answer(settings, messages):
            click.echo(piece, nl=False)
    except (RuntimeError, OSError, ValueError, httpx.HTTPError) as exc:
        fail(f"the LLM request failed: {mask_url(str(exc))}; check RAGPIPE_LLM_URL")
    click.echo("\n\nSources:\n" + format_citations(ctx))


@click.command()
@click.argument("text")
@click.option("-c", "--collection", help="Embed TEXT as this collection's searches do: its active version's model, "
              "backend, query prompt and dimensions (an API model: its endpoint).")
@click.option("--model", help="Model name or path, for ad-hoc use [default: the configured default model].")
@click.option("--document", is_flag=True, help="Embed TEXT as a chunk (the document side and prompt), not a query.")
def embed(text: str, collection: str | None, model: str | None, document: bool) -> None:
    """Print TEXT's query embedding as a pgvector literal, for use in SQL:

    psql -c "SELECT * FROM ragpipe.semantic_search('docs', '$(ragpipe embed 'a question' -c docs)', 5)"
    """
    if collection and model:
        fail("give --collection or --model, not both: a collection's vectors come from its own model")
    if collection:
        from pipelines.collection import query_embedder
        from pipelines.search import pinned_version

        version = pinned_version(collection)
        embedder = query_embedder(version.family, version.model, version.settings)
    else:
        from pipelines.embed import get_embedder

        embedder = get_embedder(model or load_settings().model)
    vector = (embedder.encode_documents if document else embedder.encode_queries)([text])[0]
    click.echo("[" + ",".join(f"{x:.7g}" for x in vector) + "]")
