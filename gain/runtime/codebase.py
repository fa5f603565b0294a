"""The code a stage runs: the import closure of a module of this repo, read from the source (imports inside
functions too). dvc.yaml lists each stage's closure as its code deps (tests/test_layout.py checks it) and
a resume checkpoint is fingerprinted with the same files, so an edit elsewhere keeps it resumable."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gain", "stages")


def module_file(name: str) -> Path | None:
    """gain.cam.model -> gain/cam/model.py (a package -> its __init__.py); None outside this repo."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Every repo module `path` imports anywhere in its body (`from pkg import mod` counts mod)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if module_file(m) is not None}


def closure(module: str) -> set[Path]:
    """Files (relative to the repo) of `module` and everything it imports, transitively; package
    __init__.py files are left out (they hold only a docstring, which a test checks)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        f = module_file(todo.pop())
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(imported_modules(f))
    return {f.relative_to(REPO) for f in seen if f.name != "__init__.py"}


def code_fingerprint(module: str) -> str:
    """Hash of the sources `module` runs (its closure): a checkpoint from other code is not resumed."""
    h = hashlib.sha256()
    for path in sorted(closure(module)):
        h.update(str(path).encode())
        h.update((REPO / path).read_bytes())
    return h.hexdigest()[:16]
