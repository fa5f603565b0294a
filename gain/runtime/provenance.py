"""Where a stage runs from, read from git and DVC: the repo root, the git commit, the DVC process and its
command line, an id shared by every stage of one pipeline execution, and the params changed from a commit.

Nothing here talks to MLflow; gain/runtime/tracking.py turns these into run tags and report.md's provenance.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import yaml

from gain.runtime.params import DVC_PARAMS, Params, flatten, parse_params, section_dict


def repo_root() -> Path:
    """DVC_ROOT if DVC runs us (also in temp experiment folders), else the nearest folder with dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file():
            return d
    return here


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: Path) -> str:
    """HEAD of the repo (inside a DVC experiment: its baseline commit), or "unknown"."""
    return (_git(root, "rev-parse", "HEAD") or "unknown").strip() or "unknown"


def _dvc_process():
    """The nearest ancestor process that is DVC (`dvc repro`, `dvc exp run`, a queue's `dvc exp exec-run`)."""
    import psutil

    proc = psutil.Process().parent()
    while proc is not None:
        argv = proc.cmdline()
        head = " ".join(argv[:3])
        if "dvc" in Path(argv[0] if argv else "").name or " -m dvc" in head or "/dvc " in head + " ":
            return proc
        proc = proc.parent()
    return None


def pipeline_id() -> str:
    """An id shared by every stage of one `dvc repro` / `dvc exp run`: the DVC process that spawned us (and
    the DVC experiment name, so two queued experiments never share one).

    `GAIN_PIPELINE_ID` overrides it; a stage run by hand outside DVC gets a fresh id.
    """
    if os.environ.get("GAIN_PIPELINE_ID"):
        return os.environ["GAIN_PIPELINE_ID"]
    try:
        proc = _dvc_process()
        if proc is not None:
            exp = os.environ.get("DVC_EXP_NAME", "")
            return f"dvc-{proc.pid}-{int(proc.create_time() * 1000)}" + (f"-{exp}" if exp else "")
    except Exception:  # psutil missing or a process vanished: fall back to a fresh id
        pass
    return f"manual-{uuid.uuid4().hex[:12]}"


def dvc_command() -> str:
    """The command line of the DVC process running this stage (`dvc exp run --temp -S gain.alpha=0`);
    "" outside DVC. A queued experiment shows as DVC's own `dvc exp exec-run ...`."""
    try:
        proc = _dvc_process()
        argv = proc.cmdline() if proc is not None else []
    except Exception:
        return ""
    for i, arg in enumerate(argv):
        if Path(arg).name == "dvc" or arg == "dvc":
            return " ".join(["dvc", *argv[i + 1 :]])
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] == "dvc":
            return " ".join(["dvc", *argv[i + 2 :]])
    return " ".join(argv)


def param_overrides(params: Params, root: Path, rev: str) -> list[str]:
    """`key=value` for every DVC param that differs from params.yaml at git revision `rev` (what `-S` or an
    edit changed), sorted; [] when that file cannot be read."""
    text = _git(root, "show", f"{rev}:params.yaml")
    if not text:
        return []
    try:
        base = flatten(section_dict(parse_params(yaml.safe_load(text), f"{rev}:params.yaml"), DVC_PARAMS))
    except Exception:  # the baseline's params.yaml follows an older schema
        return []
    now = flatten(section_dict(params, DVC_PARAMS))
    return [f"{k}={v}" for k, v in sorted(now.items()) if base.get(k) != v]
