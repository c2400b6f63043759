"""Shared rate limits (#45.3): two `ragpipe ingest` processes and the search service embed through one
loopback endpoint with one key at once; the endpoint counts what arrives each second: never more than
the key's limit (with the tolerance of one request's burst), nothing fails, and queries go first."""

import os
import subprocess
import threading
import time

import httpx
import numpy as np
import yaml

from pipelines.ingest import run_ingest
from tests.conftest import RAGPIPE
from tests.test_embedders import KEY, api_collection, declared
from tests.test_service import serving

PER_SECOND = 4
"""The limit: requests_per_minute = 60 × this."""


def most_in_a_second(times: list[float]) -> int:
    """The most arrivals in any window of one second."""
    times = sorted(times)
    return max((int(np.searchsorted(times, t + 1.0, side="left")) - i for i, t in enumerate(times)), default=0)


def test_two_runs_and_the_service_share_the_keys_limit_and_queries_go_first(api_server, corpus, name, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("RAGPIPE_TEST_EMBEDDINGS_KEY", KEY)
    limited = {"batch_size": 2, "concurrency": 2, "dimensions": 384,
               "rate_limit": {"requests_per_minute": 60 * PER_SECOND}}
    entries = [api_collection(f"{name}_{part}", corpus, api_server, **limited) for part in ("a", "b", "q")]
    config = tmp_path / "collections.yml"
    config.write_text(yaml.safe_dump({"collections": entries}))
    monkeypatch.setenv("RAGPIPE_COLLECTIONS", str(config))
    (corpus / "coffee").rename(tmp_path / "coffee")  # the queried collection first: a smaller one
    run_ingest(declared(f"{name}_q"))
    (tmp_path / "coffee").rename(corpus / "coffee")

    from pipelines.service import create_app

    first = len(api_server.seen.times)
    latencies: list[float] = []
    stop = threading.Event()
    with serving(create_app()) as base:
        def ask() -> None:
            while not stop.is_set():
                started = time.monotonic()
                got = httpx.get(f"{base}/api/search", params=dict(collection=f"{name}_q", q="coffee and blood pressure",
                                                                  mode="semantic", k=3), timeout=30)
                assert got.status_code == 200, got.text
                latencies.append(time.monotonic() - started)
                stop.wait(0.3)

        runs = [subprocess.Popen([*RAGPIPE, "ingest", "-c", f"{name}_{part}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=dict(os.environ)) for part in ("a", "b")]
        asker = threading.Thread(target=ask)
        asker.start()
        try:
            outputs = [run.communicate(timeout=300)[0] for run in runs]
        finally:
            stop.set()
            asker.join(60)
            for run in runs:
                run.kill() if run.poll() is None else None
    assert [run.returncode for run in runs] == [0, 0], outputs
    arrivals = api_server.seen.times[first:]
    assert len(arrivals) > 40 and len(latencies) > 5
    assert most_in_a_second(arrivals) <= PER_SECOND + 1, "the endpoint got more than the key's limit in a second"
    span = arrivals[-1] - arrivals[0]
    assert len(arrivals) / span <= PER_SECOND * 1.1, (len(arrivals), span)
    # queries go before the runs' four waiting requesters: about one interval (0.25 s), not four
    assert float(np.median(latencies)) < 0.4 and max(latencies) < 1.5, sorted(latencies)[-5:]
