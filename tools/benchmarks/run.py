"""`make bench`: run the sections asked for (BENCH_SECTIONS) at a scale (BENCH_SCALE), then write the results."""

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipelines.settings import PROJECT_ROOT
from pipelines.store.connection import open_database
from pipelines.store.database import connect
from tools.benchmarks.embedding import bench_backend_quality, bench_embedding
from tools.benchmarks.freshness import bench_freshness
from tools.benchmarks.loading import bench_loading, bench_reruns_and_memory, bench_versions
from tools.benchmarks.metrics import bench_metrics
from tools.benchmarks.report import CORPUS, CORPUS_NAME, SCALES, machine, quality_asked, record, write_report
from tools.benchmarks.search import bench_search, bench_storage_quality
from tools.benchmarks.service import bench_service
from tools.synthetic import (
    runnable_sections,
)

ALL_SECTIONS = "embedding,loading,reruns,versions,search,service,freshness,metrics"


def main() -> None:
    scale = os.environ.get("BENCH_SCALE", "small")
    cfg = SCALES[scale]
    started = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, connect(open_database(), autocommit=True) as conn:
        tmp_path = Path(tmp)
        threading.excepthook = lambda args: print(args, file=sys.stderr)
        sections = os.environ.get("BENCH_SECTIONS", ALL_SECTIONS).split(",")
        sections, skipped = runnable_sections(sections, CORPUS)
        print(f"corpus: {CORPUS_NAME}", flush=True)
        if skipped:
            record("corpus", f"skipped: {', '.join(skipped)}", "these need a BEIR corpus: none at BENCH_CORPUS or "
                   "../shared/data/beir/nfcorpus (docs/search-quality.md says where to get one)")
        if "embedding" in sections:
            bench_embedding(conn, tmp_path, cfg["embed_docs"])
        if "quality" in sections or ("embedding" in sections and (scale == "large" or quality_asked())):
            bench_backend_quality()
            bench_storage_quality()
        if "loading" in sections:
            bench_loading(conn, cfg["load_rows"])
        if "reruns" in sections:
            bench_reruns_and_memory(conn, tmp_path, cfg["rerun_docs"], cfg["memory_docs"])
        if "versions" in sections:
            bench_versions(conn, tmp_path)
        if "search" in sections:
            bench_search(conn, cfg["search_chunks"], cfg["queries"])
        if "service" in sections:
            bench_service(conn, min(cfg["search_chunks"], 100_000), cfg["queries"])
        if "freshness" in sections:
            bench_freshness(conn, tmp_path)
        if "metrics" in sections:
            bench_metrics(conn)
        shutil.rmtree(tmp_path / "rerun", ignore_errors=True)
    report = write_report(scale, time.perf_counter() - started)
    print(f"\nwrote {report.relative_to(PROJECT_ROOT)} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
