"""What the command groups share: one-line failures, JSON output, collections from collections.yml."""

import json
from pathlib import Path
from typing import Any

import click

from pipelines.config import CollectionSpec, load_collections, parse_collection
from pipelines.settings import MAX_K, MAX_NEIGHBOURS, load_settings  # noqa: F401 - the commands' limits


def fail(message: str) -> None:
    raise click.ClickException(message)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def configured(name: str) -> CollectionSpec | None:
    settings = load_settings()
    if not settings.collections_file.exists():
        return None
    return load_collections(settings.collections_file).get(name)


def spec_or_bare(name: str) -> CollectionSpec:
    """The collection from collections.yml (its eval set and smoke queries), or a bare one by name."""
    return configured(name) or parse_collection({"name": name, "source": {"kind": "folder", "path": "/"}},
                                                 where=name, base=Path.cwd())


def version_outcome(built: dict[str, Any]) -> str:
    """One line on what became of a new version: promoted, waiting, or rejected with its scores."""
    verdict = built.get("evaluation") or {}
    if built.get("promoted"):
        return f"promoted ({verdict.get('reason', 'forced')})"
    if built.get("state") == "rejected":
        return f"not promoted: {verdict.get('reason', 'rolled back earlier')}; `ragpipe promote --force` overrides"
    if built.get("state") == "ready":
        return "built; waiting for `ragpipe promote`"
    return f"state {built.get('state', 'building')}"
