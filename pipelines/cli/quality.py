"""`ragpipe eval` and `ragpipe tune`: retrieval quality on a BEIR data set, and ef_search against recall."""

from pathlib import Path
from typing import Any

import click

from pipelines.cli.common import emit, fail


@click.command("eval")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--modes", default="semantic,keyword,hybrid,exact", show_default=True,
              help="Comma-separated: semantic, keyword, hybrid, exact (brute-force semantic).")
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv to score against.")
@click.option("--collection", help="Collection name [default: beir_<dataset>].")
@click.option("--max-queries", type=int, help="Score only the first N queries.")
@click.option("--chunk-context", is_flag=True,
              help="Evaluate a collection that embeds each chunk after its title (beir_<dataset>_ctx).")
@click.option("--chunk-tokens", type=click.IntRange(16), default=None,
              help="Evaluate a collection chunked to this many tokens (beir_<dataset>_t<N>) "
                   "[default: the model's limit].")
@click.option("--sweep", is_flag=True,
              help="Also score hybrid under each fusion setting (rrf_k 10/30/60, convex alpha 0.3-0.7). "
                   "Choose on --split dev, then report once on test.")
@click.option("--rerank", "rerank_json", metavar="JSON", help="Also score each mode re-ranked by this reranker "
              "(a `rerank:` setting as JSON, e.g. '{\"model\": \"rerank-v3.5\", \"base_url\": "
              "\"https://api.cohere.com/v2\", \"api_key_env\": \"COHERE_API_KEY\"}'), as rows `<mode>+rerank`.")
@click.option("--enrich", "enrich_json", metavar="JSON", help="Also build the corpus with written chunk context "
              "(an `enrich.context` setting as JSON, e.g. '{\"model\": \"gpt-4o-mini\"}') in a collection of its "
              "own and score each mode on it, as rows `<mode>+context`.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_(dataset_dir: Path, modes: str, split: str, collection: str | None, max_queries: int | None,
          chunk_context: bool, chunk_tokens: int | None, sweep: bool, rerank_json: str | None,
          enrich_json: str | None, as_json: bool) -> None:
    """Retrieval quality on a BEIR data set (corpus.jsonl, queries.jsonl, qrels/test.tsv).

    Ingests the corpus through the normal pipeline (incrementally: re-runs are cheap), runs every
    test query through the SQL functions and reports nDCG@10, Recall@100, MRR@10 and latency.
    A document's score is its best chunk's score.
    """
    from tabulate import tabulate

    from pipelines.search.evaluate import evaluate

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = set(wanted) - {"semantic", "keyword", "hybrid", "exact"}
    if unknown:
        fail(f"unknown mode(s) {sorted(unknown)}")
    report = evaluate(dataset_dir, wanted, collection=collection, split=split, max_queries=max_queries, sweep=sweep,
                      chunk_context=chunk_context, chunk_tokens=chunk_tokens, rerank=reranker_of(rerank_json),
                      enrich=options_of(enrich_json, "--enrich"))
    if as_json:
        emit(report)
        return
    click.echo(f"{report['dataset']}: {report['documents']} documents, {report['queries']} queries ({split})")
    scored = {**report["modes"], **{f"hybrid {label}": m for label, m in report.get("sweep", {}).items()}}
    if scored:
        rows = [[mode, *m.values()] for mode, m in scored.items()]
        click.echo(tabulate(rows, headers=["mode", *next(iter(scored.values())).keys()]))


def reranker_of(text: str | None) -> dict[str, Any] | None:
    """--rerank's JSON as stored RerankOptions, or a one-line failure."""
    return options_of(text, "--rerank")


def options_of(text: str | None, option: str) -> dict[str, Any] | None:
    """An option's JSON as its settings (--rerank: RerankOptions, --enrich: ContextOptions), or a
    one-line failure."""
    if not text:
        return None
    from pydantic import ValidationError

    from pipelines.config import ContextOptions, RerankOptions

    model = RerankOptions if option == "--rerank" else ContextOptions
    try:
        return model.model_validate_json(text).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or option}: {e['msg']}" for e in exc.errors())
        fail(f"{option}: {problems}")


@click.command()
@click.argument("collection")
@click.option("--recall", "target", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Recall@10 to reach.")
@click.option("--queries", type=click.IntRange(1), default=30, show_default=True,
              help="Stored chunks used as queries (each costs one exact search: ~6 s at 1M chunks on 2 cores).")
@click.option("--query", "texts", multiple=True, help="A real query to measure too (repeatable), embedded as the "
              "collection's searches embed it; its smoke and inline eval queries are always added.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON.")
def tune(collection: str, target: float, queries: int, texts: tuple[str, ...], as_json: bool) -> None:
    """Measure COLLECTION's semantic recall@10 and latency at rising ef_search, and name the smallest
    ef_search that reaches --recall: set it as `index: {ef_search: N}` in collections.yml.

    Recall is against exact search, on the collection's own vectors. Nothing is changed: each value
    is tried in a transaction that is rolled back.
    """
    from dataclasses import asdict

    from pipelines.search.tuning import choose_ef_search, recall_curve
    from pipelines.store.connection import open_database
    from pipelines.store.database import connect

    with connect(open_database(), autocommit=True) as conn:
        try:
            curve = recall_curve(conn, collection, queries, target=target, texts=list(texts),
                                 progress=lambda line: click.echo(line, err=True) if not as_json else None)
        except LookupError as exc:
            fail(str(exc))
    best = choose_ef_search(curve, target)
    if as_json:
        emit({"curve": [asdict(p) for p in curve], "ef_search": best.ef_search if best else None})
        return
    for p in curve:
        click.echo(f"ef_search {p.ef_search:>4}: recall@10 {p.recall:.3f}, "
                   f"p50 {p.p50_ms:.1f} ms, p95 {p.p95_ms:.1f} ms")
    if best is None:
        fail(f"no ef_search up to {curve[-1].ef_search} reaches recall {target}: rebuild the index with a "
              "larger index.m or ef_construction (a new version)")
    click.echo(f"set `index: {{ef_search: {best.ef_search}}}` for {collection} in collections.yml "
               f"(recall@10 {best.recall:.3f} at p50 {best.p50_ms:.1f} ms)")
