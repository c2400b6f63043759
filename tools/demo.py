"""What `make run` prints: a semantic search over the sample collection and the SQL behind it."""

import sys

from pipelines.cli.search import print_hits
from pipelines.embed import get_embedder
from pipelines.search import search
from pipelines.settings import DEFAULT_MODEL

SQL = """SELECT source_id, round(score::numeric, 3) AS score, left(text, 80) AS text
FROM ragpipe.semantic_search('{collection}', '{vector}', k => 3);"""


def main(question: str, collection: str = "sample") -> None:
    print(f"\nQuestion: {question}\n")
    # the best 5 chunks, grouped by document as `ragpipe search` and the page show them
    print_hits(search(question, collection=collection, k=5, mode="semantic"), as_json=False, by_document=True)
    vector = get_embedder(DEFAULT_MODEL).encode([question])[0]
    short = "[" + ",".join(f"{x:.4f}" for x in vector[:3]) + ", ...384 numbers...]"
    print("\nThe same search in SQL (ragpipe db psql; the vector comes from `ragpipe embed \"...\"`):\n")
    print(SQL.format(collection=collection, vector=short))
    print("\nOr in one line from a shell:\n")
    print(f"  .venv/bin/ragpipe db psql -c \"SELECT source_id, score FROM ragpipe.semantic_search("
          f"'{collection}', '$(.venv/bin/ragpipe embed '{question}')', 3)\"\n")


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "Does coffee affect blood vessel function?")
