"""The commands on versions (ragpipe versions / promote / rollback / prune), each under the collection's lock."""

from typing import Any

from pipelines import store
from pipelines.config import CollectionSpec, ConfigError, version_name
from pipelines.store.connection import locked_connection, open_database
from pipelines.store.database import connect
from pipelines.versions.gate import check_eval_set, decide


def list_versions(family: str, url: str | None = None) -> list[dict[str, Any]]:
    with connect(open_database(url)) as conn:
        rows = store.versions(conn, family)
    if not rows:
        raise ConfigError(f"no collection named {family!r}; `ragpipe status` lists them")
    return rows


def promote(spec: CollectionSpec, version: int, force: bool = False, url: str | None = None) -> dict[str, Any]:
    """Make `version` active: scored first (collections.yml eval and smoke_queries) unless `force`."""
    if not force:
        check_eval_set(spec)
    with locked_connection(spec.family, url) as conn:
        candidate = store.get_collection(conn, version_name(spec.family, version))
        if candidate is None:
            raise ConfigError(f"collection {spec.family!r} has no version {version}; `ragpipe versions "
                              f"{spec.family}` lists them")
        if candidate.state == "active":
            return {"version": version, "state": "active", "promoted": False}
        if candidate.state == "building":
            raise ConfigError(f"version {version} of {spec.family!r} is still being built; run the ingest again "
                              "to finish it")
        return decide(conn, candidate, spec.eval, spec.smoke_queries, spec.promote["max_drop"], force=force)


def rollback(spec: CollectionSpec, url: str | None = None) -> int:
    """Make the previously active version active again; returns its number."""
    with locked_connection(spec.family, url) as conn:
        return store.rollback_version(conn, spec.family)


def prune(spec: CollectionSpec, url: str | None = None) -> list[int]:
    """Drop every version that is neither active nor being built; their vectors stay in the cache."""
    with locked_connection(spec.family, url) as conn:
        gone = [v for v in store.versions(conn, spec.family) if v["state"] not in ("active", "building")]
        for v in gone:
            store.drop_version(conn, v["id"])
        return [v["version"] for v in gone]
