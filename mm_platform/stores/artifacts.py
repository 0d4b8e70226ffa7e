"""Reading a registered model's artifact and checking it against its recorded sha256, and
writing a model set's artifacts from the training tasks themselves.

Light on purpose (MLflow is imported only for remote artifact stores): Spark workers read
the previous model of each changed series through it to warm-start its refit, and write
each model they train into the model set's run (``TaskArtifacts``)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact already in the registry's artifact store (written by a training task): what
    registration records instead of uploading bytes."""

    source: str
    sha256: str


class TaskArtifacts:
    """The folder of a model set's run (``<run artifact URI>/models``) that the training tasks
    write each trained model into themselves, so that models never travel to the driver: the
    driver registers their ``StoredArtifact`` references. Only for an artifact store on a path
    every task reaches (local mode, or a volume all executors mount); picklable."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        folder = local_path(self.uri)
        if folder is None:
            raise ValueError(f"training tasks write artifacts only to a local or mounted folder, not {uri}")
        self.folder = folder
        self._made = False  # the folder exists (per process: each task unpickles its own copy)

    @classmethod
    def under(cls, run_artifact_uri: str) -> TaskArtifacts | None:
        """The run's ``models`` folder, or None when the run's store is not a path."""
        return cls(f"{run_artifact_uri.rstrip('/')}/models") if local_path(run_artifact_uri) is not None else None

    def write(self, name: str, data: bytes) -> StoredArtifact:
        """``name``.json in the folder. Written in place, not through a rename: nothing refers
        to it until the whole model set is registered, after every task succeeded (a retried
        task writes the same bytes again), and every load checks the sha256."""
        if not self._made:
            os.makedirs(self.folder, exist_ok=True)
            self._made = True
        with open(os.path.join(self.folder, f"{name}.json"), "wb") as f:
            f.write(data)
        return StoredArtifact(f"{self.uri}/{name}.json", sha256(data))

    def remove(self) -> None:
        """Drop the folder (a model set that was not registered)."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
