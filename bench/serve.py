"""Serving: ``memedit serve`` under load, after a kill -9, and against a namespace fuzz.

Run from the repository root (localhost only; the server is a subprocess on 127.0.0.1):

    python bench/serve.py                      # the issue's numbers: 50 clients for 60 s
    python bench/serve.py --seconds 20         # shorter
    python bench/serve.py --quiet 30 --quiet-only   # only part 0, memedit's overhead alone

The server runs with ``OMP_NUM_THREADS=1`` unless that is set otherwise for this script
(the clients need the other core).

Three parts, each printed:

0. Alone: ``--quiet`` questions one at a time (memedit's overhead without contention),
   then edits added one at a time while a long answer is generated; the questions again
   on a second server whose embedder runs in float32 (the baseline), unless ``--no-baseline``.
1. Load: ``--clients`` concurrent clients for ``--seconds``, each with its own key and
   namespace, adding edits and (a share ``--ask-share`` of their requests) asking
   questions about their own edits, non-streaming, ``--max-tokens`` each, on SmolLM2.
   Afterwards every acknowledged edit is read back (lost ones counted); 5xx counted;
   p50/p95 latency of ``POST /v1/edits`` and ``POST /v1/chat/completions`` as the client
   sees it; and memedit's own overhead per chat (the server's time for the request minus
   the model's generation and the wait for the model, from the reply's ``memedit.timing``).
   A question that waits for the model is decided ahead while it waits (``memedit serve``'s
   default); the same load then runs on a second server with ``--no-warm`` (the baseline,
   each question decided only on its turn), unless ``--no-baseline``.
2. Crash: ``--crash-writers`` clients add edits; the server gets kill -9 mid-way; it is
   restarted on the same database and every acknowledged edit must be there.
3. Fuzz: ``--fuzz`` requests with keys of random namespaces (list, search, get, history
   and retract of random ids from every namespace): any edit or event of another namespace
   in a reply, or a 2xx on another namespace's id, counts as a cross-namespace read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from memedit.embeddings import matmul_dtype
from memedit.keys import KeyRing

OVERHEAD_TARGET_MS = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(db: str, port: int, max_tokens: int, log: Path, precision: str | None = None,
                 warm: bool = True) -> subprocess.Popen:
    """``memedit serve`` on 127.0.0.1:port, once it answers (``precision``: the embedder's,
    else the default; ``warm=False``: ``--no-warm``)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if precision:
        env["MEMEDIT_EMBED_PRECISION"] = precision
    process = subprocess.Popen([sys.executable, "-m", "memedit.cli", "--db", db, "serve", "--host", "127.0.0.1",
                                "--port", str(port), "--max-tokens", str(max_tokens), *([] if warm else ["--no-warm"])],
                               env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"memedit serve exited ({process.returncode}); see {log}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return process
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"memedit serve did not start in 300 s; see {log}")
            time.sleep(0.3)


