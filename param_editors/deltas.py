"""Weight deltas: the journal of consolidation batches a model carries.

Each batch is one artifact ``delta/<batch>`` (per parameter ``after - before``, float32
safetensors, SHA-256 checked) plus a batch-level ``consolidate`` event in the store's log;
a ``revert`` event takes it out of force. The model's touched parameters are always
computed the same way, ``base + d₁ + d₂ + …`` over the batches in force, oldest first, so
the live model, a model rebuilt from the base, and a model after a revert agree bit for bit.
The base values of every parameter a batch touched are kept in memory (and checked
against the SHA-256 each batch recorded of them), so any batch can be reverted.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch

from memedit.artifacts import Artifacts
from memedit.errors import ConflictError
from memedit.models import LanguageModel

PREFIX = "delta/"


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (as stored on CPU)."""
    return hashlib.sha256(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def artifact_name(batch: str) -> str:
    return PREFIX + batch


class WeightJournal:
    """The batches of one memory namespace, in force on one local model.

    Get it with ``WeightJournal.attach(model, memory)``: one journal per model object,
    owned by one database and namespace (a namespace never carries another's edits).
    """

    def __init__(self, lm: LanguageModel, memory) -> None:
        self.lm = lm
        self.memory = memory
        self.owner = (memory.path, memory.namespace)
        self.base: dict[str, torch.Tensor] = {}
        self.applied: list[str] = []

    @classmethod
    def attach(cls, lm: LanguageModel, memory) -> "WeightJournal":
        if not isinstance(getattr(lm, "model", None), torch.nn.Module):
            raise TypeError("consolidation writes into a local Hugging Face model's weights; pass a memedit "
                            "LanguageModel (memedit.load_model(...)), not a black-box chat model")
        journal = getattr(lm, "_weight_journal", None)
        owner = (memory.path, memory.namespace)
        if journal is not None and journal.owner != owner:
            if journal.applied:
                raise ConflictError(f"this model carries the consolidated edits of namespace {journal.owner[1]!r} "
                                    f"({journal.owner[0]}); load a separate copy of the model for namespace "
                                    f"{memory.namespace!r} ({memory.path})")
            journal = None
        if journal is None:
            journal = cls(lm, memory)
            lm._weight_journal = journal
        journal.memory = memory
        return journal

    @property
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.lm.model.named_parameters())

    @property
    def artifacts(self) -> Artifacts:
        return self.memory.artifacts

    def keep_base(self, names: list[str], expected: dict[str, str] | None = None) -> None:
        """Remember the current values of ``names`` as their base (once per parameter); with
        ``expected`` (name -> SHA-256), refuse a model whose values are not that base."""
        params = self.parameters
        for name in names:
            if name in self.base:
                continue
            if name not in params:
                raise ConflictError(f"the model has no parameter {name!r} that a consolidation batch changed; "
                                    f"load the model the batches were made on ({self.lm.name} is loaded)")
            value = params[name].detach()
            if expected and name in expected and tensor_sha256(value) != expected[name]:
                raise ConflictError(f"{name} of {self.lm.name} is not the base the consolidation batches of namespace "
                                    f"{self.memory.namespace!r} were made on; load that base model fresh (not an edited copy)")
            self.base[name] = value.clone()

    def set_weights(self, values: dict[str, torch.Tensor]) -> None:
        params = self.parameters
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(value)
        self.lm.weights_changed()

    def sync(self) -> list[str]:
        """Make the model carry exactly the store's batches in force (base + their deltas, in
        order); returns their ids. Cheap when nothing changed."""
        batches = self.memory.weight_batches()
        ids = [b["batch"] for b in batches]
        if ids == self.applied:
            return ids
        deltas = []
        for batch in batches:
            loaded = self.artifacts.load(batch["artifact"])
            if loaded is None:
                raise ConflictError(f"consolidation batch {batch['batch']!r} of namespace {self.memory.namespace!r} has no "
                                    f"delta artifact; restore {self.memory.path}-artifacts/, or revert the batch")
            tensors, ref = loaded
            self.keep_base(list(tensors), ref.meta.get("base_sha256"))
            deltas.append((tensors, ref.meta.get("after_sha256", {})))
        values = {name: base.clone() for name, base in self.base.items()}
        for tensors, after in deltas:
            for name, delta in tensors.items():
                values[name] = values[name] + delta.to(values[name].device, values[name].dtype)
        self.set_weights(values)
        last_after: dict[str, str] = {}
        for _, after in deltas:
            last_after.update(after)
        changed = [n for n, sha in last_after.items() if tensor_sha256(values[n]) != sha]
        if changed:
            warnings.warn(f"rebuilt weights differ from the ones consolidated for {', '.join(changed[:3])}; "
                          f"the base model may differ from the one the batches were made on", stacklevel=2)
        self.applied = ids
        return ids

    def record(self, batch: str, deltas: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
        """Save a batch's deltas as its artifact; returns the artifact name."""
        name = artifact_name(batch)
        self.artifacts.save(name, deltas, meta)
        return name
