"""Web pages: a list of URLs and/or a sitemap. Conditional requests (ETag / Last-Modified) make an
unchanged page cost a 304; 404/410 deletes the page; 5xx and timeouts are recorded failures that
keep the previous version. Every address is checked against an SSRF guard before each request
(redirects included): loopback, private, link-local (cloud metadata) and reserved ranges are
refused unless `allow_private_networks` is set. `timeout_s` is one deadline for a whole document
(connect, redirects, every read): httpx's own timeouts are per read, so a server that drips a byte
a second would hold a run for as long as it liked."""

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import Field

from pipelines.sources.base import FIELD_SEP, DocumentRef, Gone, Listing, NotModified, RawDocument, SourceError

SUFFIX_BY_TYPE = {"text/html": ".html", "application/xhtml+xml": ".html", "application/pdf": ".pdf",
                  "text/plain": ".txt", "text/markdown": ".md",
                  "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx"}
SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


class BlockedAddress(SourceError):
    """The URL resolves to an address the SSRF guard refuses."""


class Deadline:
    """One time limit for a whole document. At the limit the socket in use is shut down, which ends
    a read that is still receiving bytes (httpx's timeouts only bound each read)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.end, self.expired = seconds, time.monotonic() + seconds, False
        self._socket: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def left(self) -> float:
        return max(0.05, self.end - time.monotonic())

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember each new connection's socket (plain, then TLS)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.watch(info.get("return_value"))

    def watch(self, stream: Any) -> None:
        with self._lock:
            self._socket = stream.get_extra_info("socket") if stream is not None else None
        if self.expired:
            self._shutdown()

    def check(self) -> None:
        if self.expired or time.monotonic() > self.end:
            raise self.error()

    def error(self) -> SourceError:
        return SourceError(f"the page took longer than timeout_s={self.seconds:g} s in total (connect, redirects "
                           "and all reads): a slow or stalled server; keeping the previous version")

    def _expire(self) -> None:
        self.expired = True
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class WebSource:
    urls: list[str] = field(default_factory=list)
    sitemap: str | None = None
    url_prefix: str | None = None
    """Only pages whose URL starts with this are taken (from the sitemap and redirects)."""
    allow_private_networks: bool = False
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    max_bytes: Annotated[int, Field(ge=1)] = 10 * 1024 * 1024
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    user_agent: str = "ragpipe/0.1 (+https://github.com/ragpipe/ragpipe)"
    max_pages: Annotated[int, Field(ge=1)] = 10_000
    kind: str = "web"

    def __post_init__(self) -> None:
        if not self.urls and not self.sitemap:
            raise SourceError("web source needs `urls` and/or a `sitemap`")
        for url in [*self.urls, *([self.sitemap] if self.sitemap else [])]:
            if urlsplit(url).scheme not in ("http", "https"):
                raise SourceError(f"only http(s) URLs can be fetched, got {url!r}")

    def list(self) -> Listing:
        refs = {u: DocumentRef(u, u, "") for u in self.urls if self._in_scope(u)}
        problems: list[str] = []
        if self.sitemap:
            try:
                for url, lastmod in self._sitemap_urls(self.sitemap, depth=0):
                    if self._in_scope(url):
                        refs.setdefault(url, DocumentRef(url, url, lastmod or ""))
            except (SourceError, httpx.HTTPError, ValueError) as exc:
                problems.append(f"sitemap {self.sitemap}: {exc}")
        if len(refs) > self.max_pages:
            problems.append(f"more than max_pages={self.max_pages} pages; the crawl was cut short")
        return Listing(sorted(refs.values(), key=lambda r: r.source_id)[: self.max_pages],
                       complete=not problems, problems=problems)

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | NotModified | Gone | Exception]]:
        previous = previous or {}
        with self._client() as client, \
                ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            refs = list(refs)
            yield from zip(refs, pool.map(lambda r: self._read(client, r, previous.get(r.source_id)), refs),
                           strict=True)

    def _read(self, client: httpx.Client, ref: DocumentRef, stored: str | None):
        parts = (stored or "").split(FIELD_SEP) + ["", ""]
        etag, modified = parts[1], parts[2]  # validators of the stored version, if any
        headers = {k: v for k, v in {"If-None-Match": etag, "If-Modified-Since": modified}.items() if v}
        try:
            response, body = self._fetch(client, ref.source_id, headers)
        except (SourceError, httpx.HTTPError) as exc:
            return exc if isinstance(exc, SourceError) else SourceError(f"{type(exc).__name__}: {exc}")
        new_fp = FIELD_SEP.join([ref.fingerprint, response.headers.get("ETag", ""),
                                 response.headers.get("Last-Modified", "")])
        if response.status_code == 304:
            return NotModified(DocumentRef(ref.source_id, ref.uri, FIELD_SEP.join([ref.fingerprint, etag, modified])))
        if response.status_code in (404, 410):
            return Gone(ref, f"HTTP {response.status_code}")
        if response.status_code != 200:
            return SourceError(f"HTTP {response.status_code} from {ref.source_id}; keeping the previous version")
        content_type = response.headers.get("Content-Type", "text/html").split(";")[0].strip().lower()
        suffix = SUFFIX_BY_TYPE.get(content_type)
        if suffix is None:
            return SourceError(f"unsupported content type {content_type!r}")
        return RawDocument(DocumentRef(ref.source_id, str(response.url), new_fp), body, suffix,
                           metadata={"url": ref.source_id, "content_type": content_type})

    def _client(self) -> httpx.Client:
        """No kept-alive connections: each request's socket is new, so its Deadline can always cut it."""
        return httpx.Client(timeout=self.timeout_s, follow_redirects=False, headers={"User-Agent": self.user_agent},
                            limits=httpx.Limits(max_keepalive_connections=0))

    def _fetch(self, client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        """GET with the SSRF guard on every hop, a redirect limit, a response size cap and one deadline."""
        with Deadline(self.timeout_s) as deadline:
            try:
                return self._fetch_within(client, url, headers, deadline)
            except httpx.HTTPError:
                deadline.check()  # a read the deadline cut short says so
                raise

    def _fetch_within(self, client: httpx.Client, url: str, headers: dict[str, str],
                      deadline: Deadline) -> tuple[httpx.Response, bytes]:
        for _ in range(self.max_redirects + 1):
            self._guard(url)
            with client.stream("GET", url, headers=headers, timeout=deadline.left(),
                               extensions={"trace": deadline.trace}) as response:
                deadline.watch(response.extensions.get("network_stream"))
                if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    if not self._in_scope(url):
                        raise SourceError(f"redirect leaves url_prefix: {url}")
                    continue
                body = bytearray()
                for piece in response.iter_bytes():
                    deadline.check()
                    body.extend(piece)
                    if len(body) > self.max_bytes:
                        raise SourceError(f"response larger than the cap of {self.max_bytes} bytes")
                deadline.check()
                return response, bytes(body)
        raise SourceError(f"more than {self.max_redirects} redirects")

    def _guard(self, url: str) -> None:
        if self.allow_private_networks:
            return
        host = urlsplit(url).hostname or ""
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror as exc:
            raise SourceError(f"cannot resolve {host!r}: {exc}") from None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
                    or ip.is_unspecified):
                raise BlockedAddress(f"refused to fetch {url}: {host} resolves to non-public address {ip} "
                                     "(set allow_private_networks: true for an internal site)")

    def _in_scope(self, url: str) -> bool:
        return not self.url_prefix or url.startswith(self.url_prefix)

    def _sitemap_urls(self, url: str, depth: int) -> Iterator[tuple[str, str | None]]:
        """(loc, lastmod) pairs of a sitemap, following sitemap indexes two levels deep."""
        from lxml import etree

        with self._client() as client:
            response, body = self._fetch(client, url, {})
        if response.status_code != 200:
            raise SourceError(f"HTTP {response.status_code}")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        root = etree.fromstring(body, parser)
        for node in root:
            loc = node.findtext(f"{SITEMAP_NS}loc") or node.findtext("loc")
            lastmod = node.findtext(f"{SITEMAP_NS}lastmod") or node.findtext("lastmod")
            if not loc:
                continue
            if node.tag.endswith("sitemap") and depth < 2:
                yield from self._sitemap_urls(loc.strip(), depth + 1)
            else:
                yield loc.strip(), lastmod.strip() if lastmod else None
