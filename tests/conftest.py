"""Real parts only: an embedded PostgreSQL in a temp dir, the real model, the real sample corpus."""

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "examples" / "corpus"


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory):
    """After the whole session: no server a test started is still running (an embedded PostgreSQL of
    any temp home, Airflow, Redis, a parser worker). Leaks are stopped, then reported as an error."""
    yield
    import psutil

    from pipelines.extract.worker import stop_workers

    stop_workers()
    base = str(tmp_path_factory.getbasetemp())
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    leaked = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmd = proc.info["cmdline"] or []
        data_dir = cmd[cmd.index("-D") + 1] if "-D" in cmd[:-1] else ""
        if data_dir.startswith(base) or proc.pid in ours:
            leaked.append(f"pid {proc.pid}: {' '.join(cmd)[:150]}")
            if data_dir:
                from pipelines.store.database import stop_embedded_server

                stop_embedded_server(Path(data_dir))
            else:
                proc.kill()
    assert not leaked, "processes left running by the test session:\n" + "\n".join(leaked)


@pytest.fixture(scope="session", autouse=True)
def ragpipe_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own state dir and embedded database (stopped at the end)."""
    home = tmp_path_factory.mktemp("ragpipe-home")
    os.environ["RAGPIPE_HOME"] = str(home)
    os.environ.pop("RAGPIPE_DATABASE_URL", None)
    os.environ["RAGPIPE_COLLECTIONS"] = str(home / "collections.yml")
    os.environ["RAGPIPE_LOCK_TIMEOUT"] = "20"
    yield home
    from pipelines.store.database import stop_embedded_server

    stop_embedded_server(home / "pgdata")


@pytest.fixture(scope="session")
def db_url(ragpipe_home: Path) -> str:
    from pipelines.ingest import open_database

    return open_database()


@pytest.fixture
def conn(db_url: str):
    from pipelines.store.database import connect

    with connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A collection name unique to the test."""
    return re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:60]


@pytest.fixture(scope="session")
def embedder():
    from pipelines.embed import get_embedder
    from pipelines.settings import DEFAULT_MODEL

    return get_embedder(DEFAULT_MODEL)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A private copy of the sample corpus (documents only) that a test may edit."""
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target, ignore=shutil.ignore_patterns("records.jsonl"))
    return target


def folder_spec(name: str, path: Path, **kw):
    from pipelines.config import parse_collection

    return parse_collection(dict({"name": name, "source": {"kind": "folder", "path": str(path)}}, **kw),
                            where=name, base=path)


def run_failures(conn, run_id: int) -> dict[str, str]:
    """source_id → recorded reason, for every document a run recorded as failed."""
    return dict(conn.execute("SELECT source_id, error FROM ragpipe.ingest_failures WHERE run_id = %s",
                             (run_id,)).fetchall())


def assert_same_chunks(got: list[tuple], want: list[tuple]) -> None:
    """Rows of (..., embedding::text) equal in every column but the last; embeddings equal up to
    float noise (the same text embedded in a differently padded batch differs in the 7th digit)."""
    import json

    import numpy as np

    assert [r[:-1] for r in got] == [r[:-1] for r in want]
    for a, b in zip(got, want, strict=True):
        assert np.allclose(json.loads(a[-1]), json.loads(b[-1]), atol=1e-5)
