"""Offline servers behind the sample collections of the other source kinds (used by `make run` and
the tests): an S3-compatible server (moto), a Google Cloud Storage emulator (gcp-storage-emulator) and
an Azure Blob emulator (Azurite, a Node.js program: `make azurite`) each holding part of
examples/corpus, a web server with the HTML samples and a sitemap, and a `samples.articles` table in
the embedded PostgreSQL."""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

from pipelines.settings import PROJECT_ROOT, load_settings

CORPUS = PROJECT_ROOT / "examples" / "corpus"
S3_PORT, WEB_PORT, GCS_PORT, AZURE_PORT = 9753, 8765, 9754, 9755
S3_ENV = {"AWS_ACCESS_KEY_ID": "sample-key", "AWS_SECRET_ACCESS_KEY": "sample-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development account key (published with the emulator; no real account has it)."""
AZURITE = PROJECT_ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
"""Where `make azurite` installs the emulator (npm, the version the Makefile pins)."""
START_TIMEOUT_S = 60


def sample_objects() -> dict[str, bytes]:
    """The object stores' sample documents: the Markdown and PDF samples, under kb/."""
    return {f"kb/{p.relative_to(CORPUS).as_posix()}": p.read_bytes()
            for p in sorted(CORPUS.rglob("*")) if p.suffix in (".md", ".pdf")}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def start_web(port: int = WEB_PORT) -> ThreadingHTTPServer:
    """Serve examples/corpus over HTTP with a sitemap of its HTML pages."""
    base = f"http://127.0.0.1:{port}"
    pages = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.html"))
    sitemap = ('<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
               + "".join(f"<url><loc>{base}/{p}</loc></url>" for p in pages) + "</urlset>")
    root = load_settings().home / "sample-web"
    root.mkdir(parents=True, exist_ok=True)
    (root / "sitemap.xml").write_text(sitemap)
    for page in pages:
        (root / page).parent.mkdir(parents=True, exist_ok=True)
        (root / page).write_bytes((CORPUS / page).read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_s3(port: int = S3_PORT):
    """An S3-compatible server with bucket `ragpipe-sample`: the Markdown and PDF samples under kb/."""
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="ragpipe-sample")
    for key, data in sample_objects().items():
        client.put_object(Bucket="ragpipe-sample", Key=key, Body=data)
    return server


def start_gcs(port: int = GCS_PORT, bucket: str | None = "ragpipe-sample") -> tuple[object, str]:
    """A Google Cloud Storage emulator in this process (its server and endpoint); `bucket` holds the
    samples under kb/ unless None. port 0: any free port."""
    import logging

    from gcp_storage_emulator.server import Server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    server = Server("127.0.0.1", port, in_memory=True)
    server._api.daemon = True  # noqa: SLF001 - its thread must not keep a stopping process alive
    server.start()
    endpoint = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"  # noqa: SLF001
    if bucket:
        fill(gcs_client(endpoint), bucket)
    return server, endpoint


def fill(fs, bucket: str) -> None:
    """Make `bucket` in the fsspec file system `fs` and put the samples in it."""
    fs.mkdir(bucket)
    for key, data in sample_objects().items():
        fs.pipe_file(f"{bucket}/{key}", data)


def gcs_client(endpoint: str):
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(endpoint_url=endpoint, token="anon", project="sample", skip_instance_cache=True)


def azurite_connection(endpoint: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint}/devstoreaccount1;")


def azurite_command() -> str | None:
    """The Azurite blob server's command: `make azurite`'s, else one on PATH; None when neither."""
    return str(AZURITE) if AZURITE.exists() else shutil.which("azurite-blob")


def start_azurite(port: int = AZURE_PORT, container: str | None = "ragpipe-sample",
                  start: Callable[[list[str]], subprocess.Popen] | None = None) -> tuple[subprocess.Popen, str] | None:
    """Azurite's blob service on loopback (its process and endpoint; the caller stops it), `container`
    holding the samples under kb/ unless None; None when Azurite is not installed (`make azurite`).
    `start` starts the command (default: a process of its own session)."""
    command = azurite_command()
    if command is None:
        return None
    if port == 0:
        from tools.service import free_port

        port = free_port()
    argv = [command, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--silent",
            "--skipApiVersionCheck", "--loose"]
    process = start(argv) if start else subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                         stdin=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"Azurite did not start on port {port} within {START_TIMEOUT_S} s (exit "
                                   f"status {process.poll()}); try `{command} --blobPort {port}` by hand") from None
            time.sleep(0.1)
    if container:
        fill(azure_client(endpoint), container)
    return process, endpoint


def azure_client(endpoint: str):
    from adlfs import AzureBlobFileSystem

    return AzureBlobFileSystem(connection_string=azurite_connection(endpoint), skip_instance_cache=True)


def create_sql_table(url: str) -> None:
    """samples.articles, one row per record of examples/corpus/records.jsonl."""
    rows = [json.loads(line) for line in (CORPUS / "records.jsonl").read_text().splitlines()]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS samples")
        conn.execute("CREATE TABLE IF NOT EXISTS samples.articles (id text PRIMARY KEY, title text, body text, "
                     "topic text, url text, updated_at timestamptz NOT NULL DEFAULT now())")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO samples.articles (id, title, body, topic, url) VALUES (%s, %s, %s, %s, %s) "
                            "ON CONFLICT (id) DO NOTHING",
                            [(r["id"], r["title"], r["text"], r["topic"], r["url"]) for r in rows])


AZURE_ENV = "RAGPIPE_SAMPLE_AZURE_CONNECTION"
"""The variable holding the Azure sample's connection string (collections.yml connection_string_env)."""


def start_all(database_url: str, start: Callable[[list[str]], subprocess.Popen] | None = None
              ) -> tuple[dict[str, str], subprocess.Popen | None]:
    """Start everything, with the change events of the watched sample collections set up (as
    `ragpipe watch NAME --setup` does); returns the environment the sample collections need and
    Azurite's process (None when Azurite is not installed: sample_azure cannot run), for the caller
    to stop. `start` starts Azurite's command."""
    start_s3()
    start_gcs()
    start_web()
    create_sql_table(database_url)
    env = {**S3_ENV, "RAGPIPE_SAMPLE_SQL_URL": database_url}
    azurite = start_azurite(start=start)
    if azurite:
        env[AZURE_ENV] = azurite_connection(azurite[1])
    os.environ.update(env)
    set_up_watches()
    return env, azurite[0] if azurite else None


def set_up_watches(collections: Path = PROJECT_ROOT / "collections.yml") -> None:
    from pipelines.config import load_collections
    from pipelines.watch.setup import set_up

    for spec in load_collections(collections).values():
        if spec.watch and spec.source["kind"] in ("sql", "s3"):
            set_up(spec)