def stop_server(process: subprocess.Popen) -> None:
    """Ask the server to stop (SIGINT); kill it if it has not within 30 s."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Tally:
    """What the clients saw."""

    def __init__(self) -> None:
        self.acked: dict[str, set[str]] = {}
        self.latency: dict[str, list[float]] = {"edits": [], "chat": []}
        self.overhead: list[float] = []
        self.generation: list[float] = []
        self.resumed: list[float] = []
        self.server_errors = 0
        self.other_errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.other_errors[what] = self.other_errors.get(what, 0) + 1


async def add_edit(http: httpx.AsyncClient, namespace: str, n: int, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        response = await http.post("/v1/edits", json={"statement": f"Fact {n} of {namespace}: the code word is w{n}x."})
    except httpx.HTTPError as err:
        tally.error(type(err).__name__)
        return
    tally.latency["edits"].append(time.perf_counter() - started)
    if response.status_code == 200:
        tally.acked.setdefault(namespace, set()).add(response.json()["id"])
    elif response.status_code >= 500:
        tally.server_errors += 1
    else:
        tally.error(f"edits {response.status_code}")


WORDINGS = ("What is the code word of fact {fact} of {namespace}?", "Tell me the code word of fact {fact} of {namespace}.",
            "Which code word does fact {fact} of {namespace} have?", "fact {fact} of {namespace}: what is its code word?",
            "What code word was given to fact {fact} of {namespace}?")


async def ask(http: httpx.AsyncClient, namespace: str, n: int, max_tokens: int, tally: Tally, wording: int = 0) -> None:
    """Ask about fact ``n - 1``; ``wording`` picks one of the ``WORDINGS`` (a question never
    seen before costs its embedding; a repeated one is served from the detector's cache)."""
    question = WORDINGS[wording % len(WORDINGS)].format(fact=max(n - 1, 0), namespace=namespace)
    body = {"model": "smollm2-135m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    try:
        response = await http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as err:
        tally.error(type(err).__name__)
        return
    tally.latency["chat"].append(time.perf_counter() - started)
    if response.status_code == 200:
        timing = response.json()["memedit"]["timing"]
        tally.overhead.append(timing["overhead_ms"])
        tally.generation.append(timing["generation_ms"])
        tally.resumed.append(timing.get("resumed_ms", 0.0))
    elif response.status_code >= 500:
        tally.server_errors += 1
    else:
        tally.error(f"chat {response.status_code}")


async def client(url: str, key: str, namespace: str, until: float, ask_share: float, max_tokens: int,
                 tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
        n = 0
        while time.monotonic() < until:
            if n and rng.random() < ask_share:
                await ask(http, namespace, n, max_tokens, tally)
            else:
                await add_edit(http, namespace, n, tally)
            n += 1


async def alone(url: str, key: str, namespace: str, count: int, max_tokens: int) -> Tally:
    """A warm-up edit and question, then ``count`` questions one after another."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
        await add_edit(http, namespace, 0, Tally())
        await ask(http, namespace, 1, max_tokens, Tally())
        tally = Tally()
        for n in range(count):
            await add_edit(http, namespace, 200 + n, Tally())
        await ask(http, namespace, 1, max_tokens, Tally())  # the memory's new edits are indexed here
        for n in range(count):  # each question asked once: no cache helps
            await ask(http, namespace, 201 + n, max_tokens, tally, wording=n)
        # Edits added one at a time while one long answer is being generated.
        long = asyncio.create_task(ask(http, namespace, 1, 64, Tally()))
        await asyncio.sleep(0.5)
        during = Tally()
        while not long.done() and len(during.latency["edits"]) < 20:
            await add_edit(http, namespace, 100 + len(during.latency["edits"]), during)
        await long
        tally.latency["edits"] = during.latency["edits"]
    return tally


async def read_back(url: str, keys: dict[str, str]) -> dict[str, set[str]]:
    """Every edit id of every namespace, whatever its status."""
    found: dict[str, set[str]] = {}
    for namespace, key in keys.items():
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            ids, offset = set(), 0
            while True:
                page = (await http.get("/v1/edits", params={"status": "all", "limit": 1000, "offset": offset})).json()["data"]
                ids.update(e["id"] for e in page)
                offset += len(page)
                if len(page) < 1000:
                    break
            found[namespace] = ids
    return found


def lost(acked: dict[str, set[str]], found: dict[str, set[str]]) -> int:
    return sum(len(ids - found.get(ns, set())) for ns, ids in acked.items())


async def load(url: str, keys: dict[str, str], args) -> Tally:
    tally = Tally()
    until = time.monotonic() + args.seconds
    await asyncio.gather(*(client(url, key, ns, until, args.ask_share, args.max_tokens, tally, i)
                           for i, (ns, key) in enumerate(keys.items())))
    return tally


async def crash(url: str, keys: dict[str, str], process: subprocess.Popen, args) -> Tally:
    """Writers add edits; the server is killed with SIGKILL while they write."""
    tally = Tally()
    until = time.monotonic() + args.crash_after + 0.5  # writers go on briefly against the dead server
    writers = [asyncio.create_task(client(url, keys[ns], ns, until, 0.0, 1, tally, i))
               for i, ns in enumerate(list(keys)[:args.crash_writers])]
    await asyncio.sleep(args.crash_after)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    await asyncio.gather(*writers, return_exceptions=True)
    return tally


async def fuzz(url: str, keys: dict[str, str], ids: dict[str, list[str]], count: int, seed: int) -> dict[str, int]:
    """``count`` requests with keys of random namespaces; replies checked for other namespaces."""
    rng = random.Random(seed)
    every = [(ns, i) for ns, some in ids.items() for i in some]
    out = {"requests": 0, "cross_reads": 0, "server_errors": 0}
    clients = {ns: httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {k}"}, timeout=120) for ns, k in keys.items()}
    try:
        for _ in range(count):
            ns = rng.choice(list(keys))
            op = rng.choice(["list", "search", "get", "history", "edit-history", "retract"])
            owner, edit_id = rng.choice([e for e in every if e[0] != ns] if op == "retract" else every)
            http = clients[ns]
            if op == "list":
                response = await http.get("/v1/edits", params={"status": "all", "limit": 50})
            elif op == "search":
                response = await http.get("/v1/edits", params={"q": f"code word of {owner}", "k": 10})
            elif op == "get":
                response = await http.get(f"/v1/edits/{edit_id}")
            elif op == "history":
                response = await http.get("/v1/history", params={"limit": 50})
            elif op == "edit-history":
                response = await http.get(f"/v1/edits/{edit_id}/history")
            else:  # another namespace's edit
                response = await http.delete(f"/v1/edits/{edit_id}")
            out["requests"] += 1
            if response.status_code >= 500:
                out["server_errors"] += 1
            if response.status_code // 100 != 2:
                continue
            if op in ("get", "edit-history", "retract") and owner != ns:
                out["cross_reads"] += 1  # another namespace's id answered
                continue
            body = response.json()
            rows = body["data"] if "data" in body else [body]
            out["cross_reads"] += sum(1 for row in rows if row.get("namespace") != ns)
    finally:
        for http in clients.values():
            await http.aclose()
    return out


def baseline_alone(tmp: str, args: argparse.Namespace) -> None:
    """Part 0 again on a second server (its own database) whose embedder multiplies in float32."""
    (db, keys), port = keyed_server(tmp, "baseline", 1), free_port()
    process = start_server(db, port, args.max_tokens, Path(tmp) / "baseline.log", precision="float32")
    try:
        base = asyncio.run(alone(f"http://127.0.0.1:{port}", keys["client-00"], "client-00", args.quiet, args.max_tokens))
    finally:
        stop_server(process)
    print(f"   baseline, the same part on a server whose embedder multiplies in float32 (MEMEDIT_EMBED_PRECISION="
          f"float32, the default before bfloat16): memedit overhead p50 {statistics.median(base.overhead):.1f} ms")


def keyed_server(tmp: str, name: str, clients: int) -> tuple[str, dict[str, str]]:
    """A fresh database in ``tmp`` with one key per client namespace: (database, keys)."""
    db = str(Path(tmp) / f"{name}.db")
    ring = KeyRing(db)
    keys = {f"client-{i:02d}": ring.create(f"client-{i:02d}")[0] for i in range(clients)}
    ring.close()
    return db, keys


def overhead_line(tally: Tally) -> str:
    return f"p50 {statistics.median(tally.overhead):.1f} ms, p95 {pct(tally.overhead, 0.95):.1f} ms"


def baseline_load(tmp: str, args: argparse.Namespace) -> None:
    """Part 1's load again on a second server (its own database) run with ``--no-warm``."""
    db, keys = keyed_server(tmp, "baseline-load", args.clients)
    port = free_port()
    process = start_server(db, port, args.max_tokens, Path(tmp) / "baseline-load.log", warm=False)
    try:
        tally = asyncio.run(load(f"http://127.0.0.1:{port}", keys, args))
    finally:
        stop_server(process)
    if tally.overhead:
        print(f"   baseline, the same load on a server that decides each question only on its turn on the model "
              f"(memedit serve --no-warm, the default before): memedit overhead per chat {overhead_line(tally)} "
              f"({len(tally.overhead)} chats)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load run (default 60)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients, one namespace each (default 50)")
    parser.add_argument("--ask-share", type=float, default=0.1, help="share of a client's requests that are questions (default 0.1)")
    parser.add_argument("--max-tokens", type=int, default=8, help="answer budget of each question (default 8)")
    parser.add_argument("--quiet", type=int, default=10, help="questions asked one at a time before the load (default 10)")
    parser.add_argument("--quiet-only", action="store_true", help="stop after part 0 (the overhead alone)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the baselines: part 0 on a second server whose embedder runs in float32 (the default "
                             "before bfloat16), part 1 on a second server run with --no-warm")
    parser.add_argument("--crash-writers", type=int, default=10, help="clients writing when the server is killed (default 10)")
    parser.add_argument("--crash-after", type=float, default=4.0, help="seconds of writing before kill -9 (default 4)")
    parser.add_argument("--fuzz", type=int, default=500, help="requests of the namespace fuzz (default 500)")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 200 and 0 < args.seconds <= 600 and 1 <= args.crash_writers <= args.clients):
        parser.error("keep it bounded: 1 to 200 clients, at most 600 s, at most --clients crash writers")

    with tempfile.TemporaryDirectory(prefix="memedit-serve-bench-") as tmp:
        (db, keys), log, port = keyed_server(tmp, "serve", args.clients), Path(tmp) / "server.log", free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        process = start_server(db, port, args.max_tokens, log)
        print(f"memedit serve (SmolLM2-135M, serac) up in {time.monotonic() - started:.1f} s on {url}; "
              f"{os.cpu_count()} CPU cores, the server's OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, "
              f"MEMEDIT_EMBED_PRECISION={os.environ.get('MEMEDIT_EMBED_PRECISION', 'auto')} (the embedder's products: "
              f"{matmul_dtype()})")

        # Warm-up (not in the figures), then questions one at a time with nothing else running.
        quiet = asyncio.run(alone(url, keys["client-00"], "client-00", args.quiet, args.max_tokens))
        if quiet.overhead:
            print(f"\n0. alone: {len(quiet.overhead)} questions one at a time (after a warm-up): memedit overhead p50 "
                  f"{statistics.median(quiet.overhead):.1f} ms (target p50 <= {OVERHEAD_TARGET_MS:.0f} ms), "
                  f"generation p50 {statistics.median(quiet.generation):.1f} ms, "
                  f"client latency p50 {pct([s * 1000 for s in quiet.latency['chat']], 0.5):.1f} ms")
            during = [s * 1000 for s in quiet.latency["edits"]]
            print(f"   {len(during)} edits added one at a time while a 64-token answer was generated: "
                  f"POST /v1/edits p50 {pct(during, 0.5):.1f} ms, max {max(during, default=float('nan')):.1f} ms")
            again = asyncio.run(alone(url, keys["client-00"], "client-00", args.quiet, args.max_tokens))
            print(f"   the same questions again (their vectors cached by the detector, so no MiniLM pass): "
                  f"memedit overhead p50 {statistics.median(again.overhead):.1f} ms")
            if not args.no_baseline:
                baseline_alone(tmp, args)
        if args.quiet_only:
            stop_server(process)
            return 0

        # 1. load
        started = time.monotonic()
        tally = asyncio.run(load(url, keys, args))
        took = time.monotonic() - started
        found = asyncio.run(read_back(url, keys))
        acked = sum(len(v) for v in tally.acked.values())
        print(f"\n1. load: {args.clients} clients for {args.seconds:.0f} s (drained in {took:.1f} s), "
              f"ask share {args.ask_share}, max_tokens {args.max_tokens}")
        print(f"   acknowledged edits {acked}, lost {lost(tally.acked, found)} (target 0); 5xx {tally.server_errors} (target 0); "
              f"other errors {tally.other_errors or 0}")
        for name, path in (("edits", "POST /v1/edits"), ("chat", "POST /v1/chat/completions")):
            ms = [s * 1000 for s in tally.latency[name]]
            print(f"   {path:<26} {len(ms):5d} requests  p50 {pct(ms, 0.5):8.1f} ms  p95 {pct(ms, 0.95):8.1f} ms")
        if tally.overhead:
            print(f"   memedit overhead per chat (server time minus generation and queueing; a question that waits for "
                  f"the model is decided ahead on another thread while it waits, and its turn repeats the decision "
                  f"from the caches): {overhead_line(tally)} ({len(tally.overhead)} chats, target p50 <= "
                  f"{OVERHEAD_TARGET_MS:.0f} ms); generation p50 {statistics.median(tally.generation):.1f} ms; "
                  f"the answer's wait for the event loop once written (other requests' turn, queueing) "
                  f"p50 {statistics.median(tally.resumed):.1f} ms, p95 {pct(tally.resumed, 0.95):.1f} ms")
        if not args.no_baseline:
            baseline_load(tmp, args)

        # 2. kill -9 during writes, restart
        crashed = asyncio.run(crash(url, keys, process, args))
        process = start_server(db, port, args.max_tokens, log)
        found = asyncio.run(read_back(url, keys))
        acked_crash = sum(len(v) for v in crashed.acked.values())
        print(f"\n2. kill -9 during writes ({args.crash_writers} writers, after {args.crash_after:.0f} s), restart: "
              f"acknowledged {acked_crash}, present after restart {acked_crash - lost(crashed.acked, found)}, "
              f"lost {lost(crashed.acked, found)} (target 0); earlier edits lost {lost(tally.acked, found)}")

        # 3. namespace fuzz
        ids = {ns: sorted(v) for ns, v in found.items() if v}
        result = asyncio.run(fuzz(url, keys, ids, args.fuzz, seed=17))
        print(f"\n3. fuzz: {result['requests']} requests with mixed keys over {len(keys)} namespaces: "
              f"cross-namespace reads {result['cross_reads']} (target 0), 5xx {result['server_errors']}")
        stop_server(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
