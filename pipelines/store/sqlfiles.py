"""Named SQL statements kept in sql/queries/*.sql (`-- name: foo` starts statement foo)."""

import re
from functools import cache

from psycopg import sql

from pipelines.settings import SQL_DIR


@cache
def _statements(group: str) -> dict[str, str]:
    text = (SQL_DIR / "queries" / f"{group}.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(group: str, name: str) -> sql.SQL:
    """Statement `name` from sql/queries/`group`.sql; its values are bound as %s / %(name)s parameters."""
    return sql.SQL(_statements(group)[name])  # type: ignore[arg-type]
