"""PostgreSQL: what the shared storage suite cannot show (bad URLs, a server that is down,
no pgvector, a newer schema, no artifacts folder), and API keys on both backends.

Every case needs the test server ($MEMEDIT_TEST_POSTGRES, started by scripts/postgres.sh);
without one they are skipped, saying why.
"""

from __future__ import annotations

import socket

import psycopg
import pytest

from conftest import HashEmbedder, with_database
from memedit import Memory
from memedit.errors import ArtifactsDirMissing, ExtensionMissing, SchemaTooNew, StoreOpenError, StoreUnreachable
from memedit.keys import KeyRing
from memedit.pgstore import SCHEMA_VERSION


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_schema_is_created_once_with_its_version(fresh_postgres):
    url = fresh_postgres()
    Memory(url, embedder=HashEmbedder()).close()
    Memory(url, embedder=HashEmbedder()).close()  # a second open finds it and changes nothing
    assert {"meta", "edits", "events", "embeddings", "artifacts"} <= tables(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [(str(SCHEMA_VERSION),)]
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() == ("vector",)


@pytest.mark.parametrize("url, word", [
    ("postgresql://memedit@127.0.0.1:notaport/x", "not a valid PostgreSQL URL"),
    ("postgresql://memedit@127.0.0.1:{port}/postgres", "cannot connect"),
])
def test_a_wrong_url_or_a_server_that_is_down_is_named(fresh_postgres, url, word):
    url = url.format(port=free_port())  # nothing listens there
    with pytest.raises(StoreOpenError, match=word) as caught:
        Memory(url, embedder=HashEmbedder())
    assert "postgresql://USER" in str(caught.value) or "server is running" in str(caught.value)
    assert word != "cannot connect" or isinstance(caught.value, StoreUnreachable)


def test_a_database_that_does_not_exist_or_a_wrong_user_is_unreachable(fresh_postgres):
    url = fresh_postgres()
    with pytest.raises(StoreUnreachable, match="database name"):
        Memory(with_database(url, "no_such_database_here"), embedder=HashEmbedder())
    with pytest.raises(StoreUnreachable, match="user"):
        Memory(url.replace("memedit@", "nobody_at_all@"), embedder=HashEmbedder())


def test_no_pgvector_and_no_right_to_create_it_is_named_and_writes_nothing(fresh_postgres):
    url = fresh_postgres()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS memedit_plain")
        admin.execute("CREATE ROLE memedit_plain LOGIN")  # no superuser: may not create pgvector
        admin.execute(f'GRANT ALL ON DATABASE "{name}" TO memedit_plain')
        admin.execute("GRANT ALL ON SCHEMA public TO memedit_plain")
    plain = url.replace("memedit@", "memedit_plain@")
    try:
        with pytest.raises(ExtensionMissing, match="CREATE EXTENSION vector") as caught:
            Memory(plain, embedder=HashEmbedder())
        assert "superuser" in str(caught.value)
        assert tables(url) == set()  # the schema was not half made
        with psycopg.connect(url, autocommit=True) as admin:  # an administrator adds it: the same user can now open it
            admin.execute("CREATE EXTENSION vector")
        with Memory(plain, embedder=HashEmbedder()) as memory:
            memory.add(statement="pgvector is there now.")
            assert len(memory.list()) == 1
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("DROP OWNED BY memedit_plain")
        with psycopg.connect(with_database(url, "postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            admin.execute("DROP ROLE memedit_plain")


def test_a_schema_from_a_newer_memedit_is_refused_and_left_alone(fresh_postgres):
    url = fresh_postgres()
    with Memory(url, embedder=HashEmbedder()) as memory:
        kept = memory.add(statement="Written by this memedit.")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SchemaTooNew, match="upgrade memedit"):
        Memory(url, embedder=HashEmbedder())
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION + 1),)
        assert conn.execute("SELECT id FROM edits").fetchall() == [(kept.id,)]


def test_artifacts_need_a_folder_and_say_how_to_name_it(fresh_postgres, monkeypatch, tmp_path):
    url = fresh_postgres()
    monkeypatch.delenv("MEMEDIT_ARTIFACTS")
    with Memory(url, embedder=HashEmbedder()) as memory:
        memory.add(statement="Edits need no folder.")
        with pytest.raises(ArtifactsDirMissing, match="artifacts_dir=.*MEMEDIT_ARTIFACTS"):
            memory.artifacts.names()
    with Memory(url, embedder=HashEmbedder(), artifacts_dir=tmp_path / "shared") as memory:
        assert memory.artifacts.folder.parent == tmp_path / "shared"


def test_api_keys_on_both_backends(storage):
    ring = KeyRing(storage)
    try:
        token, entry = ring.create("alice", name="app server 1")
        other, _ = ring.create("bob")
        assert ring.namespace_for(token) == "alice" and ring.namespace_for(other) == "bob"
        assert ring.namespace_for(token + "x") is None
        assert [k.id for k in ring.list()] == sorted([entry.id, ring.list()[1].id], key=[k.id for k in ring.list()].index)
        ring.revoke(token)
        assert ring.namespace_for(token) is None
        assert [k.namespace for k in ring.list(include_revoked=False)] == ["bob"]
    finally:
        ring.close()
    again = KeyRing(storage)  # another app server sees the same keys
    try:
        assert again.namespace_for(other) == "bob"
    finally:
        again.close()


def test_a_connection_lost_mid_write_is_named_and_writes_nothing(fresh_postgres):
    url = fresh_postgres()
    memory = Memory(url, embedder=HashEmbedder())
    kept = memory.add(statement="Before the server went away.")
    pid = memory._store.conn.info.backend_pid
    with pytest.raises(StoreUnreachable, match="nothing of it was written"):
        with memory._store.write():
            memory.add_many([{"statement": f"half {i}"} for i in range(5)])
            with psycopg.connect(url, autocommit=True) as admin:  # the server ends this session mid-transaction
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            memory.add_many([{"statement": f"half {i}"} for i in range(5, 10)])
    memory._store.close()
    with Memory(url, embedder=HashEmbedder()) as again:
        assert [e.id for e in again.list(status=None)] == [kept.id] and again.stats()["events"] == 1


def test_a_password_never_shows_in_messages_or_stats(fresh_postgres):
    url = fresh_postgres().replace("memedit@", "memedit:hunter2@")  # trust auth: any password is accepted
    with Memory(url, embedder=HashEmbedder()) as memory:
        assert "hunter2" not in repr(memory) and "hunter2" not in str(memory.stats())
    with pytest.raises(StoreUnreachable) as caught:
        Memory(f"postgresql://memedit:hunter2@127.0.0.1:{free_port()}/x", embedder=HashEmbedder())  # nothing there
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
