"""Dev tooling, not shipped in the wheel: benchmarks, synthetic corpora, the sample servers,
the demo and the local Airflow stack of `make run`."""
