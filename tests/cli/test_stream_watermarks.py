"""``context-store stream watermarks``: per source and partition the admitted watermark, lag and
late/rejected counts; ``--reset SOURCE[:PARTITION] [--to TIME]``; one-line errors, exit 1."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

import context_store as cs
from context_store.cli.main import cli
from context_store.compute.stream.processor import partition_of
from context_store.errors import InvalidInputError
from tests.support.stream import T0, StoreFactory, event

MODES = ["embedded", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture
def setup(request: pytest.FixtureRequest, make_store: StoreFactory, tmp_path: Path):
    def make(mode: str) -> tuple[cs.ContextStore, list[str]]:
        if mode == "embedded":
            store = make_store(tmp_path / "repo", lateness="30m")
            return store, ["--repo", str(store.config.repo)]
        url = request.getfixturevalue("redis_url")
        ws = request.getfixturevalue("workspace_name")
        request.getfixturevalue("redis_cleanup").append(f"cs:{ws}:*")
        store = make_store(tmp_path / "repo", online_store=url, workspace=ws, lateness="30m", partitions=2)
        return store, ["--repo", str(store.config.repo), "--workspace", ws, "--online-store", url]

    return make


def _run(opts: list[str], *args: str) -> Any:
    return CliRunner().invoke(cli, ["stream", "watermarks", *args, *opts])


def _rows(opts: list[str], *args: str) -> list[dict[str, Any]]:
    r = _run(opts, *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.parametrize("mode", MODES)
def test_watermarks_show_and_reset(setup, mode: str) -> None:
    store, opts = setup(mode)
    n_parts = 1 if mode == "embedded" else 2
    p = 0 if mode == "embedded" else int(partition_of(pa.table({"user_id": ["u1"]}), ("user_id",), 2)[0])
    store.push("transactions", [event("u1", 120, 1.0)])
    res = store.push("transactions", [event("u1", 100, 2.0), event("u1", 10, 4.0)])
    assert res.late == 1 and len(res.rejected) == 1

    r = _run(opts)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].split() == ["source", "partition", "watermark", "applied", "lag", "late", "rejected"]
    assert len(lines) == 1 + n_parts
    mine = next(line.split() for line in lines[1:] if line.split()[1] == str(p))
    assert mine[0] == "transactions" and mine[2].startswith((T0 + timedelta(minutes=120)).strftime("%Y-%m-%dT%H:%M"))
    assert mine[4:] == ["0", "1", "1"]  # lag, late, rejected

    rows = {row["partition"]: row for row in _rows(opts)}
    assert rows[p]["watermark"].startswith((T0 + timedelta(minutes=120)).strftime("%Y-%m-%dT%H:%M"))
    if mode == "redis":  # lag: a durable push no worker applied yet
        store.push("transactions", [event("u1", 121, 1.0)], wait=False)
        assert {row["partition"]: row["lag"] for row in _rows(opts)}[p] == 1

    with pytest.raises(InvalidInputError):  # 30 is 90 min behind the watermark
        store.push("transactions", [event("u1", 30, 8.0)])
    to = (T0 + timedelta(minutes=40)).isoformat()
    r = _run(opts, "--reset", f"transactions:{p}", "--to", to)
    assert r.exit_code == 0, r.output
    assert "reset 1 watermark(s) of transactions" in r.output
    assert store.push("transactions", [event("u1", 30, 8.0)]).accepted == 1  # on time for the reset one

    before = datetime.now(UTC)
    rows = _rows(opts, "--reset", "transactions")  # every partition, to now
    assert len(rows) == n_parts
    assert all(datetime.fromisoformat(row["watermark"]) >= before - timedelta(seconds=1) for row in rows)
    with pytest.raises(InvalidInputError, match="too late"):
        store.push("transactions", [event("u1", 200, 8.0)])  # hours ago: too late against now


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--reset", "nope"], "'nope' is not a stream source"),
        (["--reset", "transactions:9"], "partition '9'"),
        (["--reset", "transactions:x"], "partition 'x'"),
        (["--reset", "src_txns:0"], "'src_txns' is not a stream source"),
        (["--reset", "transactions", "--to", "whenever"], "not an ISO-8601 time"),
        (["--reset", "transactions", "--to", "2150-01-01"], "outside"),
        (["--reset", "transactions", "--to", "1970-01-01"], "outside"),
        (["--to", "2026-01-01"], "--to needs --reset"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(setup, mode: str, args: list[str], words: str) -> None:
    _, opts = setup(mode)
    r = _run(opts, *args)
    assert r.exit_code == 1, r.output
    out = r.output.strip()
    assert words in out and "Traceback" not in out and len(out.splitlines()) == 1, out
