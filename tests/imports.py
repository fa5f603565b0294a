"""Repo imports that are not at module level, and (run as a module) each stage's import closure for dvc.yaml;
the closure itself is gain.runtime.codebase's."""

from __future__ import annotations

import ast
from pathlib import Path

from gain.runtime.codebase import PACKAGES, REPO, closure


def nested_imports(path: Path) -> list[str]:
    """`file:line module` of each repo import that is not at module level."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n.split(".")[0] in PACKAGES for n in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {names[0]}")
    return found


if __name__ == "__main__":  # print each stage's code deps, for dvc.yaml
    for stage in ("data", "gain", "seeds", "sec", "evaluate", "track"):
        print(f"{stage}:")
        for path in sorted(map(str, closure(f"stages.{stage}"))):
            print(f"      - {path}")
