"""Runs the README's code blocks in order, as a reader pasting them into one shell and one Python session would.

Blocks: ```sh/```bash run in bash (`set -eo pipefail`), each in the working directory and with the variables
the previous blocks left (every assignment is exported with `set -a`, then carried to the next block);
```python blocks run in one persistent interpreter, so later blocks see earlier blocks' names. Other
languages (json, yaml, output) are text.

An HTML comment on the line before a block's opening fence controls it:
``<!-- readme-test: skip (why) -->`` (not run: set-up, a slow or machine-changing command) or
``<!-- readme-test: background (why) -->`` (started in the background, stopped when the session ends).
Blocks that mention ``docker`` are never run (no Docker here); ``npx`` blocks are skipped when npx is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "ReadmeSession", "readme_blocks"]

_MARK = re.compile(r"<!--\s*readme-test:\s*(skip|background)\b")
_FENCE = re.compile(r"^```(\w*)\s*$")
_RUNNABLE = {"sh": "sh", "bash": "sh", "python": "python"}
_RESULT = "@@readme-block-result@@ "

# The persistent Python session: one JSON request per line on stdin, one result line (prefixed) on stdout.
_DRIVER = r"""
import contextlib, json, os, sys, traceback
ns = {"__name__": "__main__"}
out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    try:
        with contextlib.redirect_stdout(sys.stderr):
            exec(compile(req["code"], req["name"], "exec"), ns)
        res = {"ok": True}
    except BaseException:
        res = {"ok": False, "error": traceback.format_exc()}
    out.write(PREFIX + json.dumps(res) + "\n")
    out.flush()
""".replace("PREFIX", repr(_RESULT))


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its language, text, 1-based line of the opening fence and mode."""

    lang: str
    code: str
    line: int
    mode: str  # "run", "skip" or "background"

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang}, {self.mode}):\n{self.code}"


def readme_blocks(text: str) -> list[Block]:
    """The runnable (sh, bash, python) blocks of ``text`` in order, with their mode."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        code = "\n".join(lines[start + 1 : j]) + "\n"
        i = j + 1
        if lang not in _RUNNABLE:
            continue
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        mark = _MARK.search(prev)
        mode = mark.group(1) if mark else "run"
        if re.search(r"\bdocker\b", code):
            mode = "skip"
        blocks.append(Block(_RUNNABLE[lang], code, start + 1, mode))
    return blocks


class ReadmeSession:
    """A shell + Python session in ``cwd`` that runs blocks in order; ``close()`` stops background blocks."""

    def __init__(self, cwd: Path, env: dict[str, str], state_dir: Path) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self.state = state_dir
        self.state.mkdir(parents=True, exist_ok=True)
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.python: subprocess.Popen[str] | None = None
        self.skipped: list[str] = []
        self.timings: list[tuple[float, Block]] = []  # seconds per block run, in order

    def run(self, block: Block, timeout: float = 300) -> str:
        """Run one block; returns its output. Raises AssertionError naming the block when it fails."""
        t0 = time.perf_counter()
        out = self._run(block, timeout)
        self.timings.append((time.perf_counter() - t0, block))
        return out

    def _run(self, block: Block, timeout: float) -> str:
        if block.mode == "skip":
            return ""
        if block.code.lstrip().startswith("npx") and shutil.which("npx", path=self.env.get("PATH")) is None:
            self.skipped.append(f"README.md:{block.line} (npx not installed)")
            return ""
        if block.lang == "python":
            return self._python(block, timeout)
        if block.mode == "background":
            self._background(block)
            return ""
        return self._shell(block, timeout)

    def _shell(self, block: Block, timeout: float) -> str:
        env_file, cwd_file = self.state / "env", self.state / "cwd"
        script = f"set -a\nset -eo pipefail\n{block.code}\npwd > '{cwd_file}'\nenv -0 > '{env_file}'\n"
        try:
            proc = subprocess.run(
                ["bash", "-c", script],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"timed out after {timeout} s: {block}\n{e.stdout!r}\n{e.stderr!r}") from None
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"exit {proc.returncode}: {block}\n--- output:\n{out[-4000:]}"
        self.cwd = Path(cwd_file.read_text().strip())
        self.env = dict(kv.split("=", 1) for kv in env_file.read_text().split("\0") if "=" in kv)
        return out

    def _background(self, block: Block) -> None:
        log = self.state / f"background-{block.line}.log"
        with log.open("wb") as f:
            # `wait`: the block's own `&` child stays in this process group, stopped with it in close().
            proc = subprocess.Popen(
                ["bash", "-c", f"set -a\n{block.code}\nwait\n"],
                cwd=self.cwd,
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.background.append((proc, log))

    def _python(self, block: Block, timeout: float) -> str:
        if self.python is None:
            self.python = subprocess.Popen(
                [sys.executable, "-u", "-c", _DRIVER],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(self.state / "python.log").open("w"),
                text=True,
            )
        assert self.python.stdin is not None and self.python.stdout is not None
        req = {"code": block.code, "name": f"README.md:{block.line}", "cwd": str(self.cwd), "env": self.env}
        self.python.stdin.write(json.dumps(req) + "\n")
        self.python.stdin.flush()
        # Output of the block itself goes to python.log; only the result line comes back here.
        for line in self.python.stdout:
            if line.startswith(_RESULT):
                res = json.loads(line[len(_RESULT) :])
                assert res["ok"], f"{block}\n--- error:\n{res['error']}\n--- log:\n{self.python_log()[-3000:]}"
                return ""
        raise AssertionError(f"the Python session ended: {block}\n{self.python_log()[-3000:]}")

    def python_check(self, code: str) -> None:
        """Run ``code`` in the README's Python session (to check what its blocks computed)."""
        self._python(Block("python", code, 0, "run"), 60)

    def python_log(self) -> str:
        path = self.state / "python.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def background_logs(self) -> str:
        return "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.background)

    def close(self) -> None:
        if self.python is not None:
            assert self.python.stdin is not None
            self.python.stdin.close()
            try:
                self.python.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.python.kill()
        for proc, _ in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
