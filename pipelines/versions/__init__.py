"""Collection versions, above the run core: which version a run writes, and the gate a new version
passes to serve searches.

A change of `model`, `chunk_tokens`, `chunk_overlap`, `chunk_context` or the HNSW build settings
(`index.m`, `index.ef_construction`) makes the next run build a new version beside the active one:
its own documents, chunk partition and HNSW index, with every vector of the same model reused by
chunk text (pipelines/store cached_embeddings). The active version keeps serving, and is kept in
step by the same run, until the new one is built, scored (`eval:` and `smoke_queries`) and promoted:
two rows renamed in one transaction (ragpipe.promote_version). Nothing else is a new version:
search defaults, ef_search, keyword_candidates or keyword_rescore change in place.

    targets.py  which versions a run writes (plan_versions), and the spec that writes one (spec_for)
    gate.py     score a built version against the active one and promote it (conclude)
    manage.py   the commands: list, promote, rollback, prune
"""

from pipelines.versions.gate import check_eval_set, conclude
from pipelines.versions.manage import list_versions, promote, prune, rollback
from pipelines.versions.targets import Targets, plan_versions, spec_for

__all__ = ["Targets", "check_eval_set", "conclude", "list_versions", "plan_versions", "promote", "prune", "rollback",
           "spec_for"]
