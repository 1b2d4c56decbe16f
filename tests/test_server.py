"""``memedit serve``: a real uvicorn server on 127.0.0.1, called with the real ``openai``
client (chat completions, streaming, the ``memedit`` extra field) and with plain HTTP
(edits, keys, namespace isolation, bad input, a dropped stream, an upstream server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason="memedit[serve] is not installed")
import openai  # noqa: E402
import uvicorn  # noqa: E402

from memedit import Memory  # noqa: E402
from memedit.adapters.server import create_app  # noqa: E402
from memedit.cli import main  # noqa: E402
from memedit.keys import KeyRing, key_hash  # noqa: E402
from memedit.serve_cli import upstream_backend  # noqa: E402

MODEL = "smollm2-135m"
FRANCE = {"subject": "France", "prompt": "The capital of {} is", "target": "Lyon", "old_target": "Paris"}


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Server:
    """A running server, its database and key ring, and helpers to call it."""

    def __init__(self, url: str, db: str, keys: KeyRing) -> None:
        self.url, self.db, self.keys = url, db, keys

    def key(self, namespace: str) -> str:
        return self.keys.create(namespace)[0]

    def http(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def server(lm, embedder, tmp_path_factory):
    """One local SmolLM2 server for the module (each test uses namespaces of its own)."""
    db = str(tmp_path_factory.mktemp("serve") / "memory.db")
    memory = Memory(db, embedder=embedder)
    keys = KeyRing(db)
    with running(create_app(memory, lm, max_tokens=8, max_tokens_limit=256)) as url:
        yield Server(url, db, keys)
    assert "generate" not in vars(lm)  # the server gave the shared model its own methods back
    keys.close()
    memory.close()


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """The response has ``status`` and OpenAI's error body (naming ``param`` when given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def ask(client: openai.OpenAI, question: str, **options):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], **options)


