"""ragpipe as users deploy it: a wheel, installed (not editable) away from the checkout, that
carries its SQL and DAG factory and keeps its state outside any source tree."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CORPUS, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist, src = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("src") / "ragpipe"
    # from a copy: building in place would leave build/ in the checkout, and stale files in it
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", ".ragpipe",
                                                             "__pycache__", ".*cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
                   check=True, timeout=600, capture_output=True)
    wheel, = dist.glob("ragpipe-*-py3-none-any.whl")
    return wheel


def test_the_wheel_carries_the_sql_and_the_dag_factory(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_sql = {n.removeprefix("pipelines/sql/") for n in names if n.startswith("pipelines/sql/")}
    source_sql = {p.relative_to(ROOT / "sql").as_posix() for p in (ROOT / "sql").rglob("*.sql")} | {"api-level"}
    assert shipped_sql == source_sql
    assert {"pipelines/airflow/dags.py", "pipelines/extract/worker.py", "pipelines/cli/__init__.py"} <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipelines").rglob("*.py")}
    assert modules - names == set(), "every module of the package is in the wheel (pyproject.toml packages)"
    assert not any(n.startswith(("tests/", "dags/", "examples/", "tools/")) for n in names), "no dev tooling"
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("METADATA"))
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "==" in r.split(";")[0]], "ranges, not pins: the lock pins"
    assert any(r.startswith("Requires-Dist: apache-airflow") and "extra == \"airflow\"" in r for r in requires)


def test_installed_wheel_runs_start_migrate_ingest_search_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                    str(wheel)], check=True, timeout=300, capture_output=True)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    folder = work / "notes"
    shutil.copytree(CORPUS / "coffee", folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGPIPE_", "AIRFLOW"))}
    env.update(HOME=str(home), PYTHONPATH=str(site), HF_HUB_OFFLINE="1")

    def ragpipe(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-c", "from pipelines.cli import run; run()", *args], cwd=work,
                                env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    where = subprocess.run([sys.executable, "-c", "import pipelines.settings as s; print(s.PACKAGE_DIR, "
                            "s.IN_CHECKOUT, s.SQL_DIR, s.load_settings().home)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "pipelines"), "False", str(site / "pipelines" / "sql"), str(home / ".ragpipe")]
    try:
        ragpipe("db", "start")
        ragpipe("db", "migrate")
        summary = json.loads(ragpipe("ingest", str(folder), "--collection", "c", "--json").stdout)
        assert summary["status"] == "succeeded" and summary["new"] == len(list(folder.iterdir()))
        hits = json.loads(ragpipe("search", "Does coffee affect blood vessels?", "-c", "c", "--json").stdout)
        assert hits and hits[0]["source_id"].endswith((".md", ".html", ".pdf", ".docx", ".txt"))
    finally:
        ragpipe("db", "stop")
    assert (home / ".ragpipe" / "pgdata" / "PG_VERSION").exists(), "state lives in ~/.ragpipe, not in a checkout"
