"""gain/runtime/codebase.py: a stage's resume fingerprint covers exactly the code the stage imports (the
closure dvc.yaml lists), so an edit elsewhere (the study's report, another stage) keeps its checkpoints."""

import shutil

import gain.runtime.codebase as codebase
from gain.runtime.codebase import closure, code_fingerprint


def copy_repo(tmp_path, monkeypatch):
    for folder in ("gain", "stages"):
        shutil.copytree(codebase.REPO / folder, tmp_path / folder)
    monkeypatch.setattr(codebase, "REPO", tmp_path)
    return tmp_path


def test_the_fingerprint_follows_the_closure_and_nothing_else(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path, monkeypatch)
    files = closure("stages.sec")
    assert {"stages/sec.py", "gain/sec/train.py", "gain/runtime/loop.py"} <= set(map(str, files))
    assert "gain/study/report.py" not in set(map(str, files))
    before = code_fingerprint("stages.sec")

    with open(repo / "gain/study/report.py", "a") as f:  # outside the sec stage's closure
        f.write("\n# an edit\n")
    assert code_fingerprint("stages.sec") == before

    with open(repo / "gain/sec/losses.py", "a") as f:  # inside it
        f.write("\n# an edit\n")
    assert code_fingerprint("stages.sec") != before
