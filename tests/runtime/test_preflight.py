"""gain/runtime/preflight.py and io.outputs_together: a training stage names an unwritable folder or a
short disk before its first step, and never replaces its model file unless every output can be written.
(Tests run as root, for whom a chmod'ed folder stays writable: read-only folders are a file where a folder
should be, a refused os.access, or a failing write.)"""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

from gain.runtime import preflight
from gain.runtime.device import CPU
from gain.runtime.errors import StageError
from gain.runtime.io import atomic_path, outputs_together, write_json, write_text
from gain.runtime.loop import Loop, Schedule, fit
from gain.runtime.preflight import (
    PreflightError,
    check_space,
    check_training_outputs,
    check_writable,
    model_bytes,
)
from gain.runtime.tracking import NullRun

Usage = namedtuple("Usage", "total used free")


def test_a_file_where_an_output_folder_should_be_is_named(tmp_path):
    (tmp_path / "reports").write_text("")
    with pytest.raises(
        PreflightError, match=r"reports/sec/metrics.json: cannot be written, .*reports is a file"
    ):
        check_writable([tmp_path / "reports/sec/metrics.json"])


def test_a_folder_without_write_permission_is_named(tmp_path, monkeypatch):
    sec = tmp_path / "reports/sec"
    sec.mkdir(parents=True)
    real = preflight.os.access
    monkeypatch.setattr(preflight.os, "access", lambda p, mode: False if Path(p) == sec else real(p, mode))
    check_writable([tmp_path / "models/sec/model.pt"])  # its nearest existing folder is tmp_path: fine
    with pytest.raises(PreflightError) as e:
        check_writable([tmp_path / "models/sec/model.pt", sec / "history.csv"])
    assert (
        str(e.value)
        == f"{sec}: not writable (permission denied); the stage writes {sec / 'history.csv'} there"
    )


def test_a_read_only_file_system_is_found_by_a_real_write(tmp_path, monkeypatch):
    def refuse(**kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(PreflightError, match=r"not writable \(Read-only file system\)"):
        check_writable([tmp_path / "model.pt"])


def test_a_short_disk_names_the_folder_and_the_bytes(tmp_path, monkeypatch):
    seen = []

    def usage(path):
        seen.append(Path(path))
        return Usage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    model = nn.Linear(10, 10)  # 110 float32 = 440 bytes
    assert model_bytes(model) == 440
    with pytest.raises(PreflightError) as e:
        check_training_outputs(
            model, [tmp_path / "models/model.pt", tmp_path / "r/m.json"], tmp_path / "ck", selects=False
        )
    need = 2 * 440 + preflight.REPORT_BYTES + 2 * 440 * preflight.CHECKPOINT_COPIES
    assert str(e.value).startswith(f"{tmp_path}: 1,000 bytes free, training (a 440-byte model")
    assert f"needs about {need:,} bytes there" in str(e.value)
    assert seen == [tmp_path]  # one file system: summed once
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 0, need))
    check_training_outputs(
        model, [tmp_path / "models/model.pt", tmp_path / "r/m.json"], tmp_path / "ck", selects=False
    )
    with pytest.raises(PreflightError):
        check_space({tmp_path / "a": need + 1}, "this")


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i))}


def test_fit_checks_before_the_first_step(tmp_path):
    """A read-only report folder stops training before any step or checkpoint."""
    model = nn.Linear(2, 1)
    steps = []

    def step_fn(net, batch, step):
        steps.append(step)
        return {"total": net(batch["x"]).pow(2).mean()}

    loop = Loop(model, torch.optim.SGD(model.parameters(), lr=0.01), Toy(), step_fn, lambda s: 0.01)
    (tmp_path / "reports").write_text("")  # reports/sec cannot be created
    with pytest.raises(PreflightError, match="reports is a file"):
        fit(
            loop, Schedule(total_steps=2, batch_size=2, eval_every=10, ckpt_every=1, seed=0), rt=CPU,
            tracker=NullRun(), ckpt_dir=tmp_path / "ck", fingerprint="f",
            outputs=[tmp_path / "models/model.pt", tmp_path / "reports/sec/metrics.json"],
        )  # fmt: skip
    assert steps == [] and not (tmp_path / "ck").exists()


def test_outputs_together_replace_nothing_when_one_write_fails(tmp_path):
    model = tmp_path / "models/model.pt"
    write_text(model, "old weights")
    (tmp_path / "reports").write_text("")  # the report's folder cannot be made
    with pytest.raises(StageError, match="reports/sec/metrics.json: not written"):
        with outputs_together():
            write_text(model, "new weights")
            write_json(tmp_path / "reports/sec/metrics.json", {"miou": 1.0})
    assert model.read_text() == "old weights"
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.pt"]  # no temporary file left


def test_outputs_together_lands_every_file_at_the_end(tmp_path):
    with outputs_together():
        write_text(tmp_path / "a.txt", "a")
        write_json(tmp_path / "r/b.json", {"b": 1})
        assert not (tmp_path / "a.txt").exists()
    assert (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "r/b.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "r"]


def test_a_disk_that_fills_during_a_write_names_the_file_not_a_code_line(tmp_path):
    path = tmp_path / "models/model.pt"
    write_text(path, "old weights")
    with pytest.raises(StageError) as e:
        with atomic_path(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value) == f"{path}: not written (the disk is full); any earlier model.pt is kept, unchanged"
    assert path.read_text() == "old weights" and sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    (tmp_path / "reports").write_text("")
    with pytest.raises(StageError, match=r"reports/m.json: not written \((Not a directory|File exists)\)"):
        write_json(tmp_path / "reports/m.json", {})
