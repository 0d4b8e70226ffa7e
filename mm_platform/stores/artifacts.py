"""Reading a registered model's artifact and checking it against its recorded sha256.

Light on purpose (MLflow is imported only for remote artifact stores): Spark workers read
the previous model of each changed series through it to warm-start its refit."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse


class ArtifactIntegrityError(RuntimeError):
    """A model artifact does not match the sha256 recorded at registration."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_path(uri: str) -> str | None:
    """The file an artifact URI points at, when it is on a local or mounted filesystem."""
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    if "://" not in uri and os.path.isabs(uri):
        return uri
    return None


def read_bytes(source: str) -> bytes:
    path = local_path(source)
    if path is not None:
        return Path(path).read_bytes()
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        return Path(download_artifacts(artifact_uri=source, dst_path=tmp)).read_bytes()


def read_verified(source: str, expected_sha256: str | None, what: str = "artifact") -> bytes:
    """The artifact's bytes; ``ArtifactIntegrityError`` unless they match ``expected_sha256``."""
    data = read_bytes(source)
    if not expected_sha256 or sha256(data) != expected_sha256:
        raise ArtifactIntegrityError(f"{what} at {source} does not match its recorded sha256")
    return data
