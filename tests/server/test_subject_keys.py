"""API keys bound to a subject: ``keys create --subject``, ``keys list``, ``rotate`` and old key files."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from context_store.access import Subject
from context_store.cli.keys import keys as keys_cli
from context_store.errors import InvalidInputError
from context_store.server.auth import authenticate
from context_store.server.keys import KeyStore, key_store_path


def _cli(repo: Path, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(keys_cli, [*args, "--repo", str(repo), "--workspace", "shop"])
    return res.exit_code, res.stdout, res.stderr


def test_create_list_and_rotate_keep_the_subject(tmp_path: Path) -> None:
    (tmp_path / "context_store.yaml").write_text("online_store: sqlite\n")
    code, out, err = _cli(tmp_path, "create", "--scope", "read", "--subject", "user_id=u0001")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert "subject=user_id=u0001" in err and key not in err
    store = KeyStore(key_store_path(tmp_path / ".context_store"))
    try:
        p = authenticate(f"Bearer {key}", store)
        assert p.subject == Subject("user_id", "u0001") and p.scope == "read"
        row = next(line for line in _cli(tmp_path, "list")[1].splitlines() if p.key_id in line)
        assert "user_id=u0001" in row
        new_key, new, old = store.rotate(p.key_id or "", timedelta(0))
        assert new.subject == old.subject == Subject("user_id", "u0001")
        assert authenticate(f"Bearer {new_key}", store).subject == Subject("user_id", "u0001")
        unbound, rec = store.create("shop", "read")
        assert rec.subject is None and authenticate(f"Bearer {unbound}", store).subject is None
    finally:
        store.close()
    code, _, err = _cli(tmp_path, "create", "--subject", "u0001")
    assert code != 0 and "JOIN_KEY=VALUE" in err


def test_a_key_file_from_before_subjects_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    with sqlite3.connect(path) as c:  # the schema before the subject column
        c.execute(
            "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, "
            "workspace TEXT NOT NULL, scope TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, "
            "description TEXT NOT NULL DEFAULT '', rate_limit REAL, expires_at REAL, last_used_at REAL)"
        )
    c.close()
    store = KeyStore(path)
    try:
        key, _ = store.create("shop", "read", subject=Subject("user_id", "u9"))
        assert authenticate(f"Bearer {key}", store).subject == Subject("user_id", "u9")
        assert [k.subject for k in store.list("shop")] == [Subject("user_id", "u9")]
        with pytest.raises(InvalidInputError):
            store.create("shop", "read", subject="user_id=")
    finally:
        store.close()
