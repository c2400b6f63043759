"""A loopback server speaking OpenAI's POST /v1/embeddings and /v1/chat/completions and the common POST
/v1/rerank, with real vectors from the packaged MiniLM model and faults on demand (for the tests and
`make bench`; never a production server).

    python -m tools.embeddings_server --port 8399    # then model: openai:minilm, base_url: http://127.0.0.1:8399/v1

Its vectors are the model's, scaled by 3 (some servers do not normalise: the client must). Its rerank
scores are the cosine of the query's and each document's vectors (what a cross-encoder's scores
would be is not the point: the client must apply the server's order). Its chat answers situate a chunk
in its document as a contextual-retrieval prompt gives them (<document>…</document> <chunk>…</chunk>):
the document's title and the heading the chunk falls under, in a sentence.
"""

import argparse
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipelines.settings import DEFAULT_MODEL

SCALE = 3.0
FAULTS = ("429", "500", "hang", "drip", "huge", "echo", "wrong_dimension", "wrong_count", "nan", "garbage")
DRIP_S = 0.5
"""`drip` sends its answer one byte every this many seconds."""


@dataclass
class Faults:
    """Each fault answers the next N requests (`ahead[name] = N`); 429 sends `retry_after` seconds."""

    ahead: dict[str, int] = field(default_factory=dict)
    skip: int = 0
    """Requests answered normally before the faults begin."""
    retry_after: float | str = 1.0
    """429's Retry-After: seconds, or any text (an unreadable value)."""
    echo_offset: int = 0
    """`echo` answers 401 with the request's Authorization header this many characters into its message."""
    huge_mb: int = 300
    delay_s: float = 0.0
    """Seconds every request takes before it answers (a slow endpoint)."""
    usage: bool = True
    """Whether answers report `usage` (some servers do not)."""

    def take(self) -> str | None:
        if self.skip > 0:
            self.skip -= 1
            return None
        for name in FAULTS:
            if self.ahead.get(name, 0) > 0:
                self.ahead[name] -= 1
                return name
        return None


@dataclass
class Seen:
    requests: int = 0
    texts: int = 0
    answered: int = 0
    times: list[float] = field(default_factory=list)
    """time.monotonic() of each request's arrival."""
    authorization: set[str] = field(default_factory=set)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    """Tokens reported in the answers' `usage` (each text's with the model's tokenizer, special tokens included)."""
    model_s: list[float] = field(default_factory=list)
    """Seconds each rerank spent in the model (what a client's overhead is measured against)."""
    chats: int = 0
    """Chat completions answered."""


class EmbeddingsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, model: str = DEFAULT_MODEL) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        from pipelines.embed import get_embedder

        self.embedder = get_embedder(model)
        self.faults = Faults()
        self.seen = Seen()
        self.lock = threading.Lock()
        self.released = threading.Event()
        """Set when the server stops: requests left hanging then end."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def answer(self, body: dict[str, Any], authorization: str = "",
               route: str = "embeddings") -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.seen.requests += 1
            self.seen.times.append(time.monotonic())
            self.seen.bodies.append(body)
            fault = self.faults.take()
            delay = self.faults.delay_s
        if delay:
            self.released.wait(delay)
        if fault == "hang":
            self.released.wait(600)
            return 503, {}, b""
        if fault == "429":
            after = self.faults.retry_after
            return 429, {"Retry-After": after if isinstance(after, str) else f"{after:g}"}, \
                b'{"error": {"message": "rate limited"}}'
        if fault == "echo":
            message = "x" * self.faults.echo_offset + f"bad credentials: {authorization} (check them)" + "y" * 300
            return 401, {}, json.dumps({"error": {"message": message}}).encode()
        if fault == "huge":
            return 200, {"_huge": str(self.faults.huge_mb)}, b""
        if fault == "500":
            return 500, {}, b'{"error": {"message": "the model server fell over"}}'
        if fault == "garbage":
            return 200, {}, b"<html>not json</html>"
        if route == "rerank":
            return self.rerank(body, fault)
        if route == "chat":
            return self.chat(body, fault)
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return 400, {}, b'{"error": {"message": "input must be a string or a list of strings"}}'
        vectors = [[x * SCALE for x in v] for v in self.embedder.encode(texts).tolist()]
        if body.get("dimensions"):
            vectors = [v[:int(body["dimensions"])] for v in vectors]
        if fault == "wrong_dimension":
            vectors = [v[:-1] for v in vectors]
        elif fault == "wrong_count":
            vectors = vectors[:-1]
        elif fault == "nan":
            vectors[0][0] = math.nan
        headers = {"_drip": "1"} if fault == "drip" else {}
        tokens = sum(len(ids) for ids in self.embedder.chunk_tokenizer(texts, verbose=False)["input_ids"])
        with self.lock:
            self.seen.texts += len(texts)
            self.seen.answered += 1
            self.seen.tokens += tokens if self.faults.usage else 0
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        payload = {"object": "list", "data": data, "model": body.get("model"),
                   **({"usage": {"prompt_tokens": tokens, "total_tokens": tokens}} if self.faults.usage else {})}
        return 200, headers, json.dumps(payload).encode()  # NaN is written as NaN, as a buggy server would

    def rerank(self, body: dict[str, Any], fault: str | None) -> tuple[int, dict[str, str], bytes]:
        """Cohere's shape ({results: [{index, relevance_score}]}, best first), or TEI's ([{index, score}])
        when the texts come as `texts`."""
        texts, query = body.get("documents", body.get("texts")), body.get("query")
        if not isinstance(query, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return 400, {}, b'{"error": {"message": "query must be a string and documents a list of strings"}}'
        started = time.perf_counter()
        vectors = self.embedder.encode([query, *texts])
        scores = [float(v @ vectors[0]) for v in vectors[1:]]
        self.seen.model_s.append(time.perf_counter() - started)
        rows = sorted(({"index": i, "relevance_score": s} for i, s in enumerate(scores)),
                      key=lambda r: -r["relevance_score"])
        if fault == "wrong_count":
            rows = rows[:-1]
        elif fault == "nan":
            rows[0]["relevance_score"] = math.nan
        with self.lock:
            self.seen.texts += len(texts)
            self.seen.answered += 1
        headers = {"_drip": "1"} if fault == "drip" else {}
        if "texts" in body:
            return 200, headers, json.dumps([{"index": r["index"], "score": r["relevance_score"]}
                                             for r in rows]).encode()
        return 200, headers, json.dumps({"results": rows, "model": body.get("model")}).encode()

    def chat(self, body: dict[str, Any], fault: str | None) -> tuple[int, dict[str, str], bytes]:
        """A chunk's context: "From <title>, the part on <heading>." (OpenAI's chat completion shape)."""
        try:
            prompt = body["messages"][-1]["content"]
        except (KeyError, IndexError, TypeError):
            return 400, {}, b'{"error": {"message": "messages must end with a user message"}}'
        document = re.search(r"<document>\n?(.*?)\n?</document>", prompt, re.S)
        chunk = re.search(r"<chunk>\n?(.*?)\n?</chunk>", prompt, re.S)
        if not document or not chunk:
            return 400, {}, b'{"error": {"message": "no <document> and <chunk> in the prompt"}}'
        text, part = document.group(1), chunk.group(1)
        headings = [(m.start(), m.group(1).strip()) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.M)]
        title = headings[0][1] if headings else text.strip().split("\n")[0][:80]
        at = text.find(part[:80])
        under = [h for start, h in headings if start <= max(at, 0)]
        section = under[-1] if under and under[-1] != title else None
        answer = f"From the document \"{title}\"" + (f", the part on {section}." if section else ".")
        tokens = len(self.embedder.chunk_tokenizer(prompt, verbose=False)["input_ids"])
        done = len(self.embedder.chunk_tokenizer(answer, verbose=False)["input_ids"])
        with self.lock:
            self.seen.chats += 1
            self.seen.answered += 1
            self.seen.tokens += tokens + done if self.faults.usage else 0
        payload = {"object": "chat.completion", "model": body.get("model"),
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop"}],
                   **({"usage": {"prompt_tokens": tokens, "completion_tokens": done, "total_tokens": tokens + done}}
                      if self.faults.usage else {})}
        if fault == "wrong_count":  # an answer with no choices
            payload["choices"] = []
        headers = {"_drip": "1"} if fault == "drip" else {}
        return 200, headers, json.dumps(payload).encode()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout) is not the server's error: no traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: EmbeddingsServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    """Headers and body go out in two writes: with Nagle's algorithm the body waits ~40 ms for the client's
    delayed ACK of the headers, which a real server does not cost (and would swamp the client's overhead)."""

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        route = {"/v1/embeddings": "embeddings", "/v1/rerank": "rerank",
                 "/v1/chat/completions": "chat"}.get(self.path.rstrip("/"))
        if route is None:
            return self._send(404, {}, b'{"error": {"message": "no such route"}}')
        with self.server.lock:
            self.server.seen.authorization.add(self.headers.get("Authorization", ""))
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send(400, {}, b'{"error": {"message": "not JSON"}}')
        status, headers, payload = self.server.answer(body, self.headers.get("Authorization", ""), route)
        if not payload and status == 503:  # a hang that was released: drop the connection
            self.close_connection = True
            return None
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        drip, huge = headers.pop("_drip", None), int(headers.pop("_huge", 0))
        size = huge << 20 if huge else len(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(size))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if drip:  # one byte at a time, until the answer is sent or the server stops
            for i in range(len(payload)):
                self.wfile.write(payload[i:i + 1])
                self.wfile.flush()
                if self.server.released.wait(DRIP_S):
                    return
        elif huge:  # a valid start, then numbers without end
            piece = b"1.0," * (1 << 16)
            self.wfile.write(b'{"data": [{"index": 0, "embedding": [')
            for _ in range(size // len(piece)):
                self.wfile.write(piece)
        else:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def running(port: int = 0) -> Iterator[EmbeddingsServer]:
    """The server on loopback in a thread, its model loaded, stopped (hanging requests released) on exit."""
    server = EmbeddingsServer(port)
    server.embedder.encode(["warm up"])  # a first request that loads the model would outlast a client's timeout
    thread = threading.Thread(target=server.serve_forever, name="embeddings-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8399)
    port = parser.parse_args().port
    with running(port) as server:
        print(f"serving /v1/embeddings at {server.base_url} (Ctrl-C stops)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
