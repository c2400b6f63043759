"""Offline servers behind the sample collections of the other source kinds (used by `make run` and
the tests): an S3-compatible server (moto) holding part of examples/corpus, a web server with the
HTML samples and a sitemap, and a `samples.articles` table in the embedded PostgreSQL."""

import json
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

from pipelines.settings import PROJECT_ROOT, load_settings

CORPUS = PROJECT_ROOT / "examples" / "corpus"
S3_PORT, WEB_PORT = 9753, 8765
S3_ENV = {"AWS_ACCESS_KEY_ID": "sample-key", "AWS_SECRET_ACCESS_KEY": "sample-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


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
    for path in sorted(CORPUS.rglob("*")):
        if path.suffix in (".md", ".pdf"):
            client.put_object(Bucket="ragpipe-sample", Key=f"kb/{path.relative_to(CORPUS).as_posix()}",
                              Body=path.read_bytes())
    return server


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


def start_all(database_url: str) -> dict[str, str]:
    """Start everything, with the change events of the watched sample collections set up (as
    `ragpipe watch NAME --setup` does); returns the environment the sample collections need."""
    start_s3()
    start_web()
    create_sql_table(database_url)
    env = {**S3_ENV, "RAGPIPE_SAMPLE_SQL_URL": database_url}
    os.environ.update(env)
    set_up_watches()
    return env


def set_up_watches(collections: Path = PROJECT_ROOT / "collections.yml") -> None:
    from pipelines.config import load_collections
    from pipelines.watch.setup import set_up

    for spec in load_collections(collections).values():
        if spec.watch and spec.source["kind"] in ("sql", "s3"):
            set_up(spec)
