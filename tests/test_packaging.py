"""Packaging metadata: `pip install -e .` must build it without setuptools deprecation warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What pip runs first for `pip install -e .`: the PEP 517 metadata hook of the build backend.
_BUILD_METADATA = """
import sys, warnings
warnings.simplefilter("always")
import setuptools.build_meta as backend
print(backend.prepare_metadata_for_build_editable(sys.argv[1]))
"""


def test_build_metadata_has_spdx_license_and_no_deprecation_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    (src / "context_store").mkdir()
    (src / "context_store" / "__init__.py").write_text("")
    out = tmp_path / "meta"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    p = subprocess.run(
        [sys.executable, "-c", _BUILD_METADATA, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    assert "project.license" not in text, text
    assert "SetuptoolsDeprecationWarning" not in text, text
    meta = (out / p.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in meta, meta[:2000]


def test_build_requirement_supports_spdx_license() -> None:
    """An SPDX `license` string needs setuptools >= 77; an older build backend would reject it."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    (req,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(req.split(">=")[1].split(".")[0]) >= 77, req
