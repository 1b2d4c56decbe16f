"""The one model of a memedit server, run off the event loop one job at a time.

Every job that touches the model (an answer, a stream, a consolidation) runs on a single
worker thread while holding the model's own lock (when it has one), so generations are
serialized and the event loop stays free for the edits endpoints. The model's own time
(its ``generate``/``stream``/``score`` calls) is measured per job, so the server can tell
its own overhead apart from the model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Generator, TypeVar

T = TypeVar("T")
TIMED = ("generate", "generate_many", "generate_batch", "score", "score_many")


@dataclass
class Timing:
    """Seconds a job waited for the worker, spent inside the model's calls, and waited
    after it finished for the event loop to take up its result (busy with other requests)."""

    queued: float = 0.0
    generation: float = 0.0
    resumed: float = 0.0
    finished: float = 0.0  # perf_counter() when the job ended


class Finished(Exception):
    """Raised inside a streaming job that the client stopped reading."""


class ModelWorker:
    """Runs jobs on ``model`` one at a time on one thread, timing the model's calls."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memedit-model")
        self._local = threading.local()
        self._pending = 0  # jobs submitted and not finished
        self._pending_lock = threading.Lock()
        # The model's methods are wrapped on the instance while the worker lives (close() undoes it).
        self._saved = {name: model.__dict__.get(name) for name in (*TIMED, "stream") if callable(getattr(model, name, None))}
        for name in self._saved:
            wrap = self._timed_stream if name == "stream" else self._timed
            setattr(model, name, wrap(getattr(model, name)))

    # -- timing the model's calls (only the outermost call of a nest counts) -------------
    def _clock(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        local = self._local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            local.depth = depth
            if depth == 0:
                local.seconds = getattr(local, "seconds", 0.0) + time.perf_counter() - start

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        return functools.wraps(method)(lambda *a, **k: self._clock(method, *a, **k))

    def _timed_stream(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def stream(*args: Any, **kwargs: Any):
            pieces = iter(self._clock(method, *args, **kwargs))
            while True:
                try:
                    piece = self._clock(next, pieces)
                except StopIteration:
                    return
                yield piece
        return stream

    @property
    def busy(self) -> bool:
        """Whether a job is running or waiting: a job submitted now would wait its turn."""
        return self._pending > 0

    def _count(self, step: int) -> None:
        with self._pending_lock:
            self._pending += step

    def _job(self, job: Callable[[], T], submitted: float) -> tuple[T, Timing]:
        timing = Timing(queued=time.perf_counter() - submitted)
        self._local.seconds = 0.0
        lock = getattr(self.model, "_lock", None) or contextlib.nullcontext()
        try:
            with lock:
                return job(), timing
        finally:
            timing.generation = self._local.seconds
            timing.finished = time.perf_counter()
            self._count(-1)

    # -- running jobs -----------------------------------------------------------------------
    async def run(self, job: Callable[[], T]) -> tuple[T, Timing]:
        """Run ``job()`` on the worker; its result and timing."""
        loop = asyncio.get_running_loop()
        self._count(1)
        result, timing = await loop.run_in_executor(self._executor, self._job, job, time.perf_counter())
        timing.resumed = time.perf_counter() - timing.finished
        return result, timing

    async def stream(self, job: Callable[[], Generator[str, None, T]]) -> AsyncIterator[tuple[str, Any]]:
        """Run the generator ``job()`` on the worker and yield ``("piece", text)`` as it
        writes, then ``("done", (its return value, timing))``, or ``("error", exception)``.
        If the consumer stops early (a client that went away), the job stops at its next piece."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731

        def drain() -> Any:
            pieces = job()
            while True:
                if stop.is_set():
                    pieces.close()
                    raise Finished()
                try:
                    put(("piece", next(pieces)))
                except StopIteration as end:
                    return end.value

        def run() -> None:
            try:
                put(("done", self._job(drain, submitted)))
            except Finished:
                pass
            except Exception as error:  # handed to the consumer, which answers with it
                put(("error", error))

        submitted = time.perf_counter()
        self._count(1)
        loop.run_in_executor(self._executor, run)
        try:
            while True:
                kind, value = await queue.get()
                yield kind, value
                if kind != "piece":
                    break
        finally:
            stop.set()

    def close(self) -> None:
        """Stop taking jobs and give the model its own methods back."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for name, before in self._saved.items():
            if before is None:
                vars(self.model).pop(name, None)
            else:
                setattr(self.model, name, before)
