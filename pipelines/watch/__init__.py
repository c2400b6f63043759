"""Freshness: runs started by source changes, under `ragpipe watch` (live.py) or an Airflow
AssetWatcher (pipelines/airflow/triggers.py), from one set of change streams (changes.py); what a
source needs to send events is installed by setup.py."""

from pipelines.watch.changes import source_changes
from pipelines.watch.live import run_watch, watch_collections

__all__ = ["run_watch", "source_changes", "watch_collections"]
