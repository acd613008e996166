"""The offline store at a local path or at a URI (``file://`` here: Lance's object-store code path on a
real directory; no faked object store), configured by ``offline_store:``."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from context_store.config import load_config
from context_store.errors import InvalidInputError, NotFoundError
from context_store.stores.offline import open_offline_store
from context_store.stores.offline.fragments import write_fragments
from context_store.stores.offline.lance import LanceOfflineStore
from context_store.vocab.redact import redact_text
from tests.support.batch import T0, ts_array

SEC = 1_000_000


def _rows(keys: list[str], secs: list[int], amounts: list[float]) -> pa.Table:
    return pa.table(
        {"user_id": keys, "ts": ts_array([T0 + s * SEC for s in secs]), "amount": pa.array(amounts, pa.float64())}
    )


@pytest.fixture(params=["path", "file_uri"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LanceOfflineStore:
    off = tmp_path / "offline"
    location = off.as_uri() if request.param == "file_uri" else str(off)
    config = load_config(tmp_path, workspace="w1", offline_store=location)
    s = open_offline_store(config)
    assert isinstance(s, LanceOfflineStore)
    if request.param == "file_uri":
        assert config.offline_url == location and config.offline_store is None
        assert config.offline_uri == f"{location}/w1" and s.path is None
    else:
        assert config.offline_url is None and s.path == off / "w1" == config.offline_path
    return s


def test_contract_at_path_and_uri(store: LanceOfflineStore, tmp_path: Path) -> None:
    assert store.tables() == [] and not store.exists("fv__v") and store.change_token("fv__v") is None
    assert store.append("fv__v", _rows(["a", "b"], [0, 10], [1.0, 2.0])) == 2
    # the tables are where the location says, whichever way it was spelled
    assert (tmp_path / "offline" / "w1" / "fv__v.lance" / "_versions").is_dir()
    assert store.exists("fv__v") and store.tables() == ["fv__v"] and store.count("fv__v") == 2
    token = store.change_token("fv__v")
    assert token is not None and store.change_token("fv__v") == token
    store.append("fv__v", _rows(["c"], [20], [3.0]))
    assert store.change_token("fv__v") not in (None, token)
    store.overwrite_range("fv__v", _rows(["b"], [10], [20.0]), "ts", T0 + 5 * SEC, T0 + 15 * SEC)
    assert store.read("fv__v").column("amount").to_pylist() == [1.0, 3.0, 20.0]
    v = store.version("fv__v")
    assert v is not None and store.delete_where("fv__v", "user_id = 'a'") == 1
    assert store.revert("fv__v", v, v + 1) and store.count("fv__v") == 3
    store.purge("fv__v")
    store.compact("fv__v")
    assert store.read("fv__v", ts_column="ts", start_us=T0 + 15 * SEC).column("user_id").to_pylist() == ["c"]
    store.drop("fv__v")
    assert not store.exists("fv__v") and store.tables() == [] and store.change_token("fv__v") is None
    with pytest.raises(NotFoundError):
        store.read("fv__v")


def test_fragments_committed_once(store: LanceOfflineStore) -> None:
    """Rows written as fragments (as Ray tasks do) appear only at the commit, in the given order."""
    data = _rows(["a", "b", "c", "d"], [0, 10, 20, 30], [1.0, 2.0, 3.0, 4.0])
    target = store.fragment_target("fv__f", data.schema, whole_table=True)
    frags = write_fragments(target, data.slice(2)) + write_fragments(target, data.slice(0, 2))
    assert not store.exists("fv__f")  # written, not committed: no table yet
    store.commit_fragments(target, frags, "ts", None, None)
    assert store.read("fv__f").column("user_id").to_pylist() == ["c", "d", "a", "b"]
    # a range: the old rows in [10 s, 30 s) go, the new ones come, in one append after the delete
    target = store.fragment_target("fv__f", data.schema, whole_table=False)
    frags = write_fragments(target, _rows(["x"], [15], [9.0]).select(["ts", "user_id", "amount"]))
    before = store.version("fv__f")
    assert before is not None
    store.commit_fragments(target, frags, "ts", T0 + 10 * SEC, T0 + 30 * SEC)
    got = store.read("fv__f")
    assert got.column("user_id").to_pylist() == ["d", "a", "x"] and got.schema == data.schema
    assert store.version("fv__f") == before + 2  # the delete, then one append


def test_fragments_another_host_wrote_are_refused(tmp_path: Path) -> None:
    """A worker on another host writes a local-path store's files to its own disk: never committed."""
    store = LanceOfflineStore(tmp_path / "here")
    data = _rows(["a"], [0], [1.0])
    target = store.fragment_target("fv__f", data.schema, whole_table=True)
    elsewhere = target._replace(location=str(tmp_path / "other_host_disk"))
    frags = write_fragments(elsewhere, data)
    with pytest.raises(InvalidInputError, match="must be shared") as err:
        store.commit_fragments(target, frags, "ts", None, None)
    assert err.value.field == "offline_store" and not store.exists("fv__f")


def test_config_offline_uri_and_storage_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("http://bucket/x", "s3://", "ftp://h/x"):
        with pytest.raises(InvalidInputError, match="offline_store") as err:
            load_config(tmp_path, offline_store=bad)
        assert err.value.field == "offline_store"
    c = load_config(tmp_path, workspace="w2", offline_store="s3://bucket/prefix/")
    assert c.offline_uri == "s3://bucket/prefix/w2" and c.offline_store is None
    assert c.offline_path == c.workspace_dir / "offline"  # vector files stay local
    monkeypatch.setenv("TEST_RAYBF_SECRET", "very-secret-value-123")
    (tmp_path / "context_store.yaml").write_text(
        "offline_store: s3://bucket/p\n"
        "offline_storage_options:\n"
        "  region: eu-west-1\n"
        "  allow_http: true\n"
        "  aws_secret_access_key: env:TEST_RAYBF_SECRET\n"
    )
    c = load_config(tmp_path)
    assert c.offline_storage_options == {
        "region": "eu-west-1",
        "allow_http": "true",
        "aws_secret_access_key": "very-secret-value-123",
    }
    assert "very-secret-value-123" not in repr(c)
    assert "very-secret-value-123" not in redact_text("failed with very-secret-value-123")
    store = open_offline_store(c)
    assert isinstance(store, LanceOfflineStore) and store.storage_options == c.offline_storage_options
    monkeypatch.delenv("TEST_RAYBF_SECRET")
    with pytest.raises(InvalidInputError, match="TEST_RAYBF_SECRET") as err:
        load_config(tmp_path)
    assert err.value.field == "offline_storage_options"
    (tmp_path / "context_store.yaml").write_text("offline_storage_options: [a, b]\n")
    with pytest.raises(InvalidInputError, match="mapping"):
        load_config(tmp_path)
