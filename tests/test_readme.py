"""README.md shows the experiment commands that tests/pipeline/test_pipeline.py runs as printed (in a shell without the
venv on PATH), so a reader can paste them, and quotes no result that a committed report does not hold."""

from __future__ import annotations

import json
import re
import subprocess

from tests.pipeline_utils import README_EXPERIMENT, REPO


def test_readme_prints_the_tested_experiment_lines():
    lines = {line.split("#")[0].strip() for line in (REPO / "README.md").read_text().splitlines()}
    missing = [cmd for cmd in README_EXPERIMENT if cmd not in lines]
    assert not missing, (
        f"README.md no longer shows {missing}; update it or tests/pipeline_utils.py README_EXPERIMENT"
    )


def _committed_numbers() -> set[str]:
    """Every number in the git-tracked reports (JSON floats rounded to 2 and 3 decimals; numbers as written
    in the Markdown), and in the tests' docstrings that measure the set (tests/cam/test_coverage.py)."""
    files = subprocess.run(
        ["git", "ls-files", "reports", "tests/cam/test_coverage.py"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, float):
            found.update({f"{node:.3f}", f"{node:.2f}", f"{100 * node:.1f}"})

    for name in files:
        path = REPO / name
        if not path.is_file():  # a tracked output a running `dvc repro` is rewriting
            continue
        if name.endswith(".json"):
            walk(json.loads(path.read_text()))
        elif name.endswith((".md", ".py")):
            found.update(re.findall(r"\d+\.\d+", path.read_text()))
    return found


def test_every_number_in_the_results_section_comes_from_a_committed_file():
    text = (REPO / "README.md").read_text()
    section = text.split("## Results on the built-in synthetic set", 1)[1].split("\n## ", 1)[0]
    numbers = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", section))
    missing = sorted(numbers - _committed_numbers())
    assert not missing, f"README results quote numbers no committed report holds: {missing}"
