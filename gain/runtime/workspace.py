"""A throw-away copy of the project in which `dvc repro` runs as in a fresh clone: the end-to-end tests and
the benchmarks' pipeline timing each make one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gain.runtime.codebase import REPO

BIN = Path(sys.executable).parent  # the environment running this process: its dvc and python


def copy_project(dest: Path) -> Path:
    """The project's files (tracked, and untracked but not ignored, as `git ls-files` lists them; no outputs
    under reports/, no dvc.lock) copied into `dest`. `.venv` there links to the environment running this
    process, as a user's checkout has its own (stages/python looks for it there). Commit with `commit_all`."""
    ls = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    for f in subprocess.run(ls, cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines():
        if (REPO / f).is_file() and not f.startswith(("reports/", "dvc.lock")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    (dest / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    return dest


def project_env(repo: Path, *, threads: int, who: str) -> dict[str, str]:
    """This process's environment for commands in the copy `repo`: no MLflow, DVC or project settings
    inherited, DVC's site cache inside the copy, this environment's bin first on PATH, `threads` OpenMP
    threads per process, and git commits signed by `who`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GAIN_"))}
    env |= {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo / ".dvc_site_cache")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    env |= {"OMP_NUM_THREADS": str(threads)}
    for role in ("AUTHOR", "COMMITTER"):
        env |= {f"GIT_{role}_NAME": who, f"GIT_{role}_EMAIL": f"{who}@example.com"}
    return env


def commit_all(repo: Path, env: dict[str, str], message: str) -> None:
    """`repo` made a git repository with everything in it committed on branch main."""
    for git in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", message]):
        subprocess.run(["git", *git], cwd=repo, check=True, env=env)