def test_openai_client_gets_answers_with_the_applied_edits(server):
    key = server.key("chat")
    with server.http(key) as http:
        edit = http.post("/v1/edits", json=FRANCE).json()
    client = server.openai(key)
    assert [m.id for m in client.models.list().data] == [MODEL]

    reply = ask(client, "What is the capital of France?", max_tokens=6)
    meta = reply.model_extra["memedit"]
    assert (meta["router"], meta["route"], meta["edits"], meta["namespace"]) == ("serac", "serac", [edit["id"]], "chat")
    assert reply.choices[0].message.content.strip()
    timing = meta["timing"]
    assert timing["generation_ms"] > 0 and timing["overhead_ms"] >= 0 and timing["resumed_ms"] >= 0

    other = ask(client, "What colour is the sky on a clear day?", max_tokens=3).model_extra["memedit"]
    assert (other["route"], other["edits"]) == ("base", [])

    chunks = list(ask(client, "What is the capital of France?", max_tokens=6, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same text, piece by piece
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert chunks[-1].choices[0].finish_reason == "stop"
    last = chunks[-1].model_extra["memedit"]
    assert (last["route"], last["edits"]) == ("serac", [edit["id"]])


def test_the_request_picks_the_router_and_the_sse_stream_ends_with_done(server):
    with server.http(server.key("router")) as http:
        bad = http.post("/v1/chat/completions", json={"model": MODEL, "router": "nope",
                                                      "messages": [{"role": "user", "content": "Hi"}]})
        assert_error(bad, 422, "router")
        body = {"model": MODEL, "router": "ike", "max_tokens": 2, "stream": True,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What colour is grass?"}]}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    final = json.loads(lines[-2][len("data: "):])
    assert final["object"] == "chat.completion.chunk" and final["choices"][0]["finish_reason"] == "stop"
    assert (final["memedit"]["router"], final["memedit"]["route"]) == ("ike", "base")  # no edits here


def test_edits_add_list_search_retract_and_history(server):
    with server.http(server.key("crud")) as http:
        one = http.post("/v1/edits", json={"statement": "The office closes at 6 pm on Fridays."}).json()
        many = http.post("/v1/edits", json={"edits": [FRANCE, {**FRANCE, "target": "Marseille"},
                                                      {"statement": "Alice's manager is Bob."}]}).json()["data"]
        assert many[1]["supersedes"] == many[0]["id"]  # same subject and relation: the newer one wins
        active = http.get("/v1/edits").json()["data"]
        assert {e["id"] for e in active} == {one["id"], many[1]["id"], many[2]["id"]}
        everything = http.get("/v1/edits", params={"status": "all"}).json()["data"]
        assert len(everything) == 4
        hits = http.get("/v1/edits", params={"q": "Who is Alice's boss?", "k": 1}).json()["data"]
        assert [h["id"] for h in hits] == [many[2]["id"]] and 0 < hits[0]["score"] <= 1

        retracted = http.delete(f"/v1/edits/{many[1]['id']}", params={"reason": "wrong"}).json()
        assert retracted["status"] == "retracted"
        assert http.get(f"/v1/edits/{many[0]['id']}").json()["status"] == "active"  # restored
        actions = [e["action"] for e in http.get(f"/v1/edits/{many[1]['id']}/history").json()["data"]]
        assert actions == ["add", "retract"]
        assert "retract" in [e["action"] for e in http.get("/v1/history").json()["data"]]
        assert_error(http.delete(f"/v1/edits/{many[1]['id']}"), 409)  # already retracted

        # A bad edit in a list is named by its place; nothing of that list is stored.
        bad = http.post("/v1/edits", json={"edits": [{"statement": "Fine."}, {"subject": "X", "prompt": "no brace", "target": "Y"}]})
        assert_error(bad, 422, "edits.1.prompt")
        assert_error(http.post("/v1/edits", json={"statment": "typo"}), 422, "statment")
        assert_error(http.get("/v1/edits", params={"status": "gone"}), 422, "status")
        assert len(http.get("/v1/edits", params={"status": "all"}).json()["data"]) == 4


def test_keys_unknown_revoked_or_missing_get_401(server, capsys):
    with server.http(None) as http:
        assert_error(http.get("/v1/edits"), 401)
        assert_error(http.get("/v1/edits", headers={"Authorization": "Bearer mk-00000000-guess"}), 401)
        assert_error(http.get("/v1/edits", headers={"Authorization": "Basic abc"}), 401)

    assert main(["--db", server.db, "--namespace", "cli-ns", "keys", "create", "--name", "bot", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    with server.http(made["key"]) as http:
        assert http.post("/v1/edits", json={"statement": "Keys work."}).json()["namespace"] == "cli-ns"
        assert main(["--db", server.db, "keys", "list", "--json"]) == 0
        listed = {k["id"]: k for k in json.loads(capsys.readouterr().out)}
        assert listed[made["id"]]["namespace"] == "cli-ns" and listed[made["id"]]["revoked_at"] is None
        with contextlib.closing(sqlite3.connect(server.db)) as conn:  # only its hash is stored
            rows = conn.execute("SELECT * FROM api_keys").fetchall()
        assert not any(made["key"] in str(value) for row in rows for value in row)
        assert (made["id"], key_hash(made["key"]), "cli-ns") in [row[:3] for row in rows]
        assert main(["--db", server.db, "keys", "revoke", made["id"]]) == 0
        assert_error(http.get("/v1/edits"), 401)  # at once, from another connection
    assert main(["--db", server.db, "keys", "revoke", made["id"]]) == 1  # already revoked: an error
    assert "already revoked" in capsys.readouterr().err


def test_a_key_never_reaches_another_namespace(server):
    a, b = server.key("iso-a"), server.key("iso-b")
    with server.http(a) as http_a, server.http(b) as http_b:
        secret = http_a.post("/v1/edits", json={"statement": "The vault code is 4711."}).json()
        assert http_b.get("/v1/edits", params={"status": "all"}).json()["data"] == []
        assert http_b.get("/v1/edits", params={"q": "What is the vault code?"}).json()["data"] == []
        assert_error(http_b.get(f"/v1/edits/{secret['id']}"), 404)
        assert_error(http_b.get(f"/v1/edits/{secret['id']}/history"), 404)
        assert_error(http_b.delete(f"/v1/edits/{secret['id']}"), 404)
        assert http_b.get("/v1/history").json()["data"] == []
        assert_error(http_b.post("/v1/edits", json={"statement": "Sneaky.", "namespace": "iso-a"}), 422, "namespace")
        answer = http_b.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "What is the vault code?"}]}).json()
        assert answer["memedit"]["edits"] == [] and answer["memedit"]["namespace"] == "iso-b"
        assert http_a.get(f"/v1/edits/{secret['id']}").json()["status"] == "active"


def test_bad_requests_get_json_errors_and_lose_nothing(server):
    with server.http(server.key("bad")) as http:
        kept = http.post("/v1/edits", json={"statement": "This edit must survive."}).json()
        invalid = http.post("/v1/edits", content=b'{"statement": ', headers={"Content-Type": "application/json"})
        assert assert_error(invalid, 400)["code"] == "invalid_json"
        assert_error(http.post("/v1/edits", json=["not", "an", "edit"]), 422, "body")
        no_type = http.post("/v1/chat/completions", content=b'{"model": "x"}', headers={"Content-Type": "text/plain"})
        assert "Content-Type: application/json" in assert_error(no_type, 422, "body")["message"]
        assert_error(http.post("/v1/edits", content=b"x" * (10 * 1024 * 1024 + 1)), 413)
        chunked = (b"x" * (1024 * 1024) for _ in range(11))  # no Content-Length: counted while read
        assert_error(http.post("/v1/edits", content=chunked, headers={"Content-Type": "application/json"}), 413)
        question = [{"role": "user", "content": "Hello?"}]
        assert assert_error(http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": question}), 404,
                            "model")["code"] == "model_not_found"
        assert_error(http.post("/v1/chat/completions", json={"messages": question}), 422, "model")
        assert_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}),
                     422, "messages.0.role")
        assert_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": question, "max_tokens": 100_000}),
                     422, "max_tokens")
        assert_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": question, "n": 2}), 422, "n")
        assert_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": question + [
            {"role": "assistant", "content": "Hi"}]}), 422, "messages.1")
        assert_error(http.get("/v1/nothing-here"), 404)
        assert http.get(f"/v1/edits/{kept['id']}").json()["status"] == "active"


