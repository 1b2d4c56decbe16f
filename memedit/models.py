"""Local causal language models: greedy generation, teacher-forced scoring, a reusable prefix cache.

``load_model("smollm2-135m")`` (the default), ``load_model("qwen2.5-1.5b")``, or a local
Hugging Face folder or GGUF file. A prompt is given either as text or as a
:class:`Prompt`: a cacheable ``prefix`` (few-shot demonstrations) and a ``body``; the
prefix's key/value cache is computed once and reused for every body that follows it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

from .model_files import DEFAULT_MODEL, resolve

DEFAULT_MAX_NEW_TOKENS = 32
PREFIX_CACHE_SIZE = 4


@dataclass(frozen=True)
class Prompt:
    """Model-ready text split in two: ``prefix`` is shared between many prompts (its key/value
    cache is reused), ``body`` is what changes. The model sees ``prefix + body``.
    ``messages`` keeps the chat turns the text was rendered from, as (role, content) pairs,
    for backends that take messages rather than text (a LangChain chat model)."""

    prefix: str
    body: str
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def text(self) -> str:
        return self.prefix + self.body


@dataclass(frozen=True)
class Score:
    """Teacher-forced score of a continuation: total log-probability, and how many of its
    tokens are the model's own greedy choice (``token_accuracy``)."""

    logprob: float
    token_accuracy: float
    predicted_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


def as_prompt(prompt: Prompt | str) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt("", prompt)


