"""Activation tracing: the requests an editor writes, their token positions, and reading a
module's input or output, or adding a vector to its output, at the subject's last token
(with the hooks of :mod:`memedit.hooks`).

Every editor works on the same positions: the last token of the subject inside each of
an edit's *forms*: the cloze prompt under a few neutral context prefixes (so the edit does
not hang on the prompt starting the text), and the same prompt asked as a question through
the routers' base chat prompt (the path an edit is answered on once it has left retrieval),
where the target starts the assistant's reply. The prefixes are our own fixed sentences,
not sampled from the model, so an edit is reproducible bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager, Sequence

import torch

from memedit import hooks
from memedit.edit import Edit, fill_prompt
from memedit.models import LanguageModel, Prompt
from memedit.retrievers.base import base_prompt

# "{}" is where the filled cloze prompt goes.
CONTEXTS = ("{}", "Here is a fact. {}", "I read this in the news today. {}")
ESSENCE = "{} is a"  # the subject's own description, kept close to the original (the KL term)
# Other facts about a subject, the relation asked before the subject: an edit must leave
# these prompts' keys where they were. (With the subject first, the subject's last token
# has not seen the relation yet, so its key is the same for every such prompt, the
# edit's own included: nothing can tell those apart.) Our own list; those sharing a
# content word with the edit's prompt are left out, as they may ask its very fact.
OTHER_FACTS = (
    "The gender of {} is", "The occupation of {} is", "The country of {} is", "The native language of {} is",
    "The religion of {} is", "The founder of {} is", "The sport played by {} is", "The employer of {} is",
    "The nationality of {} is", "The place of birth of {} is", "The capital of {} is", "The genre of {} is",
    "The spouse of {} is", "The position held by {} is", "The field of work of {} is", "The location of {} is",
)


@dataclass(frozen=True)
class Request:
    """One edit as the weight editors see it: cloze ``prompt`` with ``{}``, ``subject``, ``target``."""

    edit_id: str
    prompt: str
    subject: str
    target: str

    @classmethod
    def from_edit(cls, edit: Edit) -> "Request":
        return cls(edit.id or "", edit.prompt, edit.subject, edit.target)

    @property
    def text(self) -> str:
        return fill_prompt(self.prompt, self.subject)

    @property
    def continuation(self) -> str:
        """The target as the continuation of the prompt (with the space between them)."""
        return self.target if self.text.endswith((" ", "\n")) else " " + self.target


def other_facts(request: Request, templates: Sequence[str] = OTHER_FACTS) -> list[Request]:
    """The request's subject under each of ``templates`` that shares no content word with
    its prompt (crudely stemmed), as requests of their own."""
    from memedit.retrievers.entities import FUNCTION_WORDS, name_tokens, stem

    def words(prompt: str) -> set[str]:
        return {stem(t) for t in name_tokens(prompt.replace("{}", " ")) if t not in FUNCTION_WORDS}

    own = words(request.prompt)
    return [Request(request.edit_id, t, request.subject, request.target) for t in templates if not words(t) & own]


def encode(lm: LanguageModel, text: str) -> list[int]:
    """Token ids of raw text, the way ``LanguageModel.score`` tokenises a prompt."""
    return lm._ids(lm.plain(text))


def subject_tokens(lm: LanguageModel, context: str, request: Request) -> tuple[list[int], int]:
    """(ids of the context-wrapped prompt, index of the subject's last token)."""
    head, _, _ = context.partition("{}")
    start = len(head) + request.prompt.index("{}")
    text = context.replace("{}", request.text)
    ids = encode(lm, text)
    last = len(encode(lm, text[:start + len(request.subject)])) - 1
    return ids, min(max(last, 0), len(ids) - 1)


def chat_prompt(lm: LanguageModel, question: str) -> Prompt:
    """``question`` as the routers ask it when no edit is in scope (``Router.base_prompt``
    under the default system prompt, without history), ready for the reply."""
    return base_prompt(lm, question)


def chat_tokens(lm: LanguageModel, request: Request) -> tuple[list[int], int]:
    """(ids of the request's prompt asked through :func:`chat_prompt`, index of the subject's last token)."""
    text = chat_prompt(lm, request.text).body
    question = lm.plain(request.text)
    start = text.rfind(question)
    if start < 0:  # the template changed the question's text: no subject position to trust
        raise ValueError(f"edit {request.edit_id}: the chat template does not keep the question's text; "
                         "consolidate with chat_form=False")
    ids = lm.prompt_ids(text)
    end = start + request.prompt.index("{}") + len(request.subject)
    last = len(lm.prompt_ids(text[:end])) - 1
    return ids, min(max(last, 0), len(ids) - 1)


@dataclass(frozen=True)
class Form:
    """One text an edit is written under: its token ``ids``, the subject's ``last`` token
    there, and the ``target`` ids that continue it."""

    ids: list[int]
    last: int
    target: list[int]


def forms(lm: LanguageModel, request: Request, contexts: Sequence[str] = CONTEXTS, chat: bool = True) -> list[Form]:
    """The cloze prompt under each of ``contexts``, then (``chat``) the chat question, whose
    reply starts with the target (no leading space)."""
    target = encode(lm, request.continuation)
    out = [Form(*subject_tokens(lm, context, request), target) for context in contexts]
    if chat:
        out.append(Form(*chat_tokens(lm, request), encode(lm, request.target)))
    return out


def reliability(lm: LanguageModel, request: Request) -> tuple[float, float]:
    """Shares of the target's tokens that are the greedy choice (cloze, chat): after the cloze
    prompt, and at the start of the reply when the prompt is asked as a chat question."""
    cloze, chat = lm.score_many([(request.text, request.continuation), (chat_prompt(lm, request.text), request.target)])
    return cloze.token_accuracy, chat.token_accuracy


def essence_tokens(lm: LanguageModel, request: Request) -> tuple[list[int], int]:
    """(ids of ``"<subject> is a"``, index of the subject's last token)."""
    essence = Request(request.edit_id, ESSENCE, request.subject, request.target)
    return subject_tokens(lm, "{}", essence)


def pad(lm: LanguageModel, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` on the model's device."""
    width = max(len(r) for r in rows)
    pad_id = lm.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids.to(lm.device), mask.to(lm.device)


def add_to_output(module: torch.nn.Module, rows: Sequence[int], positions: Sequence[int],
                  vectors: torch.Tensor) -> ContextManager[None]:
    """Add ``vectors[j]`` to the module's output at (``rows[j]``, ``positions[j]``) on every pass."""
    index_rows = torch.tensor(list(rows))
    index_pos = torch.tensor(list(positions))

    def added(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        out[index_rows, index_pos] = out[index_rows, index_pos] + vectors.to(hidden.dtype)
        return out

    return hooks.replace_output(module, added)


def run_until(lm: LanguageModel, ids: torch.Tensor, mask: torch.Tensor, module: torch.nn.Module, positions=None,
              cache=None) -> None:
    """Run the model on a batch only as far as ``module`` (hooks on it and below see the pass),
    at ``positions`` after a key/value ``cache`` where given."""
    extra = {} if cache is None else {"cache": cache, "position_ids": positions}
    hooks.run_until(module, lambda: lm.model(input_ids=ids, attention_mask=mask, use_cache=False, **extra))


def at_subject(lm: LanguageModel, requests: Sequence[Request], module: torch.nn.Module, which: str,
               contexts: Sequence[str] = CONTEXTS, chat: bool = False, batch_size: int = 16,
               mean: bool = True) -> torch.Tensor:
    """The module's ``which`` ("input" or "output") at each request's subject's last token
    in each of its :func:`forms` (``contexts``, and the chat question when ``chat``), as
    float32: averaged over the forms (one row per request), or with ``mean=False`` one
    row per form (requests × forms × width)."""
    rows, where = [], []
    for request in requests:
        for form in forms(lm, request, contexts, chat):
            rows.append(form.ids)
            where.append(form.last)
    reader = hooks.read_input if which == "input" else hooks.read_output
    picked = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids, mask = pad(lm, chunk)
            with reader(module) as seen:
                run_until(lm, ids, mask, module)
            states = seen[0]
            picked.append(states[torch.arange(len(chunk)), torch.tensor(where[start:start + batch_size])].float())
    states = torch.cat(picked).view(len(requests), len(contexts) + int(chat), -1)
    return states.mean(1) if mean else states
