"""What the API routes and the search page share: request limits and parsing, the errors a request
can end in, and the HTTP status and one-line message of each."""

import json
from typing import Any

import psycopg
from pydantic import BaseModel, Field

from pipelines.embed.errors import EmbeddingFailed
from pipelines.service.access import Unauthorized
from pipelines.service.database import Busy
from pipelines.settings import MAX_K, MAX_NEIGHBOURS
from pipelines.store.database import DatabaseError, first_line, mask_url

MAX_QUERY_BYTES = 8192
MAX_BODY_BYTES = 1024 * 1024
"""The largest request body accepted (a 413 beyond it, before parsing)."""


class NotFound(LookupError):
    pass


class BadRequest(ValueError):
    pass


class Forbidden(PermissionError):
    pass


class RagContextRequest(BaseModel):
    collection: str = Field(min_length=1, max_length=200)
    q: str = Field(min_length=1)
    k: int = Field(8, ge=1, le=MAX_K)
    max_tokens: int = Field(1500, ge=1, le=100_000)
    filter: dict[str, Any] | None = None
    neighbours: int = Field(0, ge=0, le=MAX_NEIGHBOURS)
    rerank: bool | None = None
    """None: re-rank when the collection has a reranker; true: insist on it; false: skip it."""


def check_query(q: str) -> None:
    if not q.strip():
        raise BadRequest("q is empty: give the text to search for")
    if len(q.encode()) > MAX_QUERY_BYTES:
        raise BadRequest(f"q is longer than {MAX_QUERY_BYTES} bytes")


def parse_filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadRequest('filter must be a JSON object, e.g. {"topic": "soy"}') from None
    if not isinstance(value, dict):
        raise BadRequest('filter must be a JSON object, e.g. {"topic": "soy"}')
    return value


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and one-line message of an error; the page and the API share it."""
    if isinstance(exc, Unauthorized):
        return 401, str(exc)
    if isinstance(exc, Forbidden):
        return 403, str(exc)
    if isinstance(exc, NotFound | psycopg.errors.UndefinedObject | psycopg.errors.NoDataFound):
        return 404, first_line(exc).removeprefix("ragpipe: ")
    if isinstance(exc, BadRequest | psycopg.DataError):
        return 400, first_line(exc).removeprefix("ragpipe: ")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return 403, "this role may not run that search: " + first_line(exc)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return 504, "the search took longer than RAGPIPE_SERVE_STATEMENT_TIMEOUT and was stopped"
    if isinstance(exc, Busy | DatabaseError | EmbeddingFailed):
        return 503, mask_url(str(exc))
    return 500, "internal error; the service log has the details"
