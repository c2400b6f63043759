"""Process-wide settings, read from the environment in one place."""

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = PROJECT_ROOT / "sql"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Settings:
    home: Path
    """State directory (embedded database, caches, Airflow home)."""
    pgdata: Path
    database_url: str | None
    """External PostgreSQL; when unset the embedded server under `pgdata` is used."""
    collections_file: Path
    model: str
    lock_timeout_s: float
    extract_timeout_s: float
    """Per-document extraction time limit (0: extract in-process, no limit)."""
    extract_memory_mb: int


def load_settings() -> Settings:
    home = Path(os.environ.get("RAGPIPE_HOME", PROJECT_ROOT / ".ragpipe")).resolve()
    return Settings(
        home=home,
        pgdata=Path(os.environ.get("RAGPIPE_PGDATA", home / "pgdata")).resolve(),
        database_url=os.environ.get("RAGPIPE_DATABASE_URL") or None,
        collections_file=Path(os.environ.get("RAGPIPE_COLLECTIONS", PROJECT_ROOT / "collections.yml")),
        model=os.environ.get("RAGPIPE_MODEL", DEFAULT_MODEL),
        lock_timeout_s=float(os.environ.get("RAGPIPE_LOCK_TIMEOUT", "60")),
        extract_timeout_s=float(os.environ.get("RAGPIPE_EXTRACT_TIMEOUT", "120")),
        extract_memory_mb=int(os.environ.get("RAGPIPE_EXTRACT_MEMORY_MB", "4096")),
    )