class LanguageModel:
    """A local Hugging Face causal LM with the few operations memedit needs."""

    def __init__(self, model, tokenizer, name: str = "model", device: str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._prefixes: OrderedDict[str, tuple[list[int], object]] = OrderedDict()
        self._lock = threading.RLock()

    def weights_changed(self) -> None:
        """Drop what was computed with the old weights (the prefix key/value caches); call
        after writing into the model's parameters."""
        with self._lock:
            self._prefixes.clear()

    # -- prompt text -------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat(self, messages: Sequence[dict[str, str]], cache_turns: int = 0) -> Prompt:
        """Render chat ``messages`` (role/content dicts) with the model's chat template, ready
        for the assistant's reply. The first ``cache_turns`` messages become the cached prefix.
        Without a chat template, a plain ``Role: content`` transcript is used."""
        text = self._render(messages, generation=True)
        pairs = message_pairs(messages)
        if cache_turns:
            prefix = self._render(messages[:cache_turns], generation=False)
            if text.startswith(prefix):
                return Prompt(prefix, text[len(prefix):], pairs)
        return Prompt("", text, pairs)

    def _render(self, messages: Sequence[dict[str, str]], generation: bool) -> str:
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)
        lines = [f"{m['role'].capitalize()}: {m['content']}\n" for m in messages]
        return "".join(lines) + ("Assistant:" if generation else "")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, prompt: Prompt | str) -> list[int]:
        """Token ids of a prompt: prefix and body tokenised apart, so cached and uncached runs agree."""
        prompt = as_prompt(prompt)
        return self._ids(prompt.prefix) + self._ids(prompt.body)

    # -- running the model ---------------------------------------------------------------
    def _prefix_cache(self, prefix: str):
        """(ids, key/value cache) of a prefix, computed once and kept in a small LRU."""
        import torch

        if prefix in self._prefixes:
            self._prefixes.move_to_end(prefix)
            return self._prefixes[prefix]
        ids = self._ids(prefix)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        self._prefixes[prefix] = (ids, out.past_key_values)
        while len(self._prefixes) > PREFIX_CACHE_SIZE:
            self._prefixes.popitem(last=False)
        return self._prefixes[prefix]

    def _forward(self, prompt: Prompt, extra: list[int] = ()):
        """Logits for the body (and ``extra`` tokens) after the prompt's prefix; returns
        (logits of the non-prefix positions, cache, prefix length)."""
        import torch

        if prompt.prefix:
            prefix_ids, cache = self._prefix_cache(prompt.prefix)
            extra_len = cache.get_seq_length() - len(prefix_ids)
            if extra_len > 0:  # drop what the last prompt appended after the prefix
                cache.crop(-extra_len)
        else:
            prefix_ids, cache = [], None
        ids = self._ids(prompt.body) + list(extra)
        out = self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True)
        return out.logits[0], out.past_key_values, len(prefix_ids)

    def generate(self, prompt: Prompt | str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 stop: Sequence[str] = ("\n",)) -> str:
        """Greedy continuation of one prompt, cut at the first stop string or end of turn."""
        return "".join(self.stream(prompt, max_new_tokens=max_new_tokens, stop=stop))

    def stream(self, prompt: Prompt | str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               stop: Sequence[str] = ("\n",)) -> Iterator[str]:
        """``generate``, piece by piece as tokens come: the pieces join to exactly what
        ``generate`` returns (text that may start a stop string is held back until it cannot)."""
        import torch

        prompt = as_prompt(prompt)
        eos = self._eos_ids()
        new: list[int] = []
        visible = VisibleText(stop)
        with self._lock, torch.inference_mode():
            logits, cache, _ = self._forward(prompt)
            for _ in range(max_new_tokens):
                token = int(logits[-1].argmax())
                if token in eos:
                    break
                new.append(token)
                piece = visible.update(self.tokenizer.decode(new, skip_special_tokens=True))
                if piece:
                    yield piece
                if visible.stopped:
                    break
                out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache, use_cache=True)
                logits, cache = out.logits[0], out.past_key_values
        rest = visible.finish()
        if rest:
            yield rest

    def generate_batch(self, prompts: Sequence[Prompt | str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                       stop: Sequence[str] = ("\n",), batch_size: int = 8) -> list[str]:
        """Greedy continuations of many prompts, ``batch_size`` at a time (left padding)."""
        import torch

        results: list[str] = []
        pad = self.tokenizer.pad_token_id
        eos = sorted(self._eos_ids())
        for start in range(0, len(prompts), batch_size):
            rows = [self.prompt_ids(p) for p in prompts[start:start + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            with self._lock, torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                          eos_token_id=eos, pad_token_id=pad, tokenizer=self.tokenizer,
                                          stop_strings=list(stop) or None)
            for row in out[:, width:]:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                cut = _stop_at(text, stop)
                results.append((text if cut is None else text[:cut]).strip())
        return results

    def score(self, prompt: Prompt | str, continuation: str) -> Score:
        """Teacher-forced score of ``continuation`` right after ``prompt`` (no space is added)."""
        import torch

        prompt = as_prompt(prompt)
        target = self._ids(continuation)
        if not target:
            raise ValueError("continuation is empty; give the text whose tokens should be scored")
        with self._lock, torch.inference_mode():
            logits, _, _ = self._forward(prompt, target)
            if not prompt.body:
                raise ValueError("prompt body is empty; put at least one token after the cached prefix")
        steps = logits[-len(target) - 1:-1].float()
        logprobs = torch.log_softmax(steps, dim=-1)
        gold = torch.tensor(target)
        predicted = steps.argmax(-1)
        return Score(float(logprobs[torch.arange(len(target)), gold].sum()),
                     float((predicted == gold).float().mean()),
                     tuple(int(t) for t in predicted), tuple(target))

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        for token in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        ids.discard(None)
        return ids

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, device={self.device!r})"


def _stop_at(text: str, stop: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def message_pairs(messages: Sequence[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """Chat messages (role/content dicts) as hashable (role, content) pairs."""
    return tuple((m["role"], m["content"]) for m in messages)


class VisibleText:
    """The part of a growing generation that is final: cut at the first stop string, stripped,
    and holding back any tail that could still become a stop string, trailing white space or
    half a character. ``update(full_text)`` returns the newly final piece; ``finish()`` the rest."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = ""
        self.full = ""
        self.stopped = False

    def _final(self) -> str:
        cut = _stop_at(self.full, self.stop)
        self.stopped = cut is not None
        return (self.full if cut is None else self.full[:cut]).strip()

    def update(self, full: str) -> str:
        self.full = full
        final = self._final()
        if not self.stopped:
            final = self.full[:len(self.full) - self.hold].rstrip("\ufffd").strip()
        return self._advance(final)

    def finish(self) -> str:
        return self._advance(self._final())

    def _advance(self, final: str) -> str:
        if not final.startswith(self.sent):  # cannot happen with greedy text; be safe
            return ""
        piece, self.sent = final[len(self.sent):], final
        return piece


_loaded: dict[tuple[str, str], LanguageModel] = {}
_load_lock = threading.Lock()


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu") -> LanguageModel:
    """Load a model by packaged short name or local path (cached per process), offline.

    Raises :class:`memedit.errors.ModelPackageError` for an unknown name, a missing
    package or a bad checksum, with the command that fixes it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    key = (str(name_or_path), device)
    with _load_lock:
        if key not in _loaded:
            folder = resolve(name_or_path)
            hf_logging.disable_progress_bar()
            try:
                model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device)
                tokenizer = AutoTokenizer.from_pretrained(str(folder))
            finally:
                hf_logging.enable_progress_bar()
            _loaded[key] = LanguageModel(model, tokenizer, name=str(name_or_path), device=device)
        return _loaded[key]
