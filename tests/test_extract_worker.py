"""The parser worker in every kind of process: a main module that cannot be re-imported (Airflow 3's
task runner), a worker that cannot start, a worker that crashes. Nothing waits forever."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.extract.worker import PARSED
from tests.conftest import CORPUS, ragpipe, run_failures

pytestmark = pytest.mark.slow

PARSED_FILES = sorted(p for p in CORPUS.rglob("*") if p.suffix in PARSED)


def test_worker_starts_when_the_main_module_cannot_be_reimported(tmp_path):
    """Inside an Airflow 3 task, __main__ is the `airflow` entry point, which fails when imported
    again (no metadata database); a multiprocessing spawn child re-imports it and dies at start-up."""
    script = tmp_path / "task_main.py"
    script.write_text(
        "if __name__ != '__main__':\n"
        "    raise RuntimeError('this module cannot be imported again, like airflow inside a task')\n"
        "import sys\n"
        "from pathlib import Path\n"
        "from pipelines.extract.worker import extract_isolated\n"
        "for name in sys.argv[1:]:\n"
        "    print(extract_isolated(Path(name).read_bytes(), Path(name).suffix).title)\n")
    assert {p.suffix for p in PARSED_FILES} >= {".pdf", ".html", ".docx"}
    result = subprocess.run([sys.executable, str(script), *map(str, PARSED_FILES)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    titles = result.stdout.splitlines()
    assert len(titles) == len(PARSED_FILES) and all(t and t != "None" for t in titles)
    assert "cannot be imported again" not in result.stderr


def test_a_worker_that_cannot_start_fails_its_documents_and_the_run_goes_on(tmp_path, name, conn, corpus):
    result = ragpipe("ingest", str(corpus), "-c", name, "--json",
                     env={"RAGPIPE_FAILPOINTS": "parser_worker_start"})
    summary = json.loads(result.stdout)
    parsed = {p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.suffix in PARSED}
    others = {p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file()} - parsed
    assert summary["failed"] == len(parsed) and summary["new"] == len(others)
    reasons = run_failures(conn, summary["run_id"])
    assert set(reasons) == parsed
    assert all("parser worker could not start (exit code 1)" in r and "injected fault" in r
               for r in reasons.values()), reasons
    assert "Traceback" not in result.stdout
    # the worker starts again in a healthy process: the next run loads the documents that failed
    again = json.loads(ragpipe("ingest", str(corpus), "-c", name, "--json").stdout)
    assert (again["failed"], again["new"]) == (0, len(parsed))


def test_a_parser_crash_is_recorded_and_the_next_document_gets_a_new_worker(tmp_path, name, conn, corpus):
    summary = json.loads(ragpipe("ingest", str(corpus), "-c", name, "--json",
                                 env={"RAGPIPE_FAILPOINTS": "parser_crash",
                                      "RAGPIPE_FAILPOINT_DIR": str(tmp_path / "faults")}).stdout)
    reasons = run_failures(conn, summary["run_id"])
    assert summary["failed"] == 1 and list(reasons.values()) == ["the parser crashed (killed by signal 9)"]
    assert Path(next(iter(reasons))).suffix in PARSED
    parsed = [p for p in corpus.rglob("*") if p.suffix in PARSED]
    assert summary["new"] == sum(1 for p in corpus.rglob("*") if p.is_file()) - 1 and len(parsed) > 1


def test_only_the_parsers_message_crosses_the_process_boundary(tmp_path, name, conn):
    """Defect: a zip of garbage named .docx was recorded as "TypeError: cannot pickle
    'lxml.etree._ListErrorLog'" with a traceback in the log."""
    import zipfile

    folder = tmp_path / "docs"
    folder.mkdir()
    with zipfile.ZipFile(folder / "garbage.docx", "w") as z:
        z.writestr("word/document.xml", "<<<not xml at all>>>")
        z.writestr("[Content_Types].xml", "garbage")
    (folder / "fine.md").write_text("# Fine\n\nA readable document.\n")
    result = ragpipe("ingest", str(folder), "-c", name, "--json")
    summary = json.loads(result.stdout)
    reason, = run_failures(conn, summary["run_id"]).values()
    assert summary["new"] == 1 and "pickle" not in reason and "Traceback" not in result.stderr, reason
