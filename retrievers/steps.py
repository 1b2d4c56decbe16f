"""Answers as step machines, and a scheduler that runs many of them together.

A router's answer to one question is a generator (a *step machine*): it yields each
:class:`~memedit.models.Request` it needs generated and is sent back the text; its return
value is the result. :func:`run_one` drives one machine with one generation at a time;
:func:`run_many` advances many machines together, so the generations they need at the
same moment go to the model as one batch (``generate_many``). A machine that raises fails
alone: the others finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, TypeVar

from memedit.models import DEFAULT_BATCH_SIZE, Request, check_batch_size, check_request

T = TypeVar("T")
Steps = Generator[Request, str, T]


@dataclass
class Failed:
    """A machine that raised: the error, kept so that the caller can report it."""

    error: BaseException

    def __str__(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


def done(value: T) -> Steps[T]:
    """A step machine that needs no generation and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator


def counted(steps: Steps[T], calls: list[int]) -> Steps[T]:
    """``steps`` unchanged, adding one to ``calls[0]`` for each generation it asks for."""
    try:
        request = next(steps)
        while True:
            calls[0] += 1
            try:
                text = yield request
            except Exception as error:  # noqa: BLE001 - the machine decides what a failed generation means
                request = steps.throw(error)
            else:
                request = steps.send(text)
    except StopIteration as finished:
        return finished.value


def run_one(model: Any, steps: Steps[T]) -> T:
    """Drive one machine, generating each request as it comes; its errors propagate."""
    try:
        request = next(steps)
        while True:
            text = model.generate(request.prompt, max_new_tokens=request.max_new_tokens, stop=request.stop)
            request = steps.send(text)
    except StopIteration as finished:
        return finished.value


def run_many(model: Any, machines: Iterable[Steps[T]], batch_size: int = DEFAULT_BATCH_SIZE,
             on_done: Callable[[int, T | Failed], None] | None = None) -> list[T | Failed]:
    """Drive ``machines`` together, at most ``batch_size`` at a time: each round, every live
    machine's pending request is generated in one ``model.generate_many`` call. Returns
    each machine's result (or :class:`Failed`) in order; ``on_done(index, result)`` is called
    as each one finishes, in the order they finish."""
    check_batch_size(batch_size)
    source = enumerate(machines)
    results: dict[int, T | Failed] = {}
    pending: dict[int, tuple[Steps[T], Request]] = {}

    def settle(index: int, machine: Steps[T], advance: Callable[[], Request]) -> None:
        try:
            pending[index] = (machine, check_request(advance(), index))
            return
        except StopIteration as finished:
            result: T | Failed = finished.value
        except Exception as error:  # noqa: BLE001 - a failing machine fails alone
            machine.close()
            result = Failed(error)
        results[index] = result
        if on_done is not None:
            on_done(index, result)

    def refill() -> None:
        for index, machine in source:
            settle(index, machine, lambda m=machine: next(m))
            if len(pending) >= batch_size:
                return

    refill()
    while pending:
        order = list(pending)
        for index, text in zip(order, _generate(model, [pending[i][1] for i in order], batch_size)):
            machine = pending.pop(index)[0]
            if isinstance(text, Exception):
                settle(index, machine, lambda m=machine, e=text: m.throw(e))
            else:
                settle(index, machine, lambda m=machine, t=text: m.send(t))
        refill()
    return [results[i] for i in sorted(results)]


def _generate(model: Any, requests: list[Request], batch_size: int) -> list[str | Exception]:
    """The texts of a batch; when the batch fails, each request alone, so that only the
    request that fails gets its error."""
    try:
        return model.generate_many(requests, batch_size=batch_size)
    except Exception:  # noqa: BLE001 - isolate the request that fails
        texts: list[str | Exception] = []
        for request in requests:
            try:
                texts.append(model.generate_many([request], batch_size=1)[0])
            except Exception as error:  # noqa: BLE001
                texts.append(error)
        return texts
