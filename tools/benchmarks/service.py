"""Section `service`: the HTTP service under concurrent clients."""

import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from tools.benchmarks.report import record
from tools.benchmarks.search import search_collection
from tools.service import ragpipe_serve


def bench_service(conn, chunks: int, queries: int) -> None:
    """`ragpipe serve` end to end (HTTP, query embedding, SQL) on the search section's collection:
    latency, throughput at 1/8/32 clients, and 50 clients for 60 s (errors, the service's RSS)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    name, qs = search_collection(conn, chunks, queries)
    with tempfile.TemporaryDirectory() as tmp, ragpipe_serve(Path(tmp) / "serve.log") as (base, proc):
        server = psutil.Process(proc.pid)

        def one(client: httpx.Client, q: str, mode: str = "hybrid") -> float:
            start = time.perf_counter()
            got = client.get(f"{base}/api/search", params={"collection": name, "q": q, "k": 10, "mode": mode})
            if got.status_code != 200 or not got.json()["results"]:
                raise RuntimeError(f"HTTP {got.status_code}: {got.text[:200]}")
            return (time.perf_counter() - start) * 1000

        with httpx.Client(timeout=60) as client:
            for q in qs[:10]:
                one(client, q)  # warm: the model, the pool, PostgreSQL's caches
            for mode in ("semantic", "keyword", "hybrid"):
                lat = [one(client, q, mode) for q in qs]
                record("service", f"GET /api/search {mode}, {chunks} chunks, 1 client: p50 / p95",
                       f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} ms")

        def load(clients: int, seconds: float) -> tuple[int, int, list[float]]:
            stop = time.monotonic() + seconds
            errors: list[str] = []

            def client_loop(i: int) -> list[float]:
                lat = []
                with httpx.Client(timeout=60) as client:
                    n = i
                    while time.monotonic() < stop:
                        try:
                            lat.append(one(client, qs[n % len(qs)]))
                        except Exception as exc:
                            errors.append(str(exc)[:200])
                        n += clients
                return lat

            with ThreadPoolExecutor(clients) as pool:
                lats = [x for part in pool.map(client_loop, range(clients)) for x in part]
            if errors:
                print(f"  {len(errors)} errors, first: {errors[0]}", flush=True)
            return len(lats), len(errors), lats

        for clients in (1, 8, 32):
            done, failed, lat = load(clients, 20)
            record("service", f"hybrid at {clients} concurrent clients (20 s): throughput, p50 / p95",
                   f"{done / 20:.1f} req/s, {np.percentile(lat, 50):.0f} / {np.percentile(lat, 95):.0f} ms, "
                   f"{failed} errors")
        before = server.memory_info().rss / 2**20
        done, failed, lat = load(50, 60)
        after = server.memory_info().rss / 2**20
        record("service", "50 clients for 60 s: requests, errors, p95",
               f"{done}, {failed} errors, {np.percentile(lat, 95):.0f} ms")
        record("service", "service RSS before / after the 60 s soak", f"{before:.0f} / {after:.0f} MB")
