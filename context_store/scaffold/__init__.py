"""``context-store init``: an example feature repo (fraud + personalization) with synthetic data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import InvalidInputError
from .generator import GeneratedData, generate

__all__ = ["scaffold", "ScaffoldResult", "generate", "GeneratedData", "TEMPLATES"]

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class ScaffoldResult:
    root: Path
    files: list[Path]
    data: GeneratedData


def _target_name(rel: Path) -> Path:
    name = rel.name[: -len(".tmpl")] if rel.name.endswith(".tmpl") else rel.name
    if name == "gitignore":
        name = ".gitignore"
    return rel.with_name(name)


def scaffold(
    dest: str | Path,
    *,
    users: int = 100,
    events: int = 5000,
    items: int = 200,
    days: int = 14,
    seed: int = 7,
    end: datetime | None = None,
    force: bool = False,
) -> ScaffoldResult:
    """Write the example definitions, help articles, config and generated data into ``dest``.

    Refuses a non-empty directory unless ``force`` (then only the example files are replaced).
    """
    for what, v, lo in (("users", users, 1), ("events", events, 1), ("items", items, 1), ("days", days, 1)):
        if not isinstance(v, int) or v < lo:
            raise InvalidInputError(f"{what} must be a positive integer, got {v!r}", field=what)
    root = Path(dest).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"{str(root)!r} exists and is not a directory", field="dir")
    if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")) and not force:
        raise InvalidInputError(
            f"directory {str(root)!r} is not empty; choose a new directory "
            "or pass --force to overwrite the example files",
            field="dir",
        )
    root.mkdir(parents=True, exist_ok=True)
    data = generate(root / "data", users=users, events=events, items=items, days=days, seed=seed, end=end)
    written: list[Path] = []
    for src in sorted(TEMPLATES.rglob("*")):
        if not src.is_file() or src.name.endswith((".pyc",)) or "__pycache__" in src.parts:
            continue
        dst = root / _target_name(src.relative_to(TEMPLATES))
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text().replace("__USER__", data.busiest_user)
        dst.write_text(text)
        written.append(dst)
    return ScaffoldResult(root=root, files=sorted(written) + list(data.files.values()), data=data)
