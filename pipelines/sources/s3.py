"""S3 and S3-compatible object storage via s3fs; the fingerprint is ETag + size, so unchanged
objects are never downloaded. Credentials: the usual AWS settings (environment, ~/.aws, instance
role) or, under Airflow, the connection named by `aws_conn_id`. They are never logged."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any

from pipelines.sources.base import DocumentRef, Listing, RawDocument, SourceError
from pipelines.sources.folder import FileFilters


@dataclass
class S3Source(FileFilters):
    path: str
    """s3://bucket/prefix"""
    endpoint_url: str | None = None
    region: str | None = None
    aws_conn_id: str | None = None
    kind: str = "s3"

    def __post_init__(self) -> None:
        if not self.path.startswith("s3://"):
            raise SourceError(f"s3 source path must look like s3://bucket/prefix, got {self.path!r}")
        self.prefix = self.path[len("s3://"):].rstrip("/")

    @cached_property
    def fs(self) -> Any:
        import s3fs

        options: dict[str, Any] = {}
        if self.aws_conn_id:
            from pipelines.airflow.connections import aws_credentials

            options.update(aws_credentials(self.aws_conn_id))
        client = {k: v for k, v in {"endpoint_url": self.endpoint_url, "region_name": self.region}.items() if v}
        return s3fs.S3FileSystem(client_kwargs=client, skip_instance_cache=True, **options)

    def list(self) -> Listing:
        try:
            objects = self.fs.find(self.prefix, detail=True)
        except Exception as exc:  # any listing failure: report it, delete nothing
            return Listing([], complete=False, problems=[f"listing {self.path} failed: {type(exc).__name__}: {exc}"])
        refs = []
        for key, info in sorted(objects.items()):
            rel = key[len(self.prefix):].lstrip("/")
            if info.get("type") == "directory" or not self.wanted(rel):
                continue
            etag = str(info.get("ETag", "")).strip('"')
            refs.append(DocumentRef(rel, f"s3://{key}", f"{etag}:{info.get('size')}"))
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
                yield ref, SourceError(f"cannot read {ref.uri}: {type(exc).__name__}: {exc}")
                continue
            yield ref, RawDocument(ref, data, PurePosixPath(key).suffix.lower(), metadata={"key": ref.source_id})

