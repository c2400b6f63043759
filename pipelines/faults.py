"""Fault injection for tests: `failpoint("name")` raises when RAGPIPE_FAILPOINTS names it.

RAGPIPE_FAILPOINTS is a comma-separated list of names. With RAGPIPE_FAILPOINT_DIR set, each
failpoint fires once (a marker file records that it fired), so a retry then succeeds.
"""

import os
from pathlib import Path


class InjectedFault(RuntimeError):
    pass


def armed(name: str) -> bool:
    """True when the failpoint `name` should fire now (and, with RAGPIPE_FAILPOINT_DIR, never again)."""
    names = os.environ.get("RAGPIPE_FAILPOINTS", "")
    if not names or name not in names.split(","):
        return False
    marker_dir = os.environ.get("RAGPIPE_FAILPOINT_DIR")
    if marker_dir:
        marker = Path(marker_dir) / f"{name}.fired"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return True


def failpoint(name: str) -> None:
    if armed(name):
        raise InjectedFault(f"injected fault at {name}")
