"""gain/runtime/provenance.py: the repo root, the DVC command line and the params changed from a commit, read
from the environment, the process tree and git (no MLflow store)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from gain.runtime.params import load_params, parse_params, read_yaml
from gain.runtime.provenance import dvc_command, param_overrides, repo_root
from tests.pipeline_utils import deep_update

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def test_repo_root_is_the_folder_with_dvc_yaml(tmp_repo, monkeypatch):
    (tmp_repo / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_repo / "sub" / "dir")
    assert repo_root() == tmp_repo.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_repo / "sub"))
    assert repo_root() == (tmp_repo / "sub").resolve()


def test_dvc_command_reads_the_dvc_process_command_line(monkeypatch):
    import gain.runtime.provenance as provenance

    for argv, shown in [
        (["/x/.venv/bin/python3.11", "/x/.venv/bin/dvc", "exp", "run", "--temp", "-S", "gain.alpha=0"],
         "dvc exp run --temp -S gain.alpha=0"),
        (["python", "-m", "dvc", "repro"], "dvc repro"),
        (["dvc", "exp", "exec-run", "--infofile", "f.run"], "dvc exp exec-run --infofile f.run"),
    ]:  # fmt: skip
        monkeypatch.setattr(
            provenance, "_dvc_process", lambda argv=argv: SimpleNamespace(cmdline=lambda: argv)
        )
        assert dvc_command() == shown
    monkeypatch.setattr(provenance, "_dvc_process", lambda: None)
    assert dvc_command() == ""


def test_param_overrides_name_what_differs_from_a_commit(tmp_repo, params):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    shutil.copyfile(REPO / "params.yaml", tmp_repo / "params.yaml")
    subprocess.run([*git, "init", "-q"], cwd=tmp_repo, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=tmp_repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_repo, check=True)
    assert param_overrides(params, tmp_repo, "HEAD") == []
    changed = parse_params(
        deep_update(
            read_yaml(REPO / "params.yaml"),
            {"gain": {"alpha": 0.0}, "sec": {"lr": 0.004}, "runtime": {"workers": 3}},
        )
    )
    assert param_overrides(changed, tmp_repo, "HEAD") == ["gain.alpha=0.0", "sec.lr=0.004"]
    assert param_overrides(changed, tmp_repo, "no-such-rev") == []
