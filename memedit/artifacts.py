"""Named tensor files kept in a folder, referenced from the store with their SHA-256.

An artifact is a dict of tensors saved as one safetensors file in the store's artifacts
folder (for SQLite ``<db>-artifacts/`` by default; for PostgreSQL ``artifacts_dir=`` or
``$MEMEDIT_ARTIFACTS``, a folder every app server shares) plus a row in the store's ``artifacts`` table (namespace, name, file, SHA-256, size, JSON
metadata). Saving writes the file first (atomically, under a name that contains its
checksum), then commits the row in one transaction, then deletes the file it replaced:
a crash leaves the old artifact or the new one, never half of one. Loading checks the
file's SHA-256 against the row and raises :class:`ArtifactError` if they differ. Every
read and write is scoped to one namespace. ``Memory.artifacts`` gives a namespace's;
the GRACE codebook and the consolidation deltas are kept this way.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .edit import utc_now
from .errors import MemeditError
from .files import check_sha256, write_atomic
from .storage import Storage

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


class ArtifactError(MemeditError, RuntimeError):
    """An artifact file is missing or does not match the SHA-256 its store row records."""


@dataclass(frozen=True)
class ArtifactRef:
    """The store's record of one artifact."""

    namespace: str
    name: str
    file: str
    sha256: str
    bytes: int
    meta: dict[str, Any]
    saved_at: str


class Artifacts:
    """Save and load named tensor dicts of one namespace (see the module docstring).

    ``folder`` defaults to the store's (``Storage.artifacts_folder``); for an in-memory
    database a temporary folder is used, which lives as long as this object.
    """

    def __init__(self, store: Storage, namespace: str, folder: str | Path | None = None, lock: Any = None) -> None:
        self.store = store
        self.namespace = namespace
        self._lock = lock if lock is not None else threading.RLock()
        self._tmp = None
        if folder is None:
            folder = store.artifacts_folder()
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="memedit-artifacts-")
            folder = self._tmp.name
        space = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:16]
        self.folder = Path(folder) / space

    def save(self, name: str, tensors: dict[str, Any], meta: dict[str, Any] | None = None) -> ArtifactRef:
        """Save ``tensors`` (name -> torch tensor) as artifact ``name`` with JSON-able ``meta``; returns its ref."""
        from safetensors.torch import save as to_bytes

        _check_name(name)
        meta = dict(meta or {})
        try:
            meta_text = json.dumps(meta, ensure_ascii=False)
        except TypeError as err:
            raise ValueError(f"artifact {name!r}: meta must be JSON-serialisable ({err}); pass plain dicts, lists, text and numbers") from None
        data = to_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        digest = hashlib.sha256(data).hexdigest()
        self.folder.mkdir(parents=True, exist_ok=True)
        file = f"{name.replace('/', '__')}-{digest[:16]}.safetensors"
        write_atomic(self.folder / file, data)
        with self._lock:
            old = self.ref(name)
            with self.store.write():
                self.store.put_artifact(self.namespace, name, file, digest, len(data), meta_text)
        if old is not None and old.file != file:
            (self.folder / old.file).unlink(missing_ok=True)
        return ArtifactRef(self.namespace, name, file, digest, len(data), meta, utc_now())

    def ref(self, name: str) -> ArtifactRef | None:
        """The store's row for artifact ``name`` of this namespace, or None."""
        with self._lock:
            row = self.store.artifact_row(self.namespace, name)
        if row is None:
            return None
        return ArtifactRef(self.namespace, name, row[0], row[1], row[2], json.loads(row[3]), row[4])

    def load(self, name: str) -> tuple[dict[str, Any], ArtifactRef] | None:
        """(tensors, ref) of artifact ``name``, checksum verified; None if there is none.

        Raises :class:`ArtifactError` when the file is missing or its SHA-256 differs.
        """
        from safetensors.torch import load as from_bytes

        ref = self.ref(name)
        if ref is None:
            return None
        path = self.folder / ref.file
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ArtifactError(f"artifact {name!r} of namespace {self.namespace!r}: cannot read {path} ({err}); "
                                f"restore the file, or delete the artifact so it is rebuilt") from None
        check_sha256(path, ref.sha256, "the store records the expected one: the file was changed or corrupted; "
                                       "restore it, or delete the artifact so it is rebuilt",
                     data=data, error=ArtifactError, what=f"artifact {name!r} of namespace {self.namespace!r} ({path})")
        return from_bytes(data), ref

    def delete(self, name: str) -> bool:
        """Remove artifact ``name`` (row, then file); True if there was one."""
        with self._lock:
            old = self.ref(name)
            if old is None:
                return False
            with self.store.write():
                self.store.delete_artifact(self.namespace, name)
        (self.folder / old.file).unlink(missing_ok=True)
        return True

    def names(self) -> list[str]:
        """Names of this namespace's artifacts, sorted."""
        with self._lock:
            return self.store.artifact_names(self.namespace)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise ValueError(f"artifact name must be 1-200 characters of letters, digits, '.', '_', '-' and '/' "
                         f"(no '..'), got {name!r}")

