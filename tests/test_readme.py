"""The README works as written: its shell and Python blocks, pasted in order on a fresh scaffold, all succeed.

The set-up blocks are already done (this runs inside the venv they create: its bin directory is put first on
PATH, as `. .venv/bin/activate` does); Docker blocks and blocks marked ``<!-- readme-test: skip -->`` are not
run; the server block runs in the background. The README's port 8000 becomes a free port. Besides "exit 0",
a few checks make sure the walkthrough computes real values (not the all-zero answers of wrong dates or ids).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.support.readme import Block, ReadmeSession, readme_blocks
from tests.support.server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _readme(port: int) -> str:
    text = (ROOT / "README.md").read_text()
    return text.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("--port 8000", f"--port {port}")


def test_blocks_are_found_and_marked() -> None:
    blocks = readme_blocks(_readme(8000))
    shell = [b for b in blocks if b.lang == "sh"]
    assert any("context-store init my_features" in b.code for b in shell)
    setup = [b for b in blocks if "pip install" in b.code or "activate" in b.code or "scripts/test.sh" in b.code]
    assert setup and all(b.mode == "skip" for b in setup), "set-up blocks must be marked skip"
    assert [b.mode for b in blocks if re.search(r"context-store serve .*&", b.code)] == ["background"]
    # No stale example data: the scaffold's users are u0001..u0100 and its history ends at `init`.
    text = _readme(8000)
    assert "user_1" not in text and "2024-05" not in text
    assert "npx @modelcontextprotocol" not in text, "Inspector commands need -y and a pinned version"


def _check(block: Block, out: str) -> None:
    """Outputs that would pass with exit 0 but mean the example is broken."""
    if "backfill --start" in block.code:
        assert not re.search(r"\b0 rows\b", out), f"the ranged backfill found nothing:\n{out}"
    if "context-store get fraud_detection_service" in block.code:
        assert "PRESENT" in out and "NOT_MATERIALIZED" not in out, out
    if "knowledge search" in block.code:
        assert "refunds.md" in out, out
    if "get-features" in block.code:
        assert '"features"' in out, out


@pytest.mark.timeout(900)  # ~2 min on an idle 2-core machine; the whole walkthrough, model loads included
def test_readme_runs_in_order(tmp_path: Path) -> None:
    port = free_port()
    blocks = readme_blocks(_readme(port))
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(Path(bin_dir).parent),
        PYTHONPATH=str(ROOT),  # this checkout wins over whichever one the venv's editable install points to
        npm_config_update_notifier="false",
        NODE_NO_WARNINGS="1",
    )
    work = tmp_path / "clone"
    work.mkdir()
    session = ReadmeSession(work, env, tmp_path / "state")
    try:
        for block in blocks:
            try:
                _check(block, session.run(block))
            except AssertionError as e:
                raise AssertionError(f"{e}\n{session.background_logs()}") from None
        # The training data of the walkthrough holds real values (its spine is inside the generated history).
        session.python_check(
            "assert df['user_transaction_stats__amount_count_7d'].gt(0).all(), df\n"
            "assert df['user_profile__age'].notna().all(), df\n"
        )
    finally:
        session.close()
    ran = [b for b in blocks if b.mode != "skip"]
    assert len(ran) >= 20, f"only {len(ran)} blocks ran"
    slowest = sorted(session.timings, key=lambda t: -t[0])[:8]
    print(
        "slowest blocks:",
        *(f"{s:6.1f} s  README.md:{b.line} {b.code.splitlines()[0][:70]}" for s, b in slowest),
        sep="\n  ",
    )
    if session.skipped:
        print("skipped:", *session.skipped, sep="\n  ")
