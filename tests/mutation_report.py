"""reports/mutation.md from mutmut's results in mutants/: kill rate per module, every surviving mutant's diff,
and why each one left alive is equivalent (EQUIVALENT below); `make mutation` runs mutmut, then this.

    python -m tests.mutation_report [MUTANTS_DIR] > reports/mutation.md
"""

from __future__ import annotations

import ast
import difflib
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# mutmut's exit codes of a mutant's test run (mutmut/__main__.py status_by_exit_code).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          35: "suspicious", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", None: "not checked"}  # fmt: skip
# A timeout or a crash under a mutant is a detected change, as mutmut counts it.
DETECTED = {"killed", "timeout", "segfault"}

# Survivors that no test can kill because the mutant computes the same thing on every input the code can
# receive, with the reason. Keys: mutmut's mutant names (stable while the function is unchanged).
EQUIVALENT: dict[str, str] = {}

# Planted bugs of the issue and the fast test that fails with each (verified by planting it in a copy).
PLANTED: list[tuple[str, str]] = []


def mutated_modules(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    return tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"]


def function_sources(path: Path) -> dict[str, str]:
    """name -> source of every function in a mutated file (originals are `<x>__mutmut_orig`)."""
    text = path.read_text()
    return {
        node.name: ast.get_source_segment(text, node)
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef)
    }


def mutant_diff(sources: dict[str, str], mutant: str) -> str:
    """The changed lines of one mutant against its original function."""
    local = mutant.rsplit(".", 1)[-1]  # x_f__mutmut_3 or xǁClassǁmethod__mutmut_3
    orig = sources.get(local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    new = sources.get(local)
    if orig is None or new is None:
        return "(source not found)"
    base = local.rsplit("__mutmut_", 1)[0]
    orig_lines = orig.replace(f"{base}__mutmut_orig(", "(", 1).splitlines()  # same name on both sides
    new_lines = new.replace(f"{local}(", "(", 1).splitlines()
    lines = [
        line
        for line in difflib.unified_diff(orig_lines, new_lines, lineterm="", n=0)
        if line[:1] in "-+" and not line.startswith(("---", "+++"))
    ]
    return "\n".join(lines)


def module_results(mutants_dir: Path, module: str) -> tuple[Counter, dict[str, str]]:
    """-> (count per status, survivor name -> diff) of one mutated module."""
    meta = mutants_dir / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"{meta} missing: run `make mutation` (mutmut run) first")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts = Counter(STATUS.get(code, f"exit {code}") for code in codes.values())
    sources = function_sources(mutants_dir / module)
    survivors = {
        name: mutant_diff(sources, name)
        for name, code in sorted(codes.items())
        if STATUS.get(code) == "survived"
    }
    return counts, survivors


def pct(num: int, den: int) -> str:
    return f"{100 * num / den:.1f}%" if den else "n/a"


def render(mutants_dir: Path) -> str:
    rows, sections, unexplained = [], [], []
    for module in mutated_modules():
        counts, survivors = module_results(mutants_dir, module)
        total = sum(counts.values())
        detected = sum(counts[s] for s in DETECTED)
        equivalent = sum(1 for name in survivors if name in EQUIVALENT)
        other = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s not in DETECTED | {"survived"})
        rows.append(
            f"| `{module}` | {detected}/{total} | {pct(detected, total)} | {len(survivors)} | {equivalent} "
            f"| {pct(detected + equivalent, total)} | {other or '-'} |"
        )
        if survivors:
            sections.append(f"\n### `{module}`\n")
            for name, diff in survivors.items():
                reason = EQUIVALENT.get(name)
                if reason is None:
                    unexplained.append(name)
                sections.append(
                    f"- `{name}`: {reason or '**not explained: needs a test**'}\n```diff\n{diff}\n```"
                )
    out = [
        "# Mutation testing",
        "",
        "`make mutation`: mutmut (see `[tool.mutmut]` in pyproject.toml: the modules that hold the method, each "
        "mutant checked by the fast unit tests that execute its function), then `python -m tests.mutation_report`.",
        "Killed = a test failed (or timed out) under the mutant. A survivor is either killed by a new test or "
        "listed below as equivalent, with the reason.",
        "",
        "| module | killed/total | killed | survived | of which equivalent | killed + equivalent | other |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Survivors not explained: {len(unexplained)}.",
        "",
        "## Survivors",
        *(sections or ["\nNone."]),
    ]
    if PLANTED:
        out += ["", "## Planted bugs and the fast test that catches each", "", "| bug | test |", "|---|---|"]
        out += [f"| {bug} | `{test}` |" for bug, test in PLANTED]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    mutants_dir = Path(argv[0]) if argv else REPO / "mutants"
    sys.stdout.write(render(mutants_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
