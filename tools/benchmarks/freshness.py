"""Section `freshness`: how soon a change is searchable, under `ragpipe watch` and under Airflow."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.settings import PROJECT_ROOT
from pipelines.store.connection import open_database
from tools.benchmarks.report import CORPUS, drop_collection, record
from tools.service import RAGPIPE
from tools.synthetic import (
    sentences,
)


def bench_freshness(conn, tmp: Path, probes: int = 10) -> None:
    """Seconds from a change to `ragpipe search` finding it, under `ragpipe watch` (one process
    watching a folder and a table), p50 / p95 over `probes` changes of each kind."""
    import yaml

    from tools.freshness import file_probe, row_probe

    folder = tmp / "fresh"
    folder.mkdir()
    for i, text in enumerate(sentences(CORPUS, 50)):
        (folder / f"doc-{i:02d}.md").write_text(f"# Document {i}\n\n{text}\n")
    conn.execute("CREATE SCHEMA IF NOT EXISTS bench; DROP TABLE IF EXISTS bench.fresh; "
                 "CREATE TABLE bench.fresh (id int PRIMARY KEY, body text)")
    url = open_database()
    config = tmp / "fresh.yml"
    config.write_text(yaml.safe_dump({"collections": [
        {"name": "bench_fresh_folder", "source": {"kind": "folder", "path": str(folder)}, "watch": {"debounce_s": 0.5}},
        {"name": "bench_fresh_sql", "watch": {"table": "bench.fresh", "debounce_s": 0.5},
         "source": {"kind": "sql", "url": url, "query": "SELECT id, body FROM bench.fresh", "text_column": "body"}}]}))
    env = dict(os.environ, RAGPIPE_COLLECTIONS=str(config))
    subprocess.run([RAGPIPE, "watch", "bench_fresh_sql", "--setup"], env=env, check=True, capture_output=True)
    log_path = PROJECT_ROOT / ".ragpipe" / "bench" / "watch.log"
    log = log_path.open("w")
    watcher = subprocess.Popen([RAGPIPE, "watch"], env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"ragpipe watch: log in {log_path}", flush=True)
    try:
        file_probe(folder, "bench_fresh_folder", 300)  # the first runs: the model loads, the folder is embedded
        row_probe(conn, "bench.fresh", "bench_fresh_sql", 0, 300)
        for kind, probe in (("folder", lambda i: file_probe(folder, "bench_fresh_folder")),
                            ("sql", lambda i: row_probe(conn, "bench.fresh", "bench_fresh_sql", i))):
            added, removed = zip(*(probe(i) for i in range(1, probes + 1)), strict=True)
            record("freshness", f"ragpipe watch, {kind}: change → searchable, p50 / p95 (add; delete)",
                   f"{np.percentile(added, 50):.1f} / {np.percentile(added, 95):.1f} s; "
                   f"{np.percentile(removed, 50):.1f} / {np.percentile(removed, 95):.1f} s",
                   **{f"freshness.watch.{kind}.add_p50_s": np.percentile(added, 50),
                      f"freshness.watch.{kind}.add_p95_s": np.percentile(added, 95),
                      f"freshness.watch.{kind}.delete_p50_s": np.percentile(removed, 50),
                      f"freshness.watch.{kind}.delete_p95_s": np.percentile(removed, 95)})
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(60)
        log.close()
        subprocess.run([RAGPIPE, "watch", "bench_fresh_sql", "--setup", "--remove"], env=env, capture_output=True,
                       check=False)
        for name in ("bench_fresh_folder", "bench_fresh_sql"):
            drop_collection(conn, name)
    bench_airflow_freshness(tmp, probes)


def bench_airflow_freshness(tmp: Path, probes: int) -> None:
    """The same under the real scheduler: `python -m tools.standalone freshness` starts the stack of
    `make run` in a temp home (its own database), then changes each watched sample source `probes` times."""
    out, home = tmp / "airflow-freshness.json", tmp / "airflow-home"
    log_path = PROJECT_ROOT / ".ragpipe" / "bench" / "airflow-freshness.log"
    with log_path.open("w") as log:
        print(f"standalone Airflow: log in {log_path}", flush=True)
        done = subprocess.run([sys.executable, "-m", "tools.standalone", "freshness"], stdout=log,
                              stderr=subprocess.STDOUT, timeout=3600, check=False, cwd=PROJECT_ROOT,
                              env=dict(os.environ, RAGPIPE_HOME=str(home), FRESHNESS_OUT=str(out),
                                       FRESHNESS_PROBES=str(probes)))
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"tools.standalone freshness failed ({done.returncode}); see {log_path}")
    for kind, seconds in json.loads(out.read_text()).items():
        key = kind.split()[0].lower()
        added, removed = seconds["add"], seconds["delete"]
        record("freshness", f"Airflow (AssetWatcher), {kind}: change → searchable, p50 / p95 (add; delete)",
               f"{np.percentile(added, 50):.1f} / {np.percentile(added, 95):.1f} s; "
               f"{np.percentile(removed, 50):.1f} / {np.percentile(removed, 95):.1f} s",
               **{f"freshness.airflow.{key}.add_p50_s": np.percentile(added, 50),
                  f"freshness.airflow.{key}.add_p95_s": np.percentile(added, 95),
                  f"freshness.airflow.{key}.delete_p50_s": np.percentile(removed, 50),
                  f"freshness.airflow.{key}.delete_p95_s": np.percentile(removed, 95)})
