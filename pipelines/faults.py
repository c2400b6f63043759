"""Fault injection for tests: `failpoint("name")` raises when RAGPIPE_FAILPOINTS names it.

RAGPIPE_FAILPOINTS is a comma-separated list of names. With RAGPIPE_FAILPOINT_DIR set, each
failpoint fires once (a marker file records that it fired), so a retry then succeeds.
"""

from pipelines.settings import load_settings


class InjectedFault(RuntimeError):
    pass


def armed(name: str) -> bool:
    """True when the failpoint `name` should fire now (and, with RAGPIPE_FAILPOINT_DIR, never again)."""
    settings = load_settings()
    if not settings.failpoints or name not in settings.failpoints.split(","):
        return False
    if settings.failpoint_dir:
        marker = settings.failpoint_dir / f"{name}.fired"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return True


def failpoint(name: str) -> None:
    if armed(name):
        raise InjectedFault(f"injected fault at {name}")
