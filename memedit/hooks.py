"""Hooks on a torch module's forward pass: read its input or output, replace its output, or
end the pass once the module is reached. Each is a context manager that removes its hook on
exit. The weight editors (``param_editors``) and GRACE (``retrievers``) both use them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states in a module's output (a decoder block returns a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def on_forward(module: torch.nn.Module, hook: Callable[..., Any], before: bool = False,
               with_kwargs: bool = False) -> Iterator[None]:
    """``hook`` runs on every forward pass of ``module`` inside the block: before it, as
    ``hook(module, args)``, or after it, as ``hook(module, args, output)`` (with
    ``with_kwargs``, the keyword arguments come after ``args``). What it returns replaces
    the input or output; None keeps it."""
    register = module.register_forward_pre_hook if before else module.register_forward_hook
    handle = register(hook, with_kwargs=with_kwargs)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def read_input(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the module's first input of every forward pass while the block runs (detached)."""
    seen: list[torch.Tensor] = []
    with on_forward(module, lambda _m, args: seen.append(args[0].detach()), before=True):
        yield seen


@contextmanager
def read_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the module's output (hidden states) of every forward pass while the block runs (detached)."""
    seen: list[torch.Tensor] = []
    with on_forward(module, lambda _m, _a, out: seen.append(hidden_of(out).detach())):
        yield seen


@contextmanager
def replace_output(module: torch.nn.Module, replace: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """On every pass, the module's hidden output becomes ``replace(hidden)`` (None keeps it);
    the rest of a tuple output is kept."""
    def hook(_module, _args, output):
        new = replace(hidden_of(output))
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    with on_forward(module, hook):
        yield


class Stop(Exception):
    """Raised by the hook of ``run_until`` to end a forward pass early."""


def run_until(module: torch.nn.Module, forward: Callable[[], Any], before: bool = False) -> None:
    """Call ``forward()`` (a pass of the model that holds ``module``), ending it as soon as
    ``module`` has run, or, with ``before``, as soon as it is reached: the layers above are
    not run. Hooks put on ``module`` (or below it) before this call see the pass."""
    def stop(*_):
        raise Stop

    with on_forward(module, stop, before=before):
        try:
            forward()
        except Stop:
            pass
