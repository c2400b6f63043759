"""Process-wide settings, read from the environment in one place."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

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

MAX_K = 1000
"""The most results a command or an HTTP request returns (the SQL functions check their own, larger bound)."""
MAX_NEIGHBOURS = 20
"""The most chunks before and after a hit that RAG context brings along (ragpipe.rag_context checks it too)."""


class SettingsError(ValueError):
    """A RAGPIPE_* variable has a value that cannot work; the message names it."""


class Settings(BaseSettings):
    """Every RAGPIPE_* variable, typed and bounded (pydantic-settings); unset ones take these defaults."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=False)

    home_dir: Path = Field(DEFAULT_HOME, validation_alias="RAGPIPE_HOME")
    """State directory (embedded database, caches, Airflow home)."""
    pgdata_dir: Path | None = Field(None, validation_alias="RAGPIPE_PGDATA")
    database_url: str | None = Field(None, validation_alias="RAGPIPE_DATABASE_URL")
    """External PostgreSQL; when unset the embedded server under `pgdata` is used."""
    collections: Path | None = Field(None, validation_alias="RAGPIPE_COLLECTIONS")
    model: str = Field(DEFAULT_MODEL, validation_alias="RAGPIPE_MODEL")
    lock_timeout_s: float = Field(60, ge=0, validation_alias="RAGPIPE_LOCK_TIMEOUT")
    extract_timeout_s: float = Field(120, ge=0, validation_alias="RAGPIPE_EXTRACT_TIMEOUT")
    """Per-document extraction time limit (0: extract in-process, no limit)."""
    extract_memory_mb: int = Field(4096, ge=256, validation_alias="RAGPIPE_EXTRACT_MEMORY_MB")
    plan_timeout_s: float = Field(TASK_TIMEOUT_DEFAULTS["plan"], gt=0, validation_alias="RAGPIPE_PLAN_TIMEOUT")
    batch_timeout_s: float = Field(TASK_TIMEOUT_DEFAULTS["batch"], gt=0, validation_alias="RAGPIPE_BATCH_TIMEOUT")
    finalize_timeout_s: float = Field(TASK_TIMEOUT_DEFAULTS["finalize"], gt=0,
                                      validation_alias="RAGPIPE_FINALIZE_TIMEOUT")
    smoke_check_timeout_s: float = Field(TASK_TIMEOUT_DEFAULTS["smoke_check"], gt=0,
                                         validation_alias="RAGPIPE_SMOKE_CHECK_TIMEOUT")
    auto_backend: Literal["torch", "bf16", "fp16", "onnx-int8"] | None = Field(
        None, validation_alias="RAGPIPE_AUTO_BACKEND")
    """The backend `<model>#auto` builds new versions with (default: chosen from the CPU's flags, or a GPU)."""
    device: Literal["auto", "cpu", "cuda"] = Field("auto", validation_alias="RAGPIPE_DEVICE")
    """Where the torch backends run: auto is a visible CUDA GPU, else the CPU."""
    cache_max_rows: int = Field(1_000_000, ge=0, validation_alias="RAGPIPE_CACHE_MAX_ROWS")
    """Embedding cache entries kept (vectors of chunk texts no collection holds any more), newest used first."""
    cache_max_age_days: float = Field(30, ge=0, validation_alias="RAGPIPE_CACHE_MAX_AGE_DAYS")
    """Embedding cache entries unused this long are dropped (by every run, and `ragpipe cache prune`)."""
    retries: int = Field(3, ge=0, le=100, validation_alias="RAGPIPE_RETRIES")
    retry_delay_s: float = Field(30, ge=0, validation_alias="RAGPIPE_RETRY_DELAY")
    embed_queue: str = Field("default", min_length=1, validation_alias="RAGPIPE_EMBED_QUEUE")
    llm_url: str | None = Field(None, validation_alias="RAGPIPE_LLM_URL")
    llm_model: str = Field("gpt-4o-mini", validation_alias="RAGPIPE_LLM_MODEL")
    llm_api_key: SecretStr | None = Field(None, validation_alias="RAGPIPE_LLM_API_KEY")
    llm_requests_per_minute: float | None = Field(None, gt=0, validation_alias="RAGPIPE_LLM_REQUESTS_PER_MINUTE")
    llm_tokens_per_minute: float | None = Field(None, gt=0, validation_alias="RAGPIPE_LLM_TOKENS_PER_MINUTE")
    """The chat endpoint's limits for its key, shared by every process (as embedder.rate_limit)."""
    serve_database_url: str | None = Field(None, validation_alias="RAGPIPE_SERVE_DATABASE_URL")
    """The login the search service connects with (default: the database above); it searches as serve_role."""
    serve_role: str = Field("ragpipe_reader", min_length=1, validation_alias="RAGPIPE_SERVE_ROLE")
    serve_tokens: SecretStr | None = Field(None, validation_alias="RAGPIPE_SERVE_TOKENS")
    """JSON object {token: role}: API calls then need `Authorization: Bearer TOKEN` and act as its role."""
    serve_tokens_file: Path | None = Field(None, validation_alias="RAGPIPE_SERVE_TOKENS_FILE")
    serve_cors_origins: str = Field("", validation_alias="RAGPIPE_SERVE_CORS_ORIGINS")
    serve_allowed_hosts: str = Field("", validation_alias="RAGPIPE_SERVE_ALLOWED_HOSTS")
    """Comma-separated Host names the service answers to, beyond localhost and its bind address."""
    """Comma-separated origins allowed to call the API from a browser; none by default."""
    serve_pool_size: int = Field(8, ge=1, le=200, validation_alias="RAGPIPE_SERVE_POOL_SIZE")
    serve_pool_wait_s: float = Field(10, gt=0, validation_alias="RAGPIPE_SERVE_POOL_WAIT")
    serve_statement_timeout_s: float = Field(10, gt=0, validation_alias="RAGPIPE_SERVE_STATEMENT_TIMEOUT")
    serve_deadline_s: float = Field(15, gt=0, validation_alias="RAGPIPE_SERVE_DEADLINE")
    """Every API request is answered within this many seconds of its arrival (503 when it cannot be)."""
    serve_max_in_flight: int = Field(0, ge=0, validation_alias="RAGPIPE_SERVE_MAX_IN_FLIGHT")
    """Requests admitted at once (0: 4 x the pool size); more get a fast 503 with Retry-After."""
    serve_heavy_concurrency: int = Field(0, ge=0, validation_alias="RAGPIPE_SERVE_HEAVY_CONCURRENCY")
    """Expensive searches (keyword or hybrid of more than RAGPIPE_SERVE_HEAVY_WORDS words, or k > 100) run
    at once (0: half the pool, at least 1); as many again may wait for a turn."""
    serve_heavy_words: int = Field(8, ge=0, validation_alias="RAGPIPE_SERVE_HEAVY_WORDS")
    mass_delete_fraction: float = Field(0.5, ge=0, le=1, validation_alias="RAGPIPE_MASS_DELETE_FRACTION")
    """A run deletes no more than this share of a collection's documents unless confirmed (1: no guard)."""
    mass_delete_min: int = Field(20, ge=1, validation_alias="RAGPIPE_MASS_DELETE_MIN")
    """...once it would delete at least this many."""
    failpoints: str = Field("", validation_alias="RAGPIPE_FAILPOINTS")
    """Tests only: comma-separated fault names (pipelines/faults.py)."""
    failpoint_dir: Path | None = Field(None, validation_alias="RAGPIPE_FAILPOINT_DIR")

    @property
    def home(self) -> Path:
        return self.home_dir.expanduser().resolve()

    @property
    def pgdata(self) -> Path:
        return (self.pgdata_dir or self.home / "pgdata").expanduser().resolve()

    @property
    def collections_file(self) -> Path:
        return self.collections or (PROJECT_ROOT if IN_CHECKOUT else self.home) / "collections.yml"

    @property
    def task_timeouts_s(self) -> dict[str, float]:
        """Airflow execution_timeout per task kind (plan, batch, finalize, smoke_check)."""
        return {task: getattr(self, f"{task}_timeout_s") for task in TASK_TIMEOUT_DEFAULTS}


def load_settings() -> Settings:
    """The settings from the environment now; a bad value is one SettingsError naming its variable.
    Parsed once per distinct set of RAGPIPE_* values (per-document callers pay a dict scan, not a parse)."""
    return _parsed(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("RAGPIPE_"))))


@lru_cache(maxsize=16)
def _parsed(environment: tuple[tuple[str, str], ...]) -> Settings:
    """Settings for this RAGPIPE_* environment (the key of the cache; Settings() reads os.environ)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                                      for e in exc.errors())) from None
