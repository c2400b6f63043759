"""S3 and S3-compatible object storage via s3fs; the fingerprint is ETag + size. Credentials: the
usual AWS settings (environment, ~/.aws, instance role) or, under Airflow, the connection named by
`aws_conn_id`. They are never logged."""

from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.sources.object_store import ObjectStoreSource


@dataclass
class S3Source(ObjectStoreSource):
    endpoint_url: str | None = None
    region: str | None = None
    aws_conn_id: str | None = None
    kind: str = "s3"
    schemes: ClassVar[tuple[str, ...]] = ("s3",)

    def filesystem(self) -> Any:
        import s3fs

        options: dict[str, Any] = {}
        if self.aws_conn_id:
            from pipelines.airflow.connections import aws_credentials

            options.update(aws_credentials(self.aws_conn_id))
        client = {k: v for k, v in {"endpoint_url": self.endpoint_url, "region_name": self.region}.items() if v}
        return s3fs.S3FileSystem(client_kwargs=client, skip_instance_cache=True, **options)

    def fingerprint(self, info: dict[str, Any]) -> str:
        return f"{str(info.get('ETag', '')).strip(chr(34))}:{info.get('size')}"
