"""Helpers for end-to-end tests: a throw-away copy of the repo with a tiny config, and subprocess runners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from gain.runtime.params import read_yaml
from gain.runtime.workspace import BIN, commit_all, copy_project, project_env

REPO = Path(__file__).resolve().parents[1]

# A pipeline small enough for tests (seconds per stage) that still exercises every code path.
TINY = {
    "data": {
        "synthetic": {
            "num_classes": 3,
            "image_size": 48,
            "n_train": 16,
            "n_val": 6,
            "n_bias_eval": 4,
            "max_objects": 2,
            "pixel_labelled": 4,
        }
    },
    "gain": {"input_size": 48, "batch_size": 4, "epochs": 2, "warmup_epochs": 1},
    "sec": {"input_size": 48, "batch_size": 4, "iterations": 6, "lr_step": 4, "eval_every": 3},
    "runtime": {
        "mlflow": {"log_models": False},  # the pt2 export costs ~10 s a stage; tests that need it turn it on
        "gain_ckpt_every": 2,
        "sec_ckpt_every": 2,
        "seeds_batch_size": 8,
        "crf_workers": 0,
        "vis_images": 2,
    },
}


# The README's ablation lines: tests/pipeline/test_pipeline.py runs them as printed in a shell without the venv on
# PATH, tests/test_readme.py checks that README.md shows them.
README_EXPERIMENT = [
    ".venv/bin/dvc exp run --temp -n gradcam -S gain.alpha=0",
    ".venv/bin/dvc exp show --only-changed",
]


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def write_params(repo: Path, overrides: dict) -> None:
    path = repo / "params.yaml"
    params = read_yaml(path)
    path.write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))


def make_repo(dest: Path, overrides: dict | None = None) -> Path:
    """A copy of the project (gain.runtime.workspace.copy_project) with TINY + overrides, committed."""
    copy_project(dest)
    write_params(dest, deep_update(yaml.safe_load(yaml.safe_dump(TINY)), overrides or {}))
    commit_all(dest, env_for(dest), "test copy")
    return dest


def env_for(repo: Path) -> dict:
    return project_env(repo, threads=2, who="test")


def run(cmd: list[str], repo: Path, *, check: bool = True, timeout: float = 600, env: dict | None = None):
    res = subprocess.run(
        cmd, cwd=repo, env=env or env_for(repo), capture_output=True, text=True, timeout=timeout
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


def dvc(repo: Path, *args: str, **kw):
    return run([str(BIN / "dvc"), *args], repo, **kw)


def python(repo: Path, *args: str, **kw):
    return run([sys.executable, *args], repo, **kw)
