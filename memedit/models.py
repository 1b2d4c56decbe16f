"""Local causal language models: greedy generation, teacher-forced scoring, a reusable prefix cache.

``load_model("smollm2-135m")`` (the default), ``load_model("qwen2.5-1.5b")``, or a local
Hugging Face folder or GGUF file. A prompt is given either as text or as a
:class:`Prompt`: a cacheable ``prefix`` (few-shot demonstrations) and a ``body``; the
prefix's key/value cache is computed once and reused for every body that follows it.
"""

from __future__ import annotations

import copy
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

from .checks import whole_number
from .files import quiet_hf
from .model_files import DEFAULT_MODEL, resolve

# The tokens that end an assistant turn, by chat template (ChatML, Gemma, Llama 3).
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>")

DEFAULT_MAX_NEW_TOKENS = 32
PREFIX_CACHE_SIZE = 4
# Rows decoded together. On 2 CPU cores, 8 rows of Qwen2.5-1.5B cost about twice one row
# per step (bench/throughput.py measures it); a GPU takes more.
DEFAULT_BATCH_SIZE = 8
# At most this many tokens (rows x (prompt + new tokens)) go through the model at once, so a
# huge prompt is decoded in a smaller batch instead of padding every row to its length.
MAX_BATCH_TOKENS = 16384


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


@dataclass(frozen=True)
class Request:
    """One greedy generation: the prompt, its token budget and its stop strings."""

    prompt: Prompt
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ("\n",)

    @classmethod
    def each(cls, prompts: Sequence["Prompt | str"], max_new_tokens: int, stop: Sequence[str]) -> list["Request"]:
        """One request per prompt, all with the same budget and stop strings."""
        return [cls(as_prompt(p), max_new_tokens, tuple(stop)) for p in prompts]


class PlainText:
    """Makes text from outside (the memory, a user's question, a conversation's history) plain
    text for one tokenizer: every string the tokenizer would read as one of its added tokens
    (``<|im_end|>``, ``<|im_start|>``, ``<|endoftext|>``, ``<repo_name>``...) gets a zero-width
    space after its first character, so it is tokenised as ordinary characters and can never
    become a control token (a turn boundary, an end of text). Other text is left as it is.

    This is done on the text, before templating, because a prompt is text (rendered by the chat
    template, cached and traced as text): tokenising with special tokens split would also split
    the template's own. Where a normaliser would drop the zero-width space, a plain space is used.
    """

    MARKS = ("\u200b", " ")

    def __init__(self, tokenizer) -> None:
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        strings = {getattr(t, "content", str(t)) for t in added.values()} | set(getattr(tokenizer, "all_special_tokens", ()))
        strings = sorted((s for s in strings if len(s.strip()) > 1 and not any(m in s for m in self.MARKS)), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, strings))) if strings else None
        self.mark = self.MARKS[0]
        added_ids = set(added)
        if strings and added_ids & set(tokenizer(self(strings[0]), add_special_tokens=False)["input_ids"]):
            self.mark = self.MARKS[1]

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        while self.pattern.search(text):  # a mark splits one match; what it leaves may hold another
            text = self.pattern.sub(lambda m: m.group(0)[0] + self.mark + m.group(0)[1:], text)
        return text


def as_prompt(prompt: Prompt | str) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt("", prompt)


def check_batch_size(batch_size: object) -> int:
    return whole_number("batch_size", batch_size, 1)


def check_request(request: object, index: int = 0) -> Request:
    """``request`` checked: a Request with a non-empty prompt, a positive budget, text stop strings."""
    if not isinstance(request, Request):
        raise TypeError(f"requests[{index}] must be a memedit.models.Request, got {type(request).__name__}")
    if not isinstance(request.prompt, Prompt) or not request.prompt.body:
        raise ValueError(f"requests[{index}]: the prompt's body is empty; give at least one token of text after the prefix")
    whole_number(f"requests[{index}].max_new_tokens", request.max_new_tokens, 1)
    if isinstance(request.stop, str) or not all(isinstance(s, str) for s in request.stop):
        raise ValueError(f"requests[{index}]: stop must be a tuple of strings, got {request.stop!r}")
    return request


