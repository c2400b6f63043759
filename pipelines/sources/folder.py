"""A local folder, walked recursively; the fingerprint is size + modification time."""

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field

from pipelines.extract import EXTRACTORS
from pipelines.sources.base import DocumentRef, Listing, RawDocument, SourceError

DEFAULT_MAX_BYTES = 50 * 1024 * 1024


@dataclass(kw_only=True)
class FileFilters:
    """Which files of a tree to take, shared by the folder and object-storage sources."""

    include: list[str] = field(default_factory=lambda: [f"*{s}" for s in sorted(EXTRACTORS)])
    """Globs matched against the path relative to the root; `*` also crosses directories."""
    exclude: list[str] = field(default_factory=list)
    max_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_BYTES

    def wanted(self, rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, g) for g in self.include) and not any(
            fnmatch.fnmatch(rel, g) for g in self.exclude)


@dataclass
class FolderSource(FileFilters):
    """A folder walked recursively, or one file (`path` names it: the collection is that document)."""

    path: str
    kind: str = "folder"

    def __post_init__(self) -> None:
        given = Path(self.path).expanduser().resolve()
        self.single = given.name if given.is_file() else None
        self.root = given.parent if self.single else given
        if not self.single and not self.root.is_dir():
            raise SourceError(f"source {self.path!r} does not exist (give a folder, or one document: "
                              f"{', '.join(sorted(EXTRACTORS))})")

    def list(self) -> Listing:
        """Every wanted file below the root (links to folders are not followed). A file that cannot be
        stat'ed (a dangling or looping link, an editor's lock file) is a failure of that entry, kept if
        indexed before; a folder that cannot be read makes the listing incomplete (nothing is deleted)."""
        refs, problems, rejected = [], [], []
        if self.single:
            st = (self.root / self.single).stat()
            return Listing([DocumentRef(self.single, (self.root / self.single).as_uri(),
                                        f"{st.st_size}:{st.st_mtime_ns}")], complete=True)
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=lambda e: problems.append(str(e))):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath, name)
                rel = full.relative_to(self.root).as_posix()
                if not self.wanted(rel):
                    continue
                try:
                    st = full.stat()
                except OSError as exc:  # a dangling or looping link, or gone between walk and stat
                    if full.is_symlink() or isinstance(exc, FileNotFoundError):
                        rejected.append((rel, f"cannot be read: {exc.strerror}"))
                    else:
                        problems.append(f"{rel}: {exc.strerror}")
                    continue
                refs.append(DocumentRef(rel, full.as_uri(), f"{st.st_size}:{st.st_mtime_ns}"))
        return Listing(refs, complete=not problems, problems=problems, rejected=rejected)

    def read_many(self, refs: Iterable[DocumentRef], previous: dict[str, str | None] | None = None
                  ) -> Iterator[tuple[DocumentRef, RawDocument | Exception]]:
        for ref in refs:
            try:
                yield ref, self.read(ref)
            except (SourceError, OSError) as exc:
                yield ref, exc if isinstance(exc, SourceError) else SourceError(f"cannot read: {exc}")

    def read(self, ref: DocumentRef) -> RawDocument:
        full = (self.root / ref.source_id).resolve()
        if not full.is_relative_to(self.root):
            raise SourceError(f"{ref.source_id!r} resolves outside the source folder; refused")
        _refuse_non_regular(full.stat().st_mode)
        # O_NONBLOCK: a file swapped for a FIFO after the check above still cannot block the open
        with os.fdopen(os.open(full, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            _refuse_non_regular(st.st_mode)
            if st.st_size > self.max_bytes:
                raise SourceError(f"file is {st.st_size} bytes, over the size cap of {self.max_bytes} bytes")
            data = f.read(self.max_bytes + 1)
        return RawDocument(ref, data, full.suffix.lower(), metadata={"path": ref.source_id})


NON_REGULAR = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
               stat.S_ISBLK: "a block device", stat.S_ISDIR: "a directory"}


def _refuse_non_regular(mode: int) -> None:
    """Only regular files are documents: reading a FIFO or a device could block forever."""
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in NON_REGULAR.items() if test(mode)), "not a regular file")
        raise SourceError(f"{kind}, not a regular file; skipped")

