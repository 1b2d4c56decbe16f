"""GRACE: a codebook adaptor at one MLP layer of a local model (Hartvigsen et al., 2023).

The wrapped layer is ``blocks[layer].mlp`` of a Hugging Face causal LM (Llama, Qwen2,
Gemma3 and other layouts whose blocks have an ``mlp``). For an edit, the *key* is the
MLP's input at the last token of the prompt the model sees (the same chat prompt every
router uses, see :meth:`Router.base_prompt`), unit-normalised by default; the *value*
is a replacement for the MLP's output, trained with a short Adam loop so that the
target (followed by the end-of-turn token) becomes the greedy answer. At answer time,
the question's query is compared with the nearest key: within that key's deferral
radius, the MLP's output is replaced by the value at the last prompt token and at
every token generated after it; otherwise nothing is touched and the answer is the
unedited model's, bit for bit. The model's weights never change.

Edits come from the memory and are applied one after another, in the order they were
added (a stream), with the published rules: a key farther than the nearest key's radius
plus the initial radius is added with the initial radius; within that range, a key with
the same target *expands* the nearest key's radius to cover the new input (its value is
then trained on both prompts); a different target adds a key and *splits* the radii
(both become at most half the distance, so they no longer overlap). Each question first
syncs with the memory: edits added since are inserted, edits retracted or superseded
are removed (an entry that served several edits is rebuilt from the ones left).

Erase edits get a key and no value: a question whose query falls within an erase key's
radius gets the router's refusal. Free-text edits (no prompt or, except erases, no
target) cannot be keyed: they are skipped, and every answer's trace lists them under a
``skipped`` step. The codebook is saved through :mod:`memedit.artifacts` (safetensors,
SHA-256 in the store) after each sync that changed it, and loaded again when a router
is built over the same memory and model.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ContextManager, Iterator, Sequence

import torch

from memedit import hooks
from memedit.artifacts import ArtifactError
from memedit.checks import whole_number
from memedit.edit import fill_prompt
from memedit.layout import final_norm, find_blocks, output_logits
from memedit.memory import Memory
from memedit.models import LanguageModel, Prompt, Score
from memedit.store import StoredEdit

from .base import Answer, Plan, Router
from .steps import Steps, done

log = logging.getLogger(__name__)

FORMAT = 1
# Per model family: where the layer sits (fraction of the depth) and the initial radius
# (Euclidean distance between unit-normalised keys). Measured for SmolLM2 (llama) on
# KnowEdit ZsRE training cases 1100-1299 by ``bench/grace_sequential.py --calibrate``;
# the other families reuse those numbers until measured.
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "llama": {"depth": 0.77, "radius": 0.26},
    "qwen2": {"depth": 0.77, "radius": 0.26},
    "gemma3": {"depth": 0.77, "radius": 0.26},
    "gemma3_text": {"depth": 0.77, "radius": 0.26},
}
FALLBACK = {"depth": 0.77, "radius": 0.26}


@dataclass(frozen=True)
class GraceSettings:
    """``layer``: index of the wrapped block; ``radius``: initial deferral radius; ``steps``
    and ``lr``: the Adam loop that trains a value (it stops early once every target
    token is the greedy choice with loss under ``stop_loss``); ``normalize``: keys are
    unit vectors (distances from 0 to 2)."""

    layer: int
    radius: float
    steps: int = 30
    lr: float = 2.0
    stop_loss: float = 0.1
    normalize: bool = True


def default_settings(model: LanguageModel, **overrides: Any) -> GraceSettings:
    """Settings for ``model``'s family, with ``overrides`` (None values are ignored)."""
    config = model.model.config
    family = FAMILY_DEFAULTS.get(getattr(config, "model_type", ""), FALLBACK)
    n = len(find_blocks(model.model))
    base = {"layer": min(n - 1, round(family["depth"] * n)), "radius": family["radius"]}
    base.update({k: v for k, v in overrides.items() if v is not None})
    settings = GraceSettings(**base)
    if not 0 <= settings.layer < n:
        raise ValueError(f"layer must be from 0 to {n - 1} for {model.name} ({n} blocks), got {settings.layer!r}")
    if not settings.radius > 0:
        raise ValueError(f"radius must be above 0, got {settings.radius!r}")
    whole_number("steps", settings.steps, 1)
    if not settings.lr > 0:
        raise ValueError(f"lr must be above 0, got {settings.lr!r}")
    return settings


