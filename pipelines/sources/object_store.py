"""Object storage through fsspec: what the S3, Google Cloud Storage and Azure Blob sources share.
Each cloud's module says how to connect and what fingerprints an object (a cheap listing field that
changes with its content), so unchanged objects are never downloaded."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any, ClassVar

from pipelines.sources.base import DocumentRef, Listing, RawDocument, SourceError
from pipelines.sources.folder import FileFilters


@dataclass
class ObjectStoreSource(FileFilters):
    """Every wanted object under `path` (scheme://bucket/prefix): listed with its fingerprint, read
    whole (up to max_bytes). A failed listing is incomplete, so nothing is deleted."""

    path: str
    schemes: ClassVar[tuple[str, ...]] = ()
    """The URL schemes of this kind of store; the first names the objects' URIs when the path has none."""

    def __post_init__(self) -> None:
        scheme, sep, rest = self.path.partition("://")
        if not sep or scheme not in self.schemes or not rest.strip("/"):
            shown = " or ".join(f"{s}://bucket/prefix" for s in self.schemes)
            raise SourceError(f"{self.kind} source path must look like {shown}, got {self.path!r}")
        self.scheme = scheme
        self.prefix = rest.rstrip("/")

    @cached_property
    def fs(self) -> Any:
        return self.filesystem()

    def filesystem(self) -> Any:
        """The fsspec file system, credentials applied (never logged)."""
        raise NotImplementedError

    def fingerprint(self, info: dict[str, Any]) -> str:
        """What changes when the object's content does, from its listing entry."""
        raise NotImplementedError

    def list(self) -> Listing:
        bucket = self.prefix.split("/")[0]
        try:
            objects = self.fs.find(self.prefix, detail=True)
            # Some stores list a missing bucket as empty (adlfs): that must not read as "all deleted"
            missing = not objects and not self.fs.exists(bucket)
        except Exception as exc:  # any listing failure: report it, delete nothing
            return Listing([], complete=False, problems=[f"listing {self.path} failed: {type(exc).__name__}: "
                                                         f"{_one_line(exc)}"])
        if missing:
            return Listing([], complete=False, problems=[
                f"listing {self.path} failed: {bucket!r} does not exist, or these credentials cannot see it"])
        refs = []
        for key, info in sorted(objects.items()):
            rel = key[len(self.prefix):].lstrip("/")
            if info.get("type") == "directory" or not rel or not self.wanted(rel):
                continue
            refs.append(DocumentRef(rel, f"{self.scheme}://{key}", self.fingerprint(info)))
        return Listing(refs, complete=True)

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        for ref in refs:
            key = f"{self.prefix}/{ref.source_id}"
            try:
                size = int(self.fs.info(key)["size"])
                if size > self.max_bytes:
                    raise SourceError(f"object is {size} bytes, over the size cap of {self.max_bytes} bytes")
                data = self.fs.cat_file(key)
            except FileNotFoundError:
                yield ref, SourceError("object disappeared after listing; it will be removed on the next run")
                continue
            except SourceError as exc:
                yield ref, exc
                continue
            except Exception as exc:
                yield ref, SourceError(f"cannot read {ref.uri}: {type(exc).__name__}: {_one_line(exc)}")
                continue
            yield ref, RawDocument(ref, data, PurePosixPath(key).suffix.lower(), metadata={"key": ref.source_id})


def _one_line(exc: Exception) -> str:
    """An SDK's error, on one line and short: Azure's carry the whole answer after their first line,
    and their code apart."""
    text = " ".join(str(exc).strip().split("\n")[0].split())
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)
    if code and str(code) not in text:
        text = f"{text} ({code})"
    return text if len(text) <= 300 else text[:300] + "…"
