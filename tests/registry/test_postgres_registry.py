"""The shared registry (``registry: postgresql://...``): plan/apply/refresh round trip, two hosts, applies
from threads and processes serialized into versions 1..N, stale writes refused, credentials never shown."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import context_store as cs
from context_store.compute.schema_probe import TransformSchemaProbe
from context_store.config import load_config
from context_store.errors import ConflictError, InvalidInputError, MissingDependencyError, UnavailableError
from context_store.registry.pg_storage import PostgresStorage
from context_store.registry.registry import Registry
from context_store.vocab.redact import redact_text
from tests.registry.test_registry import BASE, repo, rewrite
from tests.support.postgres import postgres_dsn
from tests.support.repo import make_repo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pg() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture
def ws() -> str:
    return "pg" + uuid.uuid4().hex[:12]


def registry(root: Path, dsn: str, ws: str) -> Registry:
    return Registry(load_config(root, workspace=ws, registry=dsn), TransformSchemaProbe())


def described(root: Path, text: str) -> Path:
    return make_repo(root, BASE.replace("AGGS", 'cs.Aggregate("amount", "sum", "1d")').replace('"d1"', repr(text)))


def test_config_reads_a_postgres_registry_from_yaml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_repo(tmp_path / "r", BASE, config={"registry": "postgresql://u:S3cretPw@db.example:5432/reg"})
    c = load_config(root)
    assert c.registry_url == "postgresql://u:S3cretPw@db.example:5432/reg" and c.registry is None
    assert "S3cretPw" not in repr(c) and "db.example" in repr(c)
    monkeypatch.setenv("CONTEXT_STORE_REGISTRY", "postgres://reg-reader@h/db")
    assert load_config(root).registry_url == "postgres://reg-reader@h/db"
    # A PostgreSQL DSN's lone userinfo is a user name, not a secret: it is not masked everywhere else.
    assert redact_text("connected as reg-reader") == "connected as reg-reader"
    monkeypatch.setenv("CONTEXT_STORE_REGISTRY", "mysql://u:pw1234@h/db")
    with pytest.raises(InvalidInputError, match="postgresql://") as e:
        load_config(root)
    assert e.value.field == "registry" and "pw1234" not in str(e.value)
    monkeypatch.delenv("CONTEXT_STORE_REGISTRY")
    assert load_config(tmp_path / "r", registry="elsewhere").registry == root / "elsewhere"  # a path, as before


def test_apply_plan_refresh_round_trip(tmp_path: Path, pg: str, ws: str) -> None:
    root = repo(tmp_path)
    reg = registry(root, pg, ws)
    assert reg.applied_version() == 0
    plan = reg.apply()
    assert (plan.from_version, plan.to_version) == (0, 1)
    assert reg.plan().is_empty and reg.apply().to_version == 1  # nothing changed: no new version
    assert reg.applied().feature_view("stats").description == "d1"
    rewrite(root, '"d1"', '"d2"')
    plan = reg.plan()
    assert [c.name for c in plan.changes] == ["stats"] and not plan.breaking
    assert reg.apply().to_version == 2
    assert reg.applied().feature_view("stats").description == "d2"
    assert reg.storage.versions() == [1, 2]
    assert reg.applied_records(1)["feature_views/stats"]["spec"]["description"] == "d1"
    assert reg.deployment_id() == reg.deployment_id(create=False) is not None
    # a breaking change is refused and leaves nothing behind (the transaction rolls back)
    rewrite(root, 'cs.Field("merchant", cs.String)', 'cs.Field("merchant", cs.Int64)')
    with pytest.raises(ConflictError, match="--force"):
        reg.apply()
    assert reg.applied_version() == 2 and reg.storage.versions() == [1, 2]
    assert reg.apply(force=True).to_version == 3
    # nothing was written under the file registry's directory
    assert not (reg.config.registry_path / ws).exists()


def test_two_hosts_see_each_others_applies_after_refresh(tmp_path: Path, pg: str, ws: str) -> None:
    a_root, b_root = repo(tmp_path / "a"), repo(tmp_path / "b")  # two machines: separate disks
    with (
        cs.ContextStore(config=load_config(a_root, workspace=ws, registry=pg)) as a,
        cs.ContextStore(config=load_config(b_root, workspace=ws, registry=pg)) as b,
    ):
        a.apply()
        assert b.definitions.feature_view("stats").description == "d1"
        rewrite(b_root, '"d1"', '"from b"')
        assert b.apply().to_version == 2
        assert a.definitions.feature_view("stats").description == "d1"  # cached until refresh
        a.refresh()
        assert a.definitions.feature_view("stats").description == "from b"
        assert a.plan().from_version == 2  # a plans against b's version: its repo now differs
        assert a.registry.deployment_id() == b.registry.deployment_id()


def test_concurrent_applies_from_threads_serialize(tmp_path: Path, pg: str, ws: str) -> None:
    n = 6
    regs = [registry(described(tmp_path / f"h{i}", f"writer {i}"), pg, ws) for i in range(n)]
    barrier = threading.Barrier(n)
    plans: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            plans[i] = regs[i].apply()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    to = sorted(p.to_version for p in plans.values())  # type: ignore[attr-defined]
    assert to == list(range(1, n + 1))
    # each apply planned against the version before its own (serialized, none planned on a stale version)
    assert all(p.from_version == p.to_version - 1 for p in plans.values())  # type: ignore[attr-defined]
    reader = regs[0]
    assert reader.storage.versions() == list(range(1, n + 1)) and reader.applied_version() == n
    for i, p in plans.items():  # no lost update: every writer's definitions are the version it was told
        spec = reader.applied_records(p.to_version)["feature_views/stats"]["spec"]  # type: ignore[attr-defined]
        assert spec["description"] == f"writer {i}"


_APPLY = """
import sys
from context_store.compute.schema_probe import TransformSchemaProbe
from context_store.config import load_config
from context_store.registry.registry import Registry
plan = Registry(load_config(sys.argv[1], workspace=sys.argv[2], registry=sys.argv[3]), TransformSchemaProbe()).apply()
print(plan.from_version, plan.to_version)
"""


def test_concurrent_applies_from_processes_serialize(tmp_path: Path, pg: str, ws: str) -> None:
    n = 3
    roots = [described(tmp_path / f"p{i}", f"process {i}") for i in range(n)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPLY, str(r), ws, pg], stdout=subprocess.PIPE, text=True, env=env)
        for r in roots
    ]
    outs = [p.communicate(120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted((int(f), int(t)) for f, t in outs) == [(v - 1, v) for v in range(1, n + 1)]
    reg = registry(roots[0], pg, ws)
    descriptions = {reg.applied_records(v)["feature_views/stats"]["spec"]["description"] for v in range(1, n + 1)}
    assert descriptions == {f"process {i}" for i in range(n)}


def test_a_stale_write_is_refused(tmp_path: Path, pg: str, ws: str) -> None:
    root = repo(tmp_path)
    reg = registry(root, pg, ws)
    reg.apply()
    storage = reg.storage
    with pytest.raises(ConflictError, match="moved from version 0 to 1"):
        storage.write_version(0, {"objects": {}, "files": []}, {})
    assert reg.applied_version() == 1 and storage.versions() == [1]


def test_an_unreachable_registry_is_503_without_the_password(tmp_path: Path, ws: str) -> None:
    from tests.support.server import free_port

    dsn = f"postgresql://user:Sup3rSecretPw@127.0.0.1:{free_port()}/db"
    reg = registry(repo(tmp_path), dsn, ws)
    with pytest.raises(UnavailableError) as e:
        reg.applied_version()
    assert e.value.field == "registry" and "Sup3rSecretPw" not in str(e.value) and "127.0.0.1" in str(e.value)
    assert "Sup3rSecretPw" not in repr(reg.storage)


def test_missing_psycopg_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an install without the extra sees
    with pytest.raises(MissingDependencyError, match=r"context-store\[postgres\]") as e:
        PostgresStorage("postgresql://u@h/db", "w", Path("."))
    assert "\n" not in str(e.value)
