"""Where recordings are stored (env prefix ``LIVESTREAM_STORAGE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Ingest's working directory default (``IngestSettings.storage_dir``): with the local backend the
# two are one directory, so nothing is copied.
DEFAULT_LOCAL_DIR = Path("./var/segments")


class BlobStoreSettings(BaseSettings):
    """Backend and its address. S3 credentials are not settings: boto3 reads the standard AWS
    chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles)."""

    model_config = SettingsConfigDict(
        env_prefix="LIVESTREAM_STORAGE_", frozen=True, extra="ignore", populate_by_name=True
    )

    backend: Literal["local", "s3"] = Field(
        default="local",
        description="local: a directory on this machine; s3: an S3-compatible bucket (AWS, MinIO...).",
    )
    local_dir: Path = Field(
        default=DEFAULT_LOCAL_DIR,
        # The ingest variable keeps older deployments (which only set that one) working.
        validation_alias=AliasChoices("LIVESTREAM_STORAGE_LOCAL_DIR", "LIVESTREAM_INGEST_STORAGE_DIR"),
        description="Root directory of the local backend (ingest's storage_dir by default).",
    )
    s3_bucket: str | None = Field(default=None, min_length=3, max_length=63, description="Bucket (s3).")
    s3_prefix: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9._-]+/)*$",
        description="Key prefix inside the bucket, empty or ending with '/' (several stacks, one bucket).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible server (MinIO: http://minio:9000); None: AWS.",
    )
    s3_region: str | None = Field(default=None, description="Region (AWS); None: boto3's default chain.")
    s3_path_style: bool = Field(
        default=False,
        description="Path-style addressing (endpoint/bucket/key), which MinIO and most S3 clones need.",
    )

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Self:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("LIVESTREAM_STORAGE_BACKEND=s3 needs LIVESTREAM_STORAGE_S3_BUCKET")
        return self
