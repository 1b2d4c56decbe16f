"""memedit/cpu.py: one thread for memedit's small arithmetic (numpy's and faiss's pools), torch's
pool untouched, and bfloat16 products where the CPU has them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Reports each pool's threads before memedit is used and after a Memory is opened.
PROBE = r"""
import json, sys, tempfile, torch, numpy, faiss
from threadpoolctl import threadpool_info
def pools():
    return {(p["internal_api"], "faiss" if "faiss" in p["filepath"] else "torch" if "torch" in p["filepath"] else "numpy"):
            p["num_threads"] for p in threadpool_info()}
before = pools(), torch.get_num_threads()
from memedit import Memory
with tempfile.TemporaryDirectory() as tmp, Memory(tmp + "/m.db") as memory:
    memory.add({"statement": "Marisol Quenby works for the Lisbon Botanical Institute."})
    after = pools(), torch.get_num_threads()
print(json.dumps({"before": [list(map(list, before[0].items())), before[1]], "after": [list(map(list, after[0].items())), after[1]]}))
"""


def probe(**env: str) -> tuple[dict, int, dict, int]:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", **env})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    (b, bt), (a, at) = got["before"], got["after"]
    return {tuple(k): v for k, v in b}, bt, {tuple(k): v for k, v in a}, at


def test_a_memory_in_use_gives_numpy_and_faiss_one_thread_and_leaves_torch_alone():
    before, torch_before, after, torch_after = probe()
    numpy_blas, faiss_omp = ("openblas", "numpy"), ("openmp", "faiss")
    # the pools start with the threads asked for (OpenBLAS no more than the machine's cores)
    assert before[faiss_omp] == 3 and before[numpy_blas] == min(3, os.cpu_count() or 1)
    assert after[numpy_blas] == 1 and after[faiss_omp] == 1
    assert torch_after == torch_before and after[("openmp", "torch")] == before[("openmp", "torch")]


def test_the_setting_picks_another_number_or_leaves_the_pools_alone():
    _, _, after, _ = probe(MEMEDIT_SMALL_MATH_THREADS="2")
    assert after[("openblas", "numpy")] == min(2, os.cpu_count() or 1) and after[("openmp", "faiss")] == 2
    before, _, after, _ = probe(MEMEDIT_SMALL_MATH_THREADS="0")
    assert after == before


def test_a_bad_setting_is_refused_with_the_fix(monkeypatch):
    from memedit.cpu import small_math_threads

    monkeypatch.setenv("MEMEDIT_SMALL_MATH_THREADS", "all")
    with pytest.raises(ValueError, match="MEMEDIT_SMALL_MATH_THREADS='all': use a whole number of threads"):
        small_math_threads()


def test_the_embedder_multiplies_in_bfloat16_exactly_where_the_cpu_does(monkeypatch):
    import torch

    from memedit.cpu import native_bfloat16
    from memedit.embeddings import matmul_dtype

    monkeypatch.delenv("MEMEDIT_EMBED_PRECISION", raising=False)
    assert matmul_dtype() is (torch.bfloat16 if native_bfloat16() else torch.float32)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert matmul_dtype() is torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert matmul_dtype() is torch.bfloat16
