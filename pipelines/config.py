"""Collections: one searchable corpus each (source + chunking + model), declared in collections.yml."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .settings import DEFAULT_MODEL

SCHEDULE_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@continuous"}
DEFAULT_INDEX = {"m": 16, "ef_construction": 64, "ef_search": 40, "keyword_candidates": 10_000}


class ConfigError(ValueError):
    """collections.yml (or a command line) describes a collection that cannot work."""


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    source: dict[str, Any]
    """`kind` plus that kind's options, e.g. {"kind": "folder", "path": "docs/"}."""
    schedule: str | None = None
    model: str = DEFAULT_MODEL
    chunk_tokens: int | None = None
    """Tokens per chunk, special tokens included; default: the model's max_seq_length."""
    chunk_overlap: int = 32
    batch_size: int = 32
    """Chunks per call to the model."""
    docs_per_batch: int = 64
    """Documents per load transaction (and per mapped Airflow task)."""
    index: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_INDEX))
    duplicates: str = "skip"
    """skip: a document with the same content as another one (another name) is recorded, not indexed
    twice; keep: index both (data sets whose records are judged separately, like BEIR corpora)."""
    description: str = ""
    smoke_queries: list[str] = field(default_factory=list)
    """Known queries that must return results after each refresh (the Airflow smoke-check DAG)."""


SPEC_KEYS = {f.name for f in dataclasses.fields(CollectionSpec)}


def load_collections(path: Path) -> dict[str, CollectionSpec]:
    """Read and validate collections.yml; relative source paths are relative to the file."""
    if not path.exists():
        raise ConfigError(f"{path}: no such collections file (set RAGPIPE_COLLECTIONS or create it)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("collections"), list):
        raise ConfigError(f"{path}: expected a top-level `collections:` list")
    specs: dict[str, CollectionSpec] = {}
    for i, raw in enumerate(data["collections"]):
        spec = parse_collection(raw, where=f"{path}: collection #{i + 1}", base=path.parent)
        if spec.name in specs:
            raise ConfigError(f"{path}: collection {spec.name!r} is declared twice")
        specs[spec.name] = spec
    return specs


def parse_collection(raw: Any, where: str, base: Path) -> CollectionSpec:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ConfigError(f"{where}: each collection needs a `name`")
    where = f"collection {raw['name']!r}"
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known keys: {sorted(SPEC_KEYS)}")
    if "source" not in raw or not isinstance(raw["source"], dict):
        raise ConfigError(f"{where}: missing `source` (e.g. source: {{kind: folder, path: docs/}})")
    source = dict(raw["source"])
    check_source(source, where, base)
    index = dict(DEFAULT_INDEX, **(raw.get("index") or {}))
    unknown_index = set(index) - set(DEFAULT_INDEX) - {"maintenance_work_mem_cap_mb"}
    if unknown_index:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown_index)} under `index`")
    spec = CollectionSpec(**dict(raw, source=source, index=index))
    check_schedule(spec.schedule, where)
    for key in ("batch_size", "docs_per_batch"):
        if not isinstance(getattr(spec, key), int) or getattr(spec, key) < 1:
            raise ConfigError(f"{where}: `{key}` must be a positive integer")
    if spec.chunk_tokens is not None and (not isinstance(spec.chunk_tokens, int) or spec.chunk_tokens < 16):
        raise ConfigError(f"{where}: `chunk_tokens` must be an integer of at least 16")
    if spec.duplicates not in ("skip", "keep"):
        raise ConfigError(f"{where}: `duplicates` must be skip or keep, got {spec.duplicates!r}")
    if not isinstance(spec.chunk_overlap, int) or spec.chunk_overlap < 0:
        raise ConfigError(f"{where}: `chunk_overlap` must be a non-negative integer")
    return spec


def check_schedule(schedule: Any, where: str) -> None:
    if schedule is None or schedule in SCHEDULE_PRESETS:
        return
    from croniter import croniter

    if not isinstance(schedule, str) or not croniter.is_valid(schedule):
        raise ConfigError(f"{where}: `schedule` {schedule!r} is not a cron expression or one of "
                          f"{sorted(SCHEDULE_PRESETS)} (or null for manual runs only)")


def check_source(source: dict[str, Any], where: str, base: Path) -> None:
    """Check the source kind and option names; make relative paths absolute."""
    from .sources import SOURCE_OPTIONS

    kind = source.get("kind")
    if kind not in SOURCE_OPTIONS:
        raise ConfigError(f"{where}: source `kind` must be one of {sorted(SOURCE_OPTIONS)}, got {kind!r}")
    options = set(source) - {"kind"}
    unknown = options - SOURCE_OPTIONS[kind]["allowed"]
    if unknown:
        raise ConfigError(f"{where}: unknown source option(s) {sorted(unknown)} for kind {kind!r}; "
                          f"known: {sorted(SOURCE_OPTIONS[kind]['allowed'])}")
    missing = SOURCE_OPTIONS[kind]["required"] - options
    if missing:
        raise ConfigError(f"{where}: source of kind {kind!r} needs {sorted(missing)}")
    if "path" in source and not str(source["path"]).startswith(("s3://", "/")):
        source["path"] = str((base / str(source["path"])).resolve())
