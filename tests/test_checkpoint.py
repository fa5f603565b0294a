"""gain/runtime/checkpoint.py: identical content gives identical bytes, NaN is never written, a damaged
resume checkpoint falls back to the one before it, and files are world-readable."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from torch import nn

from gain.runtime.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_resumable,
    previous,
    save_checkpoint,
)


def state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {"model": nn.Linear(3, 2).state_dict(), "step": 7, "history": [{"step": 7, "map": 0.5}]}


def test_two_saves_of_one_state_are_byte_identical(tmp_path):
    s = state()
    save_checkpoint(tmp_path / "a.pt", s)
    save_checkpoint(tmp_path / "other-name.pt", s)
    save_checkpoint(tmp_path / "a2.pt", state())  # same values, new tensors
    a = (tmp_path / "a.pt").read_bytes()
    assert a == (tmp_path / "other-name.pt").read_bytes() == (tmp_path / "a2.pt").read_bytes()
    save_checkpoint(tmp_path / "b.pt", state(seed=1))
    assert (tmp_path / "b.pt").read_bytes() != a


def test_torch_save_to_a_path_names_the_archive_after_the_file(tmp_path):
    """Why checkpoint.py saves through a file object: a plain torch.save differs by file name alone."""
    torch.save(state(), tmp_path / "x.pt")
    torch.save(state(), tmp_path / "y.pt")
    assert (tmp_path / "x.pt").read_bytes() != (tmp_path / "y.pt").read_bytes()


def test_non_finite_weights_are_refused_and_the_old_file_kept(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, state())
    before = path.read_bytes()
    bad = state()
    bad["model"]["weight"][0, 1] = float("nan")
    with pytest.raises(CheckpointError, match=r"last.pt: not written, model.weight holds NaN or inf"):
        save_checkpoint(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_files_are_0644(tmp_path):
    old = os.umask(0o077)  # even a strict umask: the file is meant to be shared (DVC cache, MLflow server)
    try:
        save_checkpoint(tmp_path / "m.pt", state())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o644


def test_truncated_last_falls_back_to_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, state(), keep_previous=True)
    later = state(seed=3)
    later["step"] = 9
    save_checkpoint(path, later, keep_previous=True)
    assert load_checkpoint(previous(path))["step"] == 7
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    loaded, source, note = load_resumable(path)
    assert loaded["step"] == 7 and source == previous(path)
    assert note.startswith(f"{path}: unreadable checkpoint (") and "\n" not in note
    assert "delete it" not in note and "resuming" not in note  # the caller says what it does next


def test_nothing_readable_says_so_and_starts_over(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    loaded, source, note = load_resumable(path)
    assert loaded is None and source is None
    assert note.startswith(f"{path}: unreadable checkpoint") and "\n" not in note
    assert load_resumable(tmp_path / "missing.pt") == (None, None, "")


def test_missing_model_file_names_the_stage_to_run(tmp_path):
    with pytest.raises(CheckpointError, match=r"model.pt: file not found; run the stage"):
        load_checkpoint(tmp_path / "model.pt")
