"""The run core: one collection row synced with its source. It knows nothing of versions: it is
given a concrete spec whose name is the row it writes (pipelines/versions decides which rows).

The stages, in the order data flows, one module each:

    plan.py      list the source, diff fingerprints against the documents table
                 → new / changed / unchanged / deleted, and a run row in ragpipe.ingest_runs
    read.py      read → hash (identical content: keep, just record the fingerprint) → extract → chunk,
                 finding stored vectors of identical chunk texts
    encode.py    embed the new chunk texts of one or more batches in one model call
    load.py      replace the batch's documents in transactions of COMMIT_EVERY documents
    finalize.py  delete what disappeared (complete listings only) → HNSW index → keyword and planner
                 statistics (once 10% changed) → close the run
    run.py       the whole run in this process (reading ahead and loading in threads), and one batch
"""

from pipelines.sync.finalize import finalize_run
from pipelines.sync.load import BatchResult
from pipelines.sync.plan import Plan, dry_run_plan, plan_run
from pipelines.sync.run import process_batch, sync_collection

__all__ = ["BatchResult", "Plan", "dry_run_plan", "finalize_run", "plan_run", "process_batch", "sync_collection"]
