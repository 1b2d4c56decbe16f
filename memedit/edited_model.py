"""EditedModel: a language model that answers through a memory of edits."""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, Sequence

from .memory import Memory
from .models import LanguageModel, Prompt, load_model

# name -> (module in memedit.retrievers, class): imported only when used.
ROUTER_CLASSES = {"ike": ("ike", "IKERouter"), "serac": ("serac", "SERACRouter"), "mello": ("mello", "MeLLoRouter"),
                  "pokemqa": ("pokemqa", "PokeMQARouter"), "graph": ("graph", "GraphRouter"),
                  "grace": ("grace", "GRACERouter")}
ROUTERS = tuple(ROUTER_CLASSES)
# The routers that work through prompts alone, so they also run on a black-box chat model.
PROMPT_ROUTERS = ("ike", "serac", "mello", "pokemqa", "graph")


def router_class(name: str) -> type:
    """The router class called ``name``."""
    if name not in ROUTER_CLASSES:
        raise ValueError(f"unknown router {name!r}; choose one of: {', '.join(ROUTERS)}")
    module, cls = ROUTER_CLASSES[name]
    return getattr(importlib.import_module(f"memedit.retrievers.{module}"), cls)


def make_router(name: str, model: LanguageModel, memory: Memory, **options: Any):
    """The router called ``name`` over ``model`` and ``memory``."""
    return router_class(name)(model, memory, **options)


def _carry_consolidated(model: Any, memory: Memory) -> None:
    """Apply the memory's consolidation batches to a local model; warn for a black box,
    which cannot carry them (those edits are then neither in its weights nor retrieved)."""
    if not memory.weight_batches():
        return
    if hasattr(model, "model") and hasattr(model, "tokenizer"):
        memory.apply_consolidated(model)
    else:
        warnings.warn(f"namespace {memory.namespace!r} has edits consolidated into a local model's weights; "
                      f"{type(model).__name__} cannot carry them, so those edits will not be applied "
                      f"(revert the batches to put them back on the retrieval path)", stacklevel=3)


class EditedModel:
    """``model`` answering through ``memory`` with a router (a name in ``ROUTERS``, or a
    router object). ``ask`` applies the edits; ``generate`` is the plain model."""

    def __init__(self, model: LanguageModel | str | os.PathLike, memory: Memory, router: Any = "ike", **options: Any) -> None:
        self.model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
        self.memory = memory
        _carry_consolidated(self.model, memory)
        self.router = make_router(router, self.model, memory, **options) if isinstance(router, str) else router

    def ask(self, question: str, history: Sequence[dict[str, str]] = ()):
        """Answer ``question`` with the edits that apply: an ``Answer(text, edits_used, route, trace)``.
        ``history`` is the conversation so far, as role/content dicts."""
        return self.router.answer(question, history)

    def stream(self, question: str, history: Sequence[dict[str, str]] = ()):
        """``ask``, as text pieces while the model writes: iterate the returned stream; its
        ``answer`` (the full ``Answer``) is set once it is read to the end."""
        return self.router.stream(question, history)

    def generate(self, prompt: Prompt | str, max_new_tokens: int = 32, stop: tuple[str, ...] = ("\n",)) -> str:
        """The unedited model's greedy continuation of ``prompt`` (raw text, no memory)."""
        return self.model.generate(prompt, max_new_tokens=max_new_tokens, stop=stop)

    def __repr__(self) -> str:
        return f"EditedModel({self.model.name!r}, router={self.router.name!r}, namespace={self.memory.namespace!r})"
