"""What memedit asks of the CPU: whether it multiplies bfloat16 natively, and one thread for
memedit's own small arithmetic.

Per question memedit multiplies a few vectors (numpy) and searches one query (faiss). Neither
gains from threads, and their pools (numpy's OpenBLAS, faiss's OpenMP and the OpenBLAS inside
faiss) keep spinning after each call beside torch's pool: on a 2-core machine that made
every question 2-4x slower (the scope detector's pass 26 -> 7 ms, retrieval 14 -> 4 ms,
`memedit scope eval` on the held-out wordings). :func:`limit_small_math` sets those pools to
one thread; torch's is left as it is. ``MEMEDIT_SMALL_MATH_THREADS=N`` sets another number,
``=0`` leaves them alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
SETTING = "MEMEDIT_SMALL_MATH_THREADS"
_done = False


def native_bfloat16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AMX, or AVX-512 BF16)."""
    import torch

    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def small_math_threads() -> int:
    """The number of threads for numpy's and faiss's pools from ``MEMEDIT_SMALL_MATH_THREADS``
    (default 1; 0: leave them alone)."""
    value = os.environ.get(SETTING, "1").strip() or "1"
    if not value.isdigit():
        raise ValueError(f"{SETTING}={value!r}: use a whole number of threads (0 leaves the pools as they are)")
    return int(value)


def limit_small_math() -> None:
    """Set numpy's and faiss's thread pools to :func:`small_math_threads` (once per process)."""
    global _done
    if _done:
        return
    _done = True
    threads = small_math_threads()
    if threads == 0:
        return
    import faiss  # noqa: F401  (their pools must be loaded to be found)
    import numpy  # noqa: F401

    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; numpy's pool then keeps its threads
        log.warning("threadpoolctl is not installed: numpy's BLAS keeps its threads (pip install threadpoolctl)")
        return
    # Every pool but torch's (its OpenMP, whose threads are the model's). faiss.omp_set_num_threads
    # is not used: where torch was imported first it reaches torch's pool.
    for lib in ThreadpoolController().lib_controllers:
        if "torch" not in Path(lib.filepath).parts:
            lib.set_num_threads(threads)
