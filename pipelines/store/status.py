"""What is in the database: collections, counts, the last run and its failures."""

from typing import Any

from psycopg.rows import dict_row

from pipelines.store.connection import open_database
from pipelines.store.database import connect
from pipelines.store.sqlfiles import query


def collection_status(name: str | None = None) -> list[dict[str, Any]]:
    with connect(open_database()) as conn:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(query("status", "collections"), {"name": name}).fetchall()
        for row in rows:
            run = cur.execute(query("status", "last_run"), (row.pop("id"),)).fetchone()
            row["last_run"] = run
            row["failures"] = cur.execute(query("status", "failures"), (run["id"],)).fetchall() if run else []
    return rows