def test_a_client_dropping_a_stream_does_not_stop_the_server(server):
    key = server.key("drop")
    with server.http(key) as http:
        kept = http.post("/v1/edits", json={"statement": "Bob's desk is by the window."}).json()
        body = {"model": MODEL, "max_tokens": 200, "stream": True,
                "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            first = next(line for line in response.iter_lines() if line)
            assert first.startswith("data: ")
        # The client is gone half way; the server answers the next requests and lost nothing.
        added = http.post("/v1/edits", json={"statement": "Bob drinks tea."})
        assert added.status_code == 200
        reply = server.openai(key).chat.completions.create(model=MODEL, max_tokens=2,
                                                           messages=[{"role": "user", "content": "Where is Bob's desk?"}])
        assert reply.choices[0].message.content is not None
        assert {e["id"] for e in http.get("/v1/edits").json()["data"]} == {kept["id"], added.json()["id"]}


def test_consolidation_runs_on_a_local_model_only(server):
    key = server.key("weights")
    with server.http(key) as http:
        http.post("/v1/edits", json={"statement": "Free text cannot go into weights."})
        report = http.post("/v1/edits:consolidate", json={"method": "rome"})
        assert report.status_code == 200, report.text
        assert report.json()["committed"] is False and "no active triple edit" in report.json()["reason"]
        assert_error(http.post("/v1/edits:consolidate", json={"method": "lora"}), 422, "method")


@pytest.fixture
def upstream(server, embedder, tmp_path):
    """A second memedit server whose model is the first server, reached over HTTP."""
    db = str(tmp_path / "front.db")
    memory = Memory(db, embedder=embedder)
    keys = KeyRing(db)
    backend = upstream_backend(server.url + "/v1", MODEL, server.key("upstream"), max_tokens=4)
    with running(create_app(memory, backend, model_name="front")) as url:
        yield Server(url, db, keys)
    keys.close()
    memory.close()


def test_a_server_answers_through_an_openai_compatible_upstream(server, upstream):
    key = upstream.key("front")
    with upstream.http(key) as http:
        edit = http.post("/v1/edits", json=FRANCE).json()
        assert_error(http.post("/v1/edits:consolidate", json={}), 501)
        assert_error(http.post("/v1/chat/completions", json={"model": "front", "router": "grace",
                                                             "messages": [{"role": "user", "content": "Hi"}]}), 422, "router")
    client = upstream.openai(key)
    chunks = list(client.chat.completions.create(model="front", stream=True,
                                                 messages=[{"role": "user", "content": "What is the capital of France?"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    meta = chunks[-1].model_extra["memedit"]
    assert (meta["route"], meta["edits"], meta["namespace"]) == ("serac", [edit["id"]], "front")
    # The upstream stored nothing: the edit lives in the front server's memory only.
    with server.http(server.key("upstream")) as http:
        assert http.get("/v1/edits", params={"status": "all"}).json()["data"] == []


@pytest.mark.slow
def test_memedit_serve_command_listens_on_localhost(server, tmp_path):
    db = str(tmp_path / "cli.db")
    token = KeyRing(db).create("cli")[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MEMEDIT_UPSTREAM_KEY": server.key("cli-upstream"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "memedit.cli", "--db", db, "serve", "--upstream", server.url + "/v1",
                                "--model", MODEL, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "memedit serve did not start"
                time.sleep(0.2)
        assert models.json()["data"][0]["id"] == MODEL
        assert httpx.get(url + "/v1/edits").status_code == 401
    finally:
        process.kill()
        process.wait()



async def test_a_question_waiting_for_the_model_is_decided_off_the_model_s_thread(lm, embedder, tmp_path, monkeypatch):
    memory = Memory(str(tmp_path / "warm.db"), embedder=embedder)
    fact = memory.with_namespace("warm").add(**FRANCE)
    service = create_app(memory, lm, max_tokens=4).state.service
    encoded: list[tuple[str, str]] = []  # (text, thread) of every text the embedder is given
    encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts, *a, **k: encoded.extend(
        (t, threading.current_thread().name) for t in texts) or encode(texts, *a, **k))
    ahead = service.ahead("warm")
    warmed, warm = threading.Event(), ahead.warm
    monkeypatch.setattr(ahead, "warm", lambda q: (warm(q), warmed.set()))

    async def held(service, *calls, ahead=False):
        """Make the calls while another request holds the model, then let it go (after the
        question was decided ahead, or half a second)."""
        release = threading.Event()
        blocking = asyncio.ensure_future(service.worker.run(release.wait))
        await asyncio.sleep(0.05)
        assert service.worker.busy
        for router, question in calls:
            service.warm("warm", router, question)
        for _ in range(100 if ahead else 10):
            if warmed.is_set():
                break
            await asyncio.sleep(0.05)
        release.set()
        await blocking

    try:
        service.warm("warm", "serac", "What is the capital of France these days?")  # the model is free: nothing ahead
        await held(service, ("mello", "What is the capital of France today?"))  # a multi-hop router starts with the model
        assert encoded == [] and not warmed.is_set()
        question = "Which city is the capital of France now?"  # the namespace's first question: no EditedModel yet
        await held(service, ("serac", question), ahead=True)
        assert warmed.is_set() and [thread for text, thread in encoded if text == question]
        assert not any(thread.startswith("memedit-model") for _, thread in encoded)
        encoded.clear()
        answer, _ = await service.worker.run(lambda: service.edited("warm", "serac").ask(question))
        assert encoded == [] and [e.id for e in answer.edits_used] == [fact.id]  # its turn ran no encoder
        assert not service.worker.busy
        # memedit serve --no-warm: a waiting question is left for its turn
        cold = create_app(memory, lm, max_tokens=4, warm=False).state.service
        warmed.clear()
        await held(cold, ("serac", "Is Lyon the capital of France today?"))
        cold.worker.close()
        assert encoded == []
    finally:
        service.worker.close()
        memory.close()
