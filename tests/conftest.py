"""Real parts only: an embedded PostgreSQL in a temp dir, the real model, the real sample corpus."""

import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from tools.service import RAGPIPE as RAGPIPE_COMMAND
from tools.service import free_port  # noqa: F401  (tests import it from here)

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
    from pipelines.store.connection import open_database

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


@pytest.fixture(scope="session")
def sample(ragpipe_home, db_url, tmp_path_factory) -> str:
    """The sample corpus ingested once per session, into collection search_sample (read, never changed)."""
    from pipelines.ingest import run_ingest

    corpus = tmp_path_factory.mktemp("search") / "corpus"
    shutil.copytree(CORPUS, corpus, ignore=shutil.ignore_patterns("records.jsonl"))
    run_ingest(folder_spec("search_sample", corpus))
    return "search_sample"


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


def hnsw_index(conn, collection_id: int) -> str:
    """The qualified name of the collection's HNSW index (named by ragpipe.hnsw_index_name)."""
    return "ragpipe." + conn.execute("SELECT ragpipe.hnsw_index_name(%s)", (collection_id,)).fetchone()[0]


def chunk_state(conn, name: str) -> list[tuple]:
    """Every chunk of a collection as (source_id, ordinal, text, document hash, chunk hash, embedding::text),
    in order: what two runs that should agree are compared on (assert_same_chunks)."""
    return conn.execute(
        "SELECT d.source_id, c.ordinal, c.text, d.content_hash, c.content_hash, c.embedding::text "
        "FROM ragpipe.chunks c JOIN ragpipe.documents d ON d.id = c.document_id "
        "JOIN ragpipe.collections k ON k.id = c.collection_id WHERE k.name = %s ORDER BY 1, 2", (name,)).fetchall()


def load_random_collection(conn, name: str, documents: int, chunks_per_doc: int, dim: int = 384):
    """A collection of random unit vectors, loaded through the real loader (fast, no model)."""
    import numpy as np

    from pipelines import store
    from pipelines.chunking import Chunk

    rng = np.random.default_rng(0)
    coll = store.ensure_collection(conn, name, "sentence-transformers/all-MiniLM-L6-v2", dim, 256, 32, {"index": {}})
    docs = []
    for i in range(documents):
        vectors = rng.normal(size=(chunks_per_doc, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = [Chunk(j, f"doc {i} chunk {j}", 0, 1, 3) for j in range(chunks_per_doc)]
        docs.append(store.LoadedDocument(f"doc-{i}", f"mem://{i}", None, str(i), "", {"group": i % 50},
                                         chunks, vectors))
    with conn.transaction():
        store.replace_documents(conn, coll, None, docs)
    with conn.transaction():
        store.ensure_hnsw_index(conn, coll)
    store.analyze_collection(conn, coll.id)
    return coll


RAGPIPE = [RAGPIPE_COMMAND]


def ragpipe(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `ragpipe` command, as a user runs it (5 min limit); asserts success unless check=False."""
    result = subprocess.run(RAGPIPE + list(args), capture_output=True, text=True, timeout=300, check=False,
                            env=dict(os.environ, **(env or {})))
    if check:
        assert result.returncode == 0, result.stderr
    return result




# --- Real servers on loopback: S3 (moto), a web site (http.server), a table in PostgreSQL ---------

EMBEDDINGS_KEY = "sk-test-7f3a9c-never-printed"
"""The loopback embeddings endpoint's key in the tests: no output or log may show it."""


@pytest.fixture(scope="module")
def api_server():
    """An OpenAI-compatible /v1/embeddings endpoint computing real vectors with the packaged model
    (tools/embeddings_server.py), its faults on demand."""
    from tools.embeddings_server import running

    with running() as server:
        yield server

@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing-key", AWS_SECRET_ACCESS_KEY="testing-secret",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import boto3

    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="docs")
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def gcs():
    """A Google Cloud Storage emulator on loopback (gcp-storage-emulator, in this process), bucket `docs`."""
    from tools.samples import gcs_client, start_gcs

    server, endpoint = start_gcs(port=0, bucket=None)
    fs = gcs_client(endpoint)
    fs.mkdir("docs")
    yield endpoint, fs
    server.stop()


@pytest.fixture(scope="module")
def azurite():
    """Azure Blob Storage's emulator on loopback (Azurite, `make azurite`), container `docs`; its
    connection string in $TEST_AZURE_CONNECTION."""
    from tools.samples import azure_client, azurite_connection, start_azurite

    started = start_azurite(port=0, container=None)
    assert started is not None, "Azurite is not installed: `make azurite` (make test does it)"
    process, endpoint = started
    os.environ["TEST_AZURE_CONNECTION"] = azurite_connection(endpoint)
    fs = azure_client(endpoint)
    fs.mkdir("docs")
    yield endpoint, fs
    process.terminate()
    process.wait(timeout=30)


class Site(BaseHTTPRequestHandler):
    pages: dict[str, tuple[int, str]] = {}
    hits: list[tuple[str, int]] = []

    def do_GET(self) -> None:  # noqa: N802
        status, body = Site.pages.get(self.path, (404, "not found"))
        if status in (301, 302):
            self.send_response(status)
            self.send_header("Location", body)
            self.end_headers()
            return
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
        if status == 200 and self.headers.get("If-None-Match") == etag:
            Site.hits.append((self.path, 304))
            self.send_response(304)
            self.end_headers()
            return
        Site.hits.append((self.path, status))
        data = body.encode()
        self.send_response(status)
        ctype = "application/xml" if self.path.endswith(".xml") else "text/html; charset=utf-8"
        self.send_header("Content-Type", ctype)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def page(title: str, text: str) -> str:
    return (f"<html><head><title>{title}</title></head><body><nav>Home | About | Contact</nav>"
            f"<article><h1>{title}</h1><p>{text}</p><p>{text}</p></article><footer>(c) site</footer></body></html>")


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    Site.hits = []
    Site.pages = {
        "/docs/a": (200, page("Herons", "Grey herons nest in colonies called heronries near wetlands.")),
        "/docs/b": (200, page("Kestrels", "Kestrels hover over fields while hunting small mammals.")),
        "/docs/c": (200, page("Puffins", "Puffins dig burrows on cliff tops and eat sand eels.")),
        "/blog/x": (200, page("Off topic", "This page is outside the url prefix.")),
        "/sitemap.xml": (200, '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                              + "".join(f"<url><loc>{base}{p}</loc></url>" for p in ("/docs/a", "/docs/b", "/docs/c",
                                                                                      "/blog/x"))
                              + "</urlset>"),
    }
    yield base
    server.shutdown()


@pytest.fixture
def app_table(db_url):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS app; DROP TABLE IF EXISTS app.articles")
        c.execute("CREATE TABLE app.articles (id int PRIMARY KEY, headline text, body text, category text, "
                  "updated_at timestamptz DEFAULT now())")
        c.execute("INSERT INTO app.articles (id, headline, body, category) VALUES "
                  "(1, 'Tea', 'Green tea contains catechins that act as antioxidants.', 'drinks'),"
                  "(2, 'Beans', 'Beans are a cheap source of protein and fibre.', 'food'),"
                  "(3, 'Oats', 'Oats contain beta-glucan, a soluble fibre.', 'food')")
        yield c


@contextmanager
def database_at(db_url: str, name: str, last: str) -> Iterator[str]:
    """A database of its own on the test server, migrated as far as migration `last` (as an older release
    left it): its URL, dropped afterwards."""
    from pipelines.store.migrations import migrate

    url = psycopg.conninfo.make_conninfo(db_url, dbname=name)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate(url, last=last)
        yield url
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
