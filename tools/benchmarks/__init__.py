"""`make bench`: the figures behind ragpipe's performance claims, measured side by side in one run.

BENCH_SCALE=small (default, a few minutes), large (1M chunks) or xl (3M, for its search section: ~75 min);
BENCH_QUALITY=1 adds the NFCorpus nDCG@10 of the
torch and onnx-int8 backends to a small run (always part of large; ~15 min the first time, cached after).
BENCH_SECTIONS=embedding,loading,reruns,versions,search,service,freshness,metrics (the default: all) runs some of them;
BENCH_SECTIONS=quality runs only the NFCorpus nDCG@10 of the backends and storage choices. Results go to
stdout and into the scale's results file (docs/benchmarks.json, -large.json, -xl.json: each section
replaced by this run's, with its date, machine and command; named figures merged), from which
docs/benchmarks.md is written again. The machine is the CPU model and the flags that decide the fastest
embedding backend (AVX2, AVX-512 VNNI/BF16, AMX). One module a section (embedding, loading, search,
service, freshness, metrics); report.py the results; run.py the order.
Everything runs through the real pipeline, model and embedded PostgreSQL; synthetic corpora are
resampled sentences of NFCorpus (tools/synthetic.py). The search section's sentence embeddings
take ~15 min the first time (cached under .ragpipe/bench).
"""

from tools.benchmarks.report import merge_figures

__all__ = ["merge_figures"]