def _row_batches(prefixes: Sequence[str], costs: Sequence[int], batch_size: int) -> Iterator[tuple[str, list[int]]]:
    """(prefix, row indexes) of the rows to run together: rows grouped by their cached prefix,
    cheapest first, in runs of at most ``batch_size`` whose cost (rows x the longest row's
    tokens) stays within MAX_BATCH_TOKENS; a row over that budget goes alone."""
    groups: dict[str, list[int]] = {}
    for i, prefix in enumerate(prefixes):
        groups.setdefault(prefix, []).append(i)
    for prefix, members in groups.items():
        run: list[int] = []
        for i in sorted(members, key=lambda i: costs[i]):
            if run and (len(run) == batch_size or costs[i] * (len(run) + 1) > MAX_BATCH_TOKENS):
                yield prefix, run
                run = []
            run.append(i)
        if run:
            yield prefix, run


class LanguageModel:
    """A local Hugging Face causal LM with the few operations memedit needs."""

    def __init__(self, model, tokenizer, name: str = "model", device: str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.plain = PlainText(tokenizer)
        self._prefixes: OrderedDict[str, tuple[list[int], object]] = OrderedDict()
        self._lock = threading.RLock()
        self.tokens_generated = 0  # every token decoded so far (one at a time or batched), for throughput figures

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
        Without a chat template, a plain ``Role: content`` transcript is used. Every message's
        content is made plain text first (:class:`PlainText`): no text in a message can become
        one of the model's control tokens; only the template makes those."""
        text = self._render(messages, generation=True)
        pairs = message_pairs(messages)
        if cache_turns:
            prefix = self._render(messages[:cache_turns], generation=False)
            if text.startswith(prefix):
                return Prompt(prefix, text[len(prefix):], pairs)
        return Prompt("", text, pairs)

    def _render(self, messages: Sequence[dict[str, str]], generation: bool) -> str:
        messages = [{**m, "content": self.plain(m["content"])} for m in messages]
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
        self._prefixes[prefix] = (ids, out.cache)
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
        out = self.model(input_ids=torch.tensor([ids], device=self.device), cache=cache, use_cache=True)
        return out.logits[0], out.cache, len(prefix_ids)

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
                self.tokens_generated += 1
                piece = visible.update(self.tokenizer.decode(new, skip_special_tokens=True))
                if piece:
                    yield piece
                if visible.stopped:
                    break
                out = self.model(input_ids=torch.tensor([[token]], device=self.device), cache=cache, use_cache=True)
                logits, cache = out.logits[0], out.cache
        rest = visible.finish()
        if rest:
            yield rest

    def generate_batch(self, prompts: Sequence[Prompt | str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                       stop: Sequence[str] = ("\n",), batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
        """Greedy continuations of many prompts with one budget and one set of stop strings;
        see :meth:`generate_many`."""
        return self.generate_many(Request.each(prompts, max_new_tokens, stop), batch_size)

    def generate_many(self, requests: Sequence[Request], batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
        """The greedy continuation of every request, each cut at its own stop strings and
        token budget, the same text as :meth:`generate` gives one at a time.

        Prompts that share a cached prefix are decoded together, ``batch_size`` rows at a
        time (fewer when the rows are long): the prefix's key/value cache is computed once and
        shared by every row; each body is padded on its left, between prefix and body, so that
        all rows end together. A finished row leaves the batch at once."""
        check_batch_size(batch_size)
        requests = [check_request(r, i) for i, r in enumerate(requests)]
        bodies = [self._ids(r.prompt.body) for r in requests]
        results: list[str] = [""] * len(requests)
        costs = [len(b) + r.max_new_tokens for b, r in zip(bodies, requests)]
        for prefix, rows in _row_batches([r.prompt.prefix for r in requests], costs, batch_size):
            texts = self._decode_rows(prefix, [bodies[i] for i in rows], [requests[i] for i in rows])
            for i, text in zip(rows, texts):
                results[i] = text
        return results

    def _batch_cache(self, prefix: str, rows: int):
        """(prefix ids, a private copy of the prefix's cache repeated over ``rows``), or ([], None)."""
        if not prefix:
            return [], None
        prefix_ids, cache = self._prefix_cache(prefix)
        extra = cache.get_seq_length() - len(prefix_ids)
        if extra > 0:
            cache.crop(-extra)
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(rows)
        return prefix_ids, cache

    def _padded(self, prefix_len: int, bodies: Sequence[Sequence[int]]):
        """Input ids, attention mask (prefix, padding, body) and positions of right-aligned bodies."""
        import torch

        width = max(len(b) for b in bodies)
        pad = self.tokenizer.pad_token_id
        ids = [[pad] * (width - len(b)) + list(b) for b in bodies]
        mask = [[1] * prefix_len + [0] * (width - len(b)) + [1] * len(b) for b in bodies]
        positions = [[prefix_len] * (width - len(b)) + list(range(prefix_len, prefix_len + len(b))) for b in bodies]
        return (torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device),
                torch.tensor(positions, device=self.device))

    def _decode_rows(self, prefix: str, bodies: list[list[int]], requests: list[Request]) -> list[str]:
        import torch

        eos = self._eos_ids()
        new: list[list[int]] = [[] for _ in bodies]
        texts = [""] * len(bodies)
        with self._lock, torch.inference_mode():
            prefix_ids, cache = self._batch_cache(prefix, len(bodies))
            ids, mask, positions = self._padded(len(prefix_ids), bodies)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=1)
            logits, cache, position = out.logits[:, -1], out.cache, positions[:, -1:]
            active = list(range(len(bodies)))
            while active:
                tokens = logits.argmax(-1).tolist()
                keep = []
                for row, (i, token) in enumerate(zip(active, tokens)):
                    request = requests[i]
                    if token in eos:
                        continue
                    new[i].append(token)
                    self.tokens_generated += 1
                    full = self.tokenizer.decode(new[i], skip_special_tokens=True)
                    texts[i], stopped = cut_at_stop(full, request.stop)
                    if not stopped and len(new[i]) < request.max_new_tokens:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, position = mask[index], position[index]
                    active = [active[row] for row in keep]
                step = torch.tensor([[tokens[row]] for row in keep], device=self.device)
                mask = torch.cat([mask, mask.new_ones((len(keep), 1))], dim=1)
                position = position + 1
                out = self.model(input_ids=step, attention_mask=mask, position_ids=position, cache=cache,
                                 use_cache=True)
                logits, cache = out.logits[:, -1], out.cache
        return texts

    def score(self, prompt: Prompt | str, continuation: str) -> Score:
        """Teacher-forced score of ``continuation`` right after ``prompt`` (no space is added)."""
        import torch

        prompt = as_prompt(prompt)
        target = self._ids(self.plain(continuation)) if isinstance(continuation, str) else []
        if not target:
            raise ValueError("continuation is empty; give the text whose tokens should be scored")
        with self._lock, torch.inference_mode():
            logits, _, _ = self._forward(prompt, target)
            if not prompt.body:
                raise ValueError("prompt body is empty; put at least one token after the cached prefix")
        return _score(logits[-len(target) - 1:-1], target)

    def score_many(self, items: Sequence[tuple[Prompt | str, str]], batch_size: int = DEFAULT_BATCH_SIZE) -> list[Score]:
        """:meth:`score` of many (prompt, continuation) pairs, rows that share a cached prefix
        run together (laid out as in :meth:`generate_many`)."""
        import torch

        check_batch_size(batch_size)
        rows: list[tuple[Prompt, list[int], list[int]]] = []
        for i, (prompt, continuation) in enumerate(items):
            prompt = as_prompt(prompt)
            target = self._ids(self.plain(continuation)) if isinstance(continuation, str) else []
            if not target:
                raise ValueError(f"items[{i}]: the continuation is empty; give the text whose tokens should be scored")
            if not prompt.body:
                raise ValueError(f"items[{i}]: the prompt's body is empty; put at least one token after the cached prefix")
            rows.append((prompt, self._ids(prompt.body), target))
        scores: list[Score | None] = [None] * len(rows)
        costs = [len(body) + len(target) for _, body, target in rows]
        for prefix, chunk in _row_batches([prompt.prefix for prompt, _, _ in rows], costs, batch_size):
            keep = max(len(rows[i][2]) for i in chunk) + 1
            with self._lock, torch.inference_mode():
                prefix_ids, cache = self._batch_cache(prefix, len(chunk))
                ids, mask, positions = self._padded(len(prefix_ids), [rows[i][1] + rows[i][2] for i in chunk])
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                    use_cache=False, logits_to_keep=keep).logits
            for row, i in enumerate(chunk):
                target = rows[i][2]
                scores[i] = _score(logits[row, keep - len(target) - 1:keep - 1], target)
        return scores

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        ids.update(self._token_id(token) for token in (*END_OF_TURN, "<|endoftext|>"))
        ids.discard(None)
        return ids

    def _token_id(self, token: str) -> int | None:
        """The id of a special token if this tokenizer has it, else None."""
        tok = self.tokenizer
        token_id = tok.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tok.unk_token_id:
            return token_id
        return None

    def end_of_turn_id(self) -> int:
        """The token that ends an assistant turn in this model's chat template (else end of text)."""
        found = [i for i in map(self._token_id, END_OF_TURN) if i is not None]
        return found[0] if found else self.tokenizer.eos_token_id

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, device={self.device!r})"