class LayerAdaptor:
    """Reads the wrapped MLP's input, replaces its output, and trains replacement values."""

    def __init__(self, model: LanguageModel, settings: GraceSettings) -> None:
        self.lm = model
        self.settings = settings
        self.blocks = find_blocks(model.model)
        self.mlp = self.blocks[settings.layer].mlp
        self.eot = model.end_of_turn_id()  # what training appends to each target
        self.norm = final_norm(model.model)
        self.fast = self.norm is not None  # run only the wrapped block and those above it while training

    def _key(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        return torch.nn.functional.normalize(x, dim=-1) if self.settings.normalize else x

    def query(self, ids: list[int]) -> torch.Tensor:
        """The key of a prompt: the MLP's input at its last token (the layers above are not run)."""
        with torch.no_grad(), hooks.read_input(self.mlp) as seen:
            hooks.run_until(self.mlp, lambda: self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device),
                                                            use_cache=False), before=True)
        return self._key(seen[0][0, -1])

    def replacing(self, value: torch.Tensor, start: int) -> ContextManager[None]:
        """Within the block, the MLP's output is ``value`` at every position from ``start``
        on (counted over the forward calls made inside, so decoding steps are included)."""
        seen = [0]

        def replace(output: torch.Tensor) -> torch.Tensor | None:
            n = output.shape[1]
            low = max(start - seen[0], 0)
            seen[0] += n
            if low >= n:
                return None
            out = output.clone()
            out[:, low:] = value.to(out.dtype)
            return out

        return hooks.replace_output(self.mlp, replace)

    def example(self, prompt_ids: list[int], target: str) -> dict[str, Any]:
        """What training needs for one (prompt, target): the key, the MLP's output at the last
        prompt token, the prefix key/value cache, and the teacher-forced ids."""
        target_ids = self.lm.tokenizer(self.lm.plain(target), add_special_tokens=False)["input_ids"] + [self.eot]
        cut = len(prompt_ids) - 1
        suffix = prompt_ids[cut:] + target_ids[:-1]
        calls: list[tuple[tuple, dict]] = []

        def block_hook(module, args, kwargs):
            calls.append((args, dict(kwargs)))

        layer = self.settings.layer
        with torch.no_grad(), ExitStack() as stack:
            prefix = self.lm.model(input_ids=torch.tensor([prompt_ids[:cut]], device=self.lm.device), use_cache=True)
            inputs = stack.enter_context(hooks.read_input(self.mlp))
            outputs = stack.enter_context(hooks.read_output(self.mlp))
            if self.fast:
                for block in self.blocks[layer:]:
                    stack.enter_context(hooks.on_forward(block, block_hook, before=True, with_kwargs=True))
            out = self.lm.model(input_ids=torch.tensor([suffix], device=self.lm.device), cache=prefix.cache, use_cache=True)
            stack.close()
            _crop(prefix.cache, cut)
        example = {"key": self._key(inputs[0][0, 0]), "init": outputs[0][0, 0].float().clone(), "cache": prefix.cache,
                   "cut": cut, "suffix": torch.tensor([suffix], device=self.lm.device),
                   "target": torch.tensor(target_ids, device=self.lm.device)}
        if self.fast:
            example["calls"] = calls
            with torch.no_grad():
                tail = self._tail(example)
            if not torch.allclose(tail, out.logits[0].float(), atol=1e-3, rtol=1e-3):
                log.warning("GRACE: running only the blocks above layer %d does not reproduce %s's logits; "
                            "training runs the whole model from now on (slower)", layer, self.lm.name)
                self.fast = False
                example.pop("calls")
        return example

    def _tail(self, example: dict[str, Any]) -> torch.Tensor:
        """Logits of the example's suffix, running only the wrapped block and those above it."""
        calls = example["calls"]
        hidden = calls[0][0][0] if calls[0][0] else calls[0][1]["hidden_states"]
        for block, (args, kwargs) in zip(self.blocks[self.settings.layer:], calls):
            if args:
                out = block(hidden, *args[1:], **kwargs)
            else:
                out = block(**{**kwargs, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, tuple) else out
        _crop(example["cache"], example["cut"])
        return output_logits(self.lm.model, self.norm(hidden))[0].float()

    def train(self, examples: list[dict[str, Any]], init: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """A value that makes each example's target (and end of turn) the greedy answer.

        Only positions from the last prompt token on are run in the loop: the prompt's
        earlier tokens come from each example's cached keys and values, which the
        replacement cannot change (attention is causal).
        """
        value = init.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.settings.lr)
        step, loss_value, correct = 0, float("nan"), False
        with hooks.replace_output(self.mlp, lambda output: value.to(output.dtype).expand_as(output)), torch.enable_grad():
            for step in range(1, self.settings.steps + 1):
                losses, correct = [], True
                for ex in examples:
                    if "calls" in ex:
                        logits = self._tail(ex)
                    else:
                        out = self.lm.model(input_ids=ex["suffix"], cache=ex["cache"], use_cache=True)
                        _crop(ex["cache"], ex["cut"])
                        logits = out.logits[0].float()
                    losses.append(torch.nn.functional.cross_entropy(logits, ex["target"]))
                    correct = correct and bool((logits.argmax(-1) == ex["target"]).all())
                loss = torch.stack(losses).sum()
                loss_value = float(loss.detach())
                if correct and loss_value / len(examples) < self.settings.stop_loss:
                    break
                optimizer.zero_grad()
                (grad,) = torch.autograd.grad(loss, [value])
                value.grad = grad
                optimizer.step()
        return value.detach().clone(), {"steps": step, "loss": round(loss_value, 4), "fit": correct}


@dataclass(eq=False)
class Entry:
    """One codebook entry: a key, its value (None for an erase), its radius, and the edits
    it serves (the first is the one whose prompt gave the key)."""

    key: torch.Tensor
    value: torch.Tensor | None
    radius: float
    target: str | None
    kind: str
    edit_ids: list[str] = field(default_factory=list)


@dataclass
class GracePlan(Plan):
    """A plan whose generation runs with an entry's value spliced in."""

    entry: Entry | None = None


class GRACERouter(Router):
    name = "grace"

    def __init__(self, model: LanguageModel, memory: Memory, layer: int | None = None, radius: float | None = None,
                 steps: int | None = None, lr: float | None = None, normalize: bool | None = None,
                 autosave: bool = True, **options: Any) -> None:
        options.pop("k", None)  # GRACE does not retrieve by embedding
        super().__init__(model, memory, **options)
        if not hasattr(model, "model") or not isinstance(model.model, torch.nn.Module):
            raise ValueError("GRACE needs a local Hugging Face model (memedit.load_model); a black-box chat model has no layers to wrap")
        self.settings = default_settings(model, layer=layer, radius=radius, steps=steps, lr=lr, normalize=normalize)
        self.adaptor = LayerAdaptor(model, self.settings)
        self.entries: list[Entry] = []
        self.skipped: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []  # one record per inserted edit: rule, distance, training
        self.autosave = autosave
        self.artifacts = memory.artifacts
        self.artifact_name = "grace/" + re.sub(r"[^A-Za-z0-9._-]+", "_", str(model.name))[-120:]
        self._lock = threading.RLock()
        self._seq: int | None = None
        self._matrix: torch.Tensor | None = None
        self._load()

    # -- prompts and the codebook ---------------------------------------------------------
    def edit_prompt(self, edit: StoredEdit) -> Prompt:
        """The prompt an edit is keyed on: its filled cloze prompt, asked like any question."""
        return self.base_prompt(fill_prompt(edit.prompt, edit.subject))

    def _ids(self, prompt: Prompt) -> list[int]:
        if prompt.prefix:
            raise ValueError("GRACE keys whole prompts; the base prompt must not have a cached prefix")
        return self.model.prompt_ids(prompt)

    def nearest(self, key: torch.Tensor) -> tuple[int | None, float]:
        """Index of the nearest entry and its distance (None, inf when the codebook is empty)."""
        if not self.entries:
            return None, float("inf")
        if self._matrix is None:
            self._matrix = torch.stack([e.key for e in self.entries])
        distances = torch.linalg.vector_norm(self._matrix - key, dim=1)
        j = int(distances.argmin())
        return j, float(distances[j])

    def codebook_bytes(self) -> int:
        """Bytes held by the codebook's tensors (keys, values, radii)."""
        return sum(e.key.numel() * 4 + (e.value.numel() * 4 if e.value is not None else 0) + 8 for e in self.entries)

    # -- syncing with the memory ------------------------------------------------------------
    def sync(self) -> dict[str, int]:
        """Insert the memory's new active edits (oldest first) and drop the inactive ones."""
        with self._lock:
            seq = self.memory.revision()
            if seq == self._seq:
                return {"added": 0, "removed": 0}
            active = self.memory.list()
            active_ids = {e.id for e in active}
            known = {i for e in self.entries for i in e.edit_ids} | set(self.skipped)
            gone = known - active_ids
            readd: set[str] = set()
            for entry in [e for e in self.entries if gone & set(e.edit_ids)]:
                self.entries.remove(entry)
                readd |= set(entry.edit_ids) - gone
            for edit_id in gone & set(self.skipped):
                del self.skipped[edit_id]
            self._matrix = None
            todo = [e for e in active if e.id not in known or e.id in readd]
            for edit in todo:
                self.insert(edit)
            self._seq = seq
            if (todo or gone) and self.autosave:
                self.save()
            return {"added": len(todo), "removed": len(gone)}

    def insert(self, edit: StoredEdit) -> dict[str, Any]:
        """Apply one edit with the published rules; returns what was done (also in ``events``)."""
        reason = unusable(edit)
        if reason:
            self.skipped[edit.id] = reason
            record = {"edit": edit.id, "rule": "skip", "reason": reason}
            self.events.append(record)
            return record
        started = time.perf_counter()
        target = None if edit.kind == "erase" else edit.target
        ids = self._ids(self.edit_prompt(edit))
        example = self.adaptor.example(ids, target) if target is not None else None
        key = example["key"] if example is not None else self.adaptor.query(ids)
        j, distance = self.nearest(key)
        radius = self.settings.radius
        record: dict[str, Any] = {"edit": edit.id, "distance": None if j is None else round(distance, 4)}
        if j is None or distance > self.entries[j].radius + radius:
            record["rule"] = "add"
            self._add(edit, key, target, radius, example, record)
        elif self.entries[j].target == target:
            record["rule"] = "expand"
            near = self.entries[j]
            near.radius = max(near.radius, distance)
            near.edit_ids.append(edit.id)
            if target is not None:
                examples = [self._example(i, target) for i in near.edit_ids[:-1]] + [example]
                near.value, record["train"] = self.adaptor.train(examples, near.value)
        else:
            record["rule"] = "split"
            self.entries[j].radius = min(self.entries[j].radius, distance / 2)
            self._add(edit, key, target, min(radius, distance / 2), example, record)
        self._matrix = None
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.events.append(record)
        return record

    def _add(self, edit: StoredEdit, key: torch.Tensor, target: str | None, radius: float,
             example: dict[str, Any] | None, record: dict[str, Any]) -> None:
        value = None
        if example is not None:
            value, record["train"] = self.adaptor.train([example], example["init"])
        self.entries.append(Entry(key, value, radius, target, edit.kind, [edit.id]))

    def _example(self, edit_id: str, target: str) -> dict[str, Any]:
        return self.adaptor.example(self._ids(self.edit_prompt(self.memory.get(edit_id))), target)

    # -- answering -------------------------------------------------------------------------
    def plan(self, question: str, history: Sequence[dict[str, str]] = ()) -> Plan:
        with self._lock:
            self.sync()
            trace: list[dict[str, Any]] = []
            if self.skipped:
                trace.append({"step": "skipped", "edits": sorted(self.skipped)[:20], "count": len(self.skipped),
                              "reason": "free-text edits: GRACE needs a cloze prompt and a target (erases need a prompt)"})
            prompt = self.base_prompt(question, history) if history else self.base_prompt(question)
            ids = self._ids(prompt)
            j, distance = self.nearest(self.adaptor.query(ids)) if self.entries else (None, float("inf"))
            entry = None if j is None else self.entries[j]
            in_scope = entry is not None and distance <= entry.radius
            trace.append({"step": "lookup", "layer": self.settings.layer, "entries": len(self.entries),
                          "nearest": None if entry is None else list(entry.edit_ids),
                          "distance": None if entry is None else round(distance, 4),
                          "radius": None if entry is None else round(entry.radius, 4), "in_scope": in_scope})
            if not in_scope:
                return Plan("base", prompt=prompt, trace=trace)
            used = [self.memory.get(i) for i in entry.edit_ids]
            if entry.value is None:
                trace.append({"step": "refuse", "edit": entry.edit_ids[0], "text": self.refusal})
                return Plan("erase", text=self.refusal, edits_used=used, trace=trace)
            return GracePlan(self.name, prompt=prompt, edits_used=used, trace=trace, entry=entry)

    @contextmanager
    def _applied(self, plan: Plan) -> Iterator[None]:
        if isinstance(plan, GracePlan) and plan.entry is not None:
            with self._lock, self.adaptor.replacing(plan.entry.value, len(self._ids(plan.prompt)) - 1):
                yield
        else:
            yield

    def _generate(self, plan: Plan) -> str:
        plan.trace.append({"step": "prompt", "text": plan.prompt.text})
        with self._applied(plan):
            return self.model.generate(plan.prompt, max_new_tokens=self.max_new_tokens, stop=getattr(self, "stop", ("\n",)))

    def run_steps(self, plan: Plan) -> Steps[Answer]:
        """A plan in scope is generated here, at once, with its value spliced in (never
        batched with other questions: the value is in the model while it runs)."""
        if not isinstance(plan, GracePlan) or plan.text is not None:
            return super().run_steps(plan)
        text = self._generate(plan)
        plan.trace.append({"step": "generate", "text": text})
        return done(Answer(text, plan.edits_used, plan.route, plan.trace))

    def pieces(self, plan: Plan) -> Iterator[str]:
        """Streaming: a GRACE answer comes as one piece (the value is spliced in while the
        whole answer is generated, so no other caller sees the model with it)."""
        if not isinstance(plan, GracePlan) or plan.text is not None:
            yield from super().pieces(plan)
            return
        yield self._generate(plan)

    def score(self, plan: Plan, continuation: str) -> Score:
        """Teacher-forced score of ``continuation`` after the plan's prompt, the value spliced in when in scope."""
        with self._applied(plan):
            return self.model.score(plan.prompt, continuation)

    def logits(self, question: str) -> torch.Tensor:
        """Next-token logits after ``question``'s prompt, as this router answers it."""
        plan = self.plan(question)
        prompt = plan.prompt if plan.prompt is not None else self.base_prompt(question)
        with self._applied(plan), torch.no_grad():
            out = self.model.model(input_ids=torch.tensor([self._ids(prompt)], device=self.model.device), use_cache=False)
        return out.logits[0, -1].detach().clone()

    # -- saving and loading ----------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": str(self.model.name), "layer": self.settings.layer,
                "normalize": self.settings.normalize, "hidden": int(self.model.model.config.hidden_size)}

    def save(self):
        """Write the codebook to the store (safetensors file + SHA-256); returns its ArtifactRef."""
        with self._lock:
            hidden = self._identity()["hidden"]
            keys = torch.stack([e.key for e in self.entries]) if self.entries else torch.zeros(0, hidden)
            values = torch.stack([e.value if e.value is not None else torch.zeros(hidden) for e in self.entries]) \
                if self.entries else torch.zeros(0, hidden)
            radii = torch.tensor([e.radius for e in self.entries], dtype=torch.float64)
            meta = {**self._identity(), "settings": asdict(self.settings), "seq": self._seq, "skipped": self.skipped,
                    "entries": [{"edits": e.edit_ids, "target": e.target, "kind": e.kind} for e in self.entries]}
            return self.artifacts.save(self.artifact_name, {"keys": keys, "values": values, "radii": radii}, meta)

    def _load(self) -> None:
        try:
            loaded = self.artifacts.load(self.artifact_name)
        except ArtifactError as err:
            log.warning("GRACE codebook not loaded, it will be rebuilt from the memory's edits: %s", err)
            return
        if loaded is None:
            return
        tensors, ref = loaded
        identity = {k: ref.meta.get(k) for k in self._identity()}
        if identity != self._identity():
            log.warning("GRACE codebook %s was built for %s, not %s; it will be rebuilt from the memory's edits",
                        self.artifact_name, identity, self._identity())
            return
        self.entries = [Entry(tensors["keys"][i].clone(), tensors["values"][i].clone() if e["kind"] != "erase" else None,
                              float(tensors["radii"][i]), e["target"], e["kind"], list(e["edits"]))
                        for i, e in enumerate(ref.meta["entries"])]
        self.skipped = dict(ref.meta.get("skipped", {}))
        self._seq = None  # sync against the memory on the next question


def _crop(cache, length: int) -> None:
    """Cut every layer of a key/value cache back to its first ``length`` positions, cut off
    from any autograd graph (layers may differ in length after a partial run)."""
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            if tensor.shape[-2] > length or tensor.requires_grad:
                setattr(layer, name, tensor[..., :length, :].detach())


def unusable(edit: StoredEdit) -> str | None:
    """Why GRACE cannot key this edit, or None."""
    if edit.prompt is None or edit.subject is None:
        return "free-text edit: GRACE needs a cloze prompt with the subject; add it as subject/prompt/target"
    if edit.kind != "erase" and not edit.target:
        return "no target to train a value for"
    return None
