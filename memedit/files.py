"""What every part does with files: SHA-256 digests and checks, atomic writes, and loading
Hugging Face files offline and quietly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import ModelPackageError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str, fix: str, data: bytes | None = None,
                 error: Callable[[str], Exception] = ModelPackageError, what: str | None = None) -> str:
    """The SHA-256 of ``path`` (or of ``data``, its bytes already read); raises ``error`` naming
    ``what`` (default: the path), both digests and ``fix`` when it is not ``expected``."""
    digest = sha256_file(path) if data is None else hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise error(f"{what or path} has SHA-256 {digest}, expected {expected}; {fix}")
    return digest


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def quiet_hf(errors_only: bool = True) -> Iterator[None]:
    """Load Hugging Face files offline (nothing is downloaded), without progress bars and,
    with ``errors_only``, without load reports (the previous verbosity comes back after)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if errors_only:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def read_checked_meta(meta_path: Path, weights: Path, fix: str, what: str) -> dict:
    """The JSON beside a learned file (``what``: its name in errors), with ``threshold`` as a
    float, once ``weights`` matches the SHA-256 it records; ModelPackageError otherwise."""
    try:
        meta = json.loads(Path(meta_path).read_text())
        expected, meta["threshold"] = meta["sha256"], float(meta["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelPackageError(f"{meta_path} is damaged ({exc!r}); {fix}") from None
    check_sha256(weights, expected, f"{what} was damaged or changed; {fix}")
    return meta