def _score(steps, target: list[int]) -> Score:
    """The Score of ``target`` from the logits that predict each of its tokens."""
    import torch

    steps = steps.float()
    logprobs = torch.log_softmax(steps, dim=-1)
    gold = torch.tensor(target, device=steps.device)
    predicted = steps.argmax(-1)
    return Score(float(logprobs[torch.arange(len(target)), gold].sum()), float((predicted == gold).float().mean()),
                 tuple(int(t) for t in predicted), tuple(target))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """A generation as the caller gets it (cut at its first stop string, stripped), and
    whether a stop string came."""
    cut = _stop_at(text, stop)
    return (text if cut is None else text[:cut]).strip(), cut is not None


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
        final, self.stopped = cut_at_stop(self.full, self.stop)
        return final

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


_loaded: dict[tuple[str, str, str], LanguageModel] = {}
_load_lock = threading.Lock()


DTYPES = ("float32", "bfloat16")


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32",
               fresh: bool = False) -> LanguageModel:
    """Load a model by packaged short name or local path (cached per process), offline.

    The cached object is shared: every caller gets the same one, with whatever was written
    into its weights (consolidation batches, for one). ``fresh=True`` loads a separate
    copy from the model's files instead, with the base weights; it is not cached.
    ``dtype`` is ``"float32"`` (the default: consolidation writes float32 deltas and the
    measured answers are those) or ``"bfloat16"`` (about twice as fast on a CPU with
    AVX-512 BF16, answers not always equal; ``bench/throughput.py --dtype`` measures both).
    Raises :class:`memedit.errors.ModelPackageError` for an unknown name, a missing
    package or a bad checksum, with the command that fixes it.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(fresh, bool):
        raise TypeError(f"fresh must be True or False, got {fresh!r}")
    if fresh:
        with _load_lock:  # a packaged model may be converted on first use: once, by one thread
            folder = resolve(name_or_path)
        return _build(folder, name_or_path, device, dtype)
    key = (str(name_or_path), device, dtype)
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = _build(resolve(name_or_path), name_or_path, device, dtype)
        return _loaded[key]


def _build(folder: os.PathLike, name_or_path: str | os.PathLike, device: str, dtype: str) -> LanguageModel:
    """A new LanguageModel read from ``folder`` (never cached)."""
    import torch

    with quiet_hf(errors_only=False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return LanguageModel(model, tokenizer, name=str(name_or_path), device=device)
