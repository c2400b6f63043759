"""An analysis for issue 33, not part of the product: how much work exact top-10 BM25 needs.

`python -m tools.bm25_bounds [COLLECTION] [QUERIES]` (default: make bench's bench_search_1000000, 50
NFCorpus queries) reads every posting of each query's words from the collection (as keyword_search
weighs them: the 32 rarest words, idf from term_stats) and computes, per query:
  * the exact top 10 and its 10th score (theta);
  * MaxScore with theta known in advance (an oracle, the best that MaxScore can do): the words whose
    maximum parts together stay below theta need not be read; every posting of the others must be,
    and each chunk found there whose known part plus those maxima reaches theta must be scored;
  * the same with Block-Max bounds (128 postings a block in chunk order, as pg_textsearch stores them):
    the unread words' bound for a chunk is the maximum of the block that would hold it;
  * all the query words' postings, which reading everything costs.
It prints p50 / p90 / p95 of each. No index or setting of the collection is changed.
"""

import json
import math
import sys

import numpy as np

from pipelines.store.connection import open_database
from pipelines.store.database import connect
from tools.synthetic import NFCORPUS

K = 10
BLOCK = 128

WORDS = """
SELECT w.lexeme, t.chunks FROM ragpipe.query_lexemes(%s, %s) w(lexeme)
JOIN ragpipe.term_stats t ON t.collection_id = %s AND t.lexeme = w.lexeme
ORDER BY t.chunks, w.lexeme LIMIT 32
"""
POSTINGS = """
SELECT chunk_id, ragpipe.bm25_tf(tf, len, %s) FROM ragpipe.keyword_postings
WHERE collection_id = %s AND lexeme = %s ORDER BY chunk_id
"""


def sums(ids: list[np.ndarray], parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk's summed parts over the given lists: (chunk ids, sums)."""
    u, inv = np.unique(np.concatenate(ids), return_inverse=True)
    return u, np.bincount(inv, np.concatenate(parts))


def work(words: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int, int, int]:
    """(postings MaxScore reads, chunks it scores, chunks Block-Max scores, all postings) for one query."""
    ids, score = sums([i for i, _ in words], [p for _, p in words])
    theta = np.sort(score)[-K] if len(score) >= K else 0.0
    top = [float(p.max()) for _, p in words]
    skipped, bound = [], 0.0
    for i in np.argsort(top):
        if bound + top[i] > theta:
            break
        skipped.append(int(i))
        bound += top[i]
    read = [i for i in range(len(words)) if i not in skipped]
    eu, known = sums([words[i][0] for i in read], [words[i][1] for i in read])
    blocked = np.zeros(len(eu))
    for i in skipped:
        chunk_ids, parts = words[i]
        maxima = np.maximum.reduceat(parts, np.arange(0, len(parts), BLOCK))
        firsts = chunk_ids[::BLOCK]
        blocked += maxima[np.clip(np.searchsorted(firsts, eu, "right") - 1, 0, len(firsts) - 1)]
    return (sum(len(words[i][0]) for i in read), int((known + bound >= theta).sum()),
            int((known + blocked >= theta).sum()), sum(len(i) for i, _ in words))


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "bench_search_1000000"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    queries = [json.loads(line)["text"] for line in (NFCORPUS / "queries.jsonl").open()][:count]
    rows = []
    with connect(open_database(), autocommit=True) as conn:
        found = conn.execute("SELECT c.id, c.settings, s.chunks, s.avg_length FROM ragpipe.collections c JOIN "
                             "ragpipe.text_stats s ON s.collection_id = c.id WHERE c.name = %s", (name,)).fetchone()
        if found is None:
            sys.exit(f"no collection {name!r} with keyword statistics: run `BENCH_SCALE=large BENCH_SECTIONS=search "
                     "make bench` first")
        cid, settings, n, avg = found
        for q in queries:
            words = []
            for lexeme, df in conn.execute(WORDS, (json.dumps(settings), q, cid)).fetchall():
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                a = np.array(conn.execute(POSTINGS, (avg, cid, lexeme)).fetchall(), dtype=np.float64)
                words.append((a[:, 0].astype(np.int64), idf * a[:, 1]))
            if words:
                rows.append(work(words))
    a = np.array(rows, dtype=float)
    print(f"{name}, {len(rows)} NFCorpus queries: p50 / p90 / p95")
    for j, what in enumerate(("postings MaxScore must read (theta known in advance)",
                              "chunks MaxScore must score exactly",
                              "chunks Block-Max (blocks of 128) must score exactly",
                              "postings of all query words")):
        print(f"  {what}: " + " / ".join(f"{v:,.0f}" for v in np.percentile(a[:, j], [50, 90, 95])))


if __name__ == "__main__":
    main()
