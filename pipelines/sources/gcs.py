"""Google Cloud Storage via gcsfs; the fingerprint is the object's generation (new with every write),
its MD5 (or CRC32C for composed objects) and size. Credentials: Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS, gcloud's, the metadata server) or, under Airflow, the connection named
by `gcp_conn_id` (its `key_path` or `keyfile_dict`); `anonymous: true` for public buckets and the
emulator. Never logged. No change events offline: `ragpipe watch` polls the listing (watch.interval_s)."""

from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.sources.base import SourceError
from pipelines.sources.object_store import ObjectStoreSource

REQUEST_TIMEOUT_S = 60
"""Each request's limit (gcsfs's default is aiohttp's: 5 minutes)."""


@dataclass
class GcsSource(ObjectStoreSource):
    project: str | None = None
    endpoint_url: str | None = None
    """Another endpoint than Google's (the emulator); unset: $STORAGE_EMULATOR_HOST, else Google's."""
    anonymous: bool = False
    gcp_conn_id: str | None = None
    kind: str = "gcs"
    schemes: ClassVar[tuple[str, ...]] = ("gs", "gcs")

    def filesystem(self) -> Any:
        try:
            from gcsfs.core import GCSFileSystem  # the plain one: no gRPC probe of each bucket's layout
        except ImportError:
            raise SourceError("gcs sources need gcsfs: pip install 'ragpipe[gcs]'") from None

        token: Any = "anon" if self.anonymous else None
        project = self.project
        if self.gcp_conn_id:
            from pipelines.airflow.connections import gcp_credentials

            token, project = gcp_credentials(self.gcp_conn_id, project)
        return GCSFileSystem(project=project or "_", token=token, endpoint_url=self.endpoint_url,
                             skip_instance_cache=True, retries=2, requests_timeout=REQUEST_TIMEOUT_S)

    def fingerprint(self, info: dict[str, Any]) -> str:
        return f"{info.get('generation', '')}:{info.get('md5Hash') or info.get('crc32c', '')}:{info.get('size')}"
