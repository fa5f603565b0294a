"""README.md shows the experiment commands that tests/test_pipeline.py runs as printed (in a shell without the
venv on PATH), so a reader can paste them."""

from __future__ import annotations

from tests.pipeline_utils import README_EXPERIMENT, REPO


def test_readme_prints_the_tested_experiment_lines():
    lines = {line.split("#")[0].strip() for line in (REPO / "README.md").read_text().splitlines()}
    missing = [cmd for cmd in README_EXPERIMENT if cmd not in lines]
    assert not missing, (
        f"README.md no longer shows {missing}; update it or tests/pipeline_utils.py README_EXPERIMENT"
    )
