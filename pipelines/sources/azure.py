"""Azure Blob Storage and ADLS Gen2 via adlfs (az://container/prefix, abfs://, abfss://); the
fingerprint is the blob's ETag, last-modified time and size. Credentials: the usual AZURE_STORAGE_*
variables (a connection string, an account key, a SAS token, a service principal), else Azure's
default credential chain (managed identity, the CLI's login) for `account_name`; or, under Airflow,
the connection named by `wasb_conn_id`. Never logged. No change events offline: `ragpipe watch` polls
the listing (watch.interval_s)."""

from dataclasses import dataclass
from typing import Any, ClassVar

from pipelines.sources.base import SourceError
from pipelines.sources.object_store import ObjectStoreSource


@dataclass
class AzureSource(ObjectStoreSource):
    account_name: str | None = None
    connection_string_env: str | None = None
    """A variable holding a connection string (the emulator's, or an account's); default
    AZURE_STORAGE_CONNECTION_STRING when it is set."""
    anonymous: bool = False
    wasb_conn_id: str | None = None
    kind: str = "azure"
    schemes: ClassVar[tuple[str, ...]] = ("az", "abfs", "abfss")

    def __post_init__(self) -> None:
        super().__post_init__()
        container, _, rest = self.prefix.partition("/")
        if "@" in container:  # abfss://container@account.dfs.core.windows.net/prefix
            container, _, host = container.partition("@")
            self.account_name = self.account_name or host.split(".")[0]
            self.prefix = f"{container}/{rest}".rstrip("/")

    def filesystem(self) -> Any:
        import os

        try:
            from adlfs import AzureBlobFileSystem
        except ImportError:
            raise SourceError("azure sources need adlfs: pip install 'ragpipe[azure]'") from None

        options: dict[str, Any] = {"account_name": self.account_name, "anon": self.anonymous or None}
        if self.connection_string_env:
            value = os.environ.get(self.connection_string_env)
            if not value:
                raise SourceError(f"${self.connection_string_env} (connection_string_env) is not set")
            options["connection_string"] = value
        if self.wasb_conn_id:
            from pipelines.airflow.connections import azure_credentials

            options.update(azure_credentials(self.wasb_conn_id))
        return AzureBlobFileSystem(skip_instance_cache=True, **{k: v for k, v in options.items() if v is not None})

    def fingerprint(self, info: dict[str, Any]) -> str:
        modified = info.get("last_modified")
        modified = modified.isoformat() if hasattr(modified, "isoformat") else modified
        return f"{str(info.get('etag', '')).strip(chr(34))}:{modified}:{info.get('size')}"
