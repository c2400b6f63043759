"""BEIR data sets on disk (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): the readers `ragpipe eval`
and the promotion gate share."""

import csv
import json
from pathlib import Path


def prepare_corpus(dataset: Path, out: Path) -> Path:
    """corpus.jsonl → a JSONL table with id, title and text (rewritten only if changed), ingested as a
    user's table with a title_column is: the title is embedded and searched as the text's first paragraph."""
    lines = []
    with (dataset / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            lines.append(json.dumps({"id": doc["_id"], "title": doc.get("title") or None, "text": doc.get("text", "")}))
    data = "\n".join(lines) + "\n"
    if not out.exists() or out.read_text() != data:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(data)
    return out


def load_qrels(dataset: Path, split: str) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with (dataset / "qrels" / f"{split}.tsv").open(newline="") as f:
        for row in csv.DictReader((line.replace("\r", "") for line in f), delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def load_queries(dataset: Path, ids: set[str]) -> dict[str, str]:
    with (dataset / "queries.jsonl").open() as f:
        return {q["_id"]: q["text"] for q in map(json.loads, f) if q["_id"] in ids}
