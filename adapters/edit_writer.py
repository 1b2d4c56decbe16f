"""The server's one edit writer: every ``POST /v1/edits`` is written on a single thread.

Requests that arrive while a write is under way wait in a queue; the writer then takes
them together, embeds all their statements in one encoder batch and writes each request
in its own transaction (all or none, as ``Memory.add_many``), so a request's error never
touches another's edits. One thread instead of one per request means no busy waits on
SQLite's write lock and no dozens of threads contending with the model's worker for the
CPU and the GIL.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from memedit.edit import Edit
from memedit.memory import Memory

MAX_GROUP = 64  # requests taken together at most


class EditWriter:
    """Writes edits for every namespace on one thread; ``view(namespace)`` gives the memory."""

    def __init__(self, view: Callable[[str], Memory], max_group: int = MAX_GROUP) -> None:
        self._view, self._max_group = view, max_group
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="memedit-edits", daemon=True)
        self._thread.start()

    async def add(self, namespace: str, edits: Sequence[Edit]) -> list[Any]:
        """Store ``edits`` in ``namespace`` (one transaction); the stored edits."""
        done: Future = Future()
        self._queue.put((namespace, list(edits), done))
        return await asyncio.wrap_future(done)

    def close(self) -> None:
        """Finish the queued writes, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = [first], False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._write(group)
            if stop:
                return

    def _write(self, group: list[tuple[str, list[Edit], Future]]) -> None:
        vectors = None
        try:
            embedder = self._view(group[0][0]).embedder
            vectors = embedder.encode([e.statement for _, edits, _ in group for e in edits])
        except Exception:  # noqa: BLE001 - each request then embeds (and fails) on its own
            vectors = None
        start = 0
        for namespace, edits, done in group:
            rows = None if vectors is None else vectors[start:start + len(edits)]
            start += len(edits)
            try:
                done.set_result(self._view(namespace).add_many(edits, vectors=rows))
            except BaseException as err:  # noqa: BLE001 - the request's own error, raised in its handler
                done.set_exception(err)
