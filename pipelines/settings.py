"""Process-wide settings, read from the environment in one place."""

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
"""The source checkout when running from one (an editable install); site-packages otherwise."""
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "sql").is_dir()
SQL_DIR = PROJECT_ROOT / "sql" if IN_CHECKOUT else PACKAGE_DIR / "sql"
"""sql/ of the checkout, or the copy the wheel carries as package data (pipelines/sql)."""
DEFAULT_HOME = PROJECT_ROOT / ".ragpipe" if IN_CHECKOUT else Path.home() / ".ragpipe"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TASK_TIMEOUT_DEFAULTS = {"plan": 1800.0, "batch": 3600.0, "finalize": 3600.0, "smoke_check": 600.0}
"""Seconds; RAGPIPE_PLAN_TIMEOUT, RAGPIPE_BATCH_TIMEOUT, ... override them."""


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
    task_timeouts_s: dict[str, float]
    """Airflow execution_timeout per task kind (plan, batch, finalize, smoke_check)."""
    retries: int
    retry_delay_s: float
    embed_queue: str


def load_settings() -> Settings:
    home = Path(os.environ.get("RAGPIPE_HOME", DEFAULT_HOME)).expanduser().resolve()
    return Settings(
        home=home,
        pgdata=Path(os.environ.get("RAGPIPE_PGDATA", home / "pgdata")).resolve(),
        database_url=os.environ.get("RAGPIPE_DATABASE_URL") or None,
        collections_file=Path(os.environ.get("RAGPIPE_COLLECTIONS", (PROJECT_ROOT if IN_CHECKOUT else home)
                                             / "collections.yml")),
        model=os.environ.get("RAGPIPE_MODEL", DEFAULT_MODEL),
        lock_timeout_s=float(os.environ.get("RAGPIPE_LOCK_TIMEOUT", "60")),
        extract_timeout_s=float(os.environ.get("RAGPIPE_EXTRACT_TIMEOUT", "120")),
        extract_memory_mb=int(os.environ.get("RAGPIPE_EXTRACT_MEMORY_MB", "4096")),
        task_timeouts_s={task: float(os.environ.get(f"RAGPIPE_{task.upper()}_TIMEOUT", default))
                         for task, default in TASK_TIMEOUT_DEFAULTS.items()},
        retries=int(os.environ.get("RAGPIPE_RETRIES", "3")),
        retry_delay_s=float(os.environ.get("RAGPIPE_RETRY_DELAY", "30")),
        embed_queue=os.environ.get("RAGPIPE_EMBED_QUEUE", "default"),
    )
