"""Artifact storage behind one interface (BlobStore): SQL chunks by default, an
S3-compatible object store when TRAINERY_ARTIFACT_URL is set."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobStore
from app.settings import Settings


def open_store(factory: sessionmaker[Session], settings: Settings) -> BlobStore:
    """The store the settings ask for; boto3 is imported only when S3 is."""
    if not settings.artifact_url:
        return BlobStore(factory, settings.blob_chunk_bytes)
    from app.artifacts.s3 import S3Objects
    from app.artifacts.store import ObjectBlobStore

    return ObjectBlobStore(factory, S3Objects(settings), settings.blob_chunk_bytes)
