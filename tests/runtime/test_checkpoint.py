"""gain/runtime/checkpoint.py: identical content gives identical bytes, NaN is never written, a damaged
resume checkpoint falls back to the one before it, and files are world-readable. Model files record what
rebuilding their network needs (GAIN: trunk, head, CAM; SEC: trunk), and are rebuilt from that record, or
from their params when they were written before it."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from gain.cam.model import GAIN, Classifier, gain_record, load_classifier, read_gain_record, trunk_state
from gain.models.backbones import SmallTrunk, WeightsError
from gain.runtime.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_resumable,
    previous,
    save_checkpoint,
)
from gain.runtime.errors import InputError
from gain.runtime.params import load_params
from gain.sec.model import LargeFOV, build_sec, load_segmenter

SEC = load_params(Path(__file__).resolve().parents[2] / "params.yaml").sec
CLASSES = ["background", "a", "b", "c"]
SMALL = {"name": "small", "dilated": False, "out_channels": 128, "stride": 8, "align_corners": False}


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


# ---------------------------------------------------------------- model files record what rebuilding needs


def small_gain() -> GAIN:
    torch.manual_seed(0)
    return GAIN(Classifier("small", len(CLASSES) - 1), sigma=0.5, omega=5.0)


def write(path: Path, model: nn.Module, params: dict, record: dict | None = None) -> Path:
    save_checkpoint(
        path, {"model": model.state_dict(), "params": params, "classes": CLASSES, **(record or {})}
    )
    return path


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gain_model_file_records_trunk_head_and_cam_and_is_rebuilt_from_them(tmp_path):
    model = small_gain()
    record = gain_record(model)
    assert record == {
        "trunk": {**SMALL, "native_size": 112},
        "head": "gap",
        "cam": {"method": "grad_cam", "layer": "trunk", "sigma": 0.5, "omega": 5.0},
    }
    # The record alone rebuilds it: params that name another backbone and head are not read for that.
    path = write(
        tmp_path / "gain.pt", model, {"backbone": "vgg16", "head": "vgg_fc", "input_size": 32}, record
    )
    classifier, p = load_classifier(path)
    assert p["input_size"] == 32 and isinstance(classifier.trunk, SmallTrunk)
    assert_same_weights(classifier, model.classifier)


def test_gain_model_file_written_before_the_record_is_rebuilt_from_its_params(tmp_path):
    model = small_gain()
    path = write(tmp_path / "old.pt", model, {"backbone": "small", "sigma": 0.5, "omega": 5.0})  # no head yet
    assert read_gain_record(load_checkpoint(path), path) == {
        "trunk": {"name": "small", "dilated": False},
        "head": "gap",
        "cam": {"method": "grad_cam", "layer": "trunk", "sigma": 0.5, "omega": 5.0},
    }
    classifier, _ = load_classifier(path)
    assert_same_weights(classifier, model.classifier)
    with pytest.raises(CheckpointError, match=r"older.pt: records neither its trunk nor params.backbone"):
        load_classifier(write(tmp_path / "older.pt", model, {"input_size": 32}))


def test_a_record_this_code_does_not_build_is_refused_naming_the_file(tmp_path):
    model = small_gain()
    record = gain_record(model)
    odd_trunk = {**record, "trunk": {**record["trunk"], "stride": 4}}
    with pytest.raises(WeightsError, match=r"gain.pt: records the trunk .*'stride': 4.* this code builds"):
        load_classifier(write(tmp_path / "gain.pt", model, {}, odd_trunk))
    odd_cam = {**record, "cam": {**record["cam"], "method": "score_cam"}}
    with pytest.raises(CheckpointError, match=r"cam.pt: records the attention .*score_cam"):
        load_classifier(write(tmp_path / "cam.pt", model, {}, odd_cam))


def test_sec_starts_from_the_trunk_of_a_gain_file_new_or_old(tmp_path):
    model = small_gain()
    assert trunk_state({"model": model.state_dict()}).keys() == model.classifier.trunk.state_dict().keys()
    p = replace(SEC, backbone="small", init="gain")
    new = write(tmp_path / "new.pt", model, {"backbone": "small"}, gain_record(model))
    old = write(tmp_path / "old.pt", model, {"backbone": "small"})
    for path in (new, old):
        assert_same_weights(build_sec(p, len(CLASSES), path).trunk, model.classifier.trunk)
    other = {**gain_record(model), "trunk": {**SMALL, "name": "vgg16"}}
    with pytest.raises(InputError, match="sec.backbone == gain.backbone, got 'small' and 'vgg16'"):
        build_sec(p, len(CLASSES), write(tmp_path / "vgg.pt", model, {"backbone": "small"}, other))


def test_sec_model_file_records_its_trunk_and_is_rebuilt_from_it(tmp_path):
    torch.manual_seed(0)
    net = LargeFOV("small", len(CLASSES))
    trunk = net.trunk.spec.record()
    loaded, p = load_segmenter(write(tmp_path / "sec.pt", net, {"input_size": 32}, {"trunk": trunk}))
    assert p == {"input_size": 32} and loaded.trunk.spec.record() == trunk
    assert_same_weights(loaded, net)
    old, _ = load_segmenter(write(tmp_path / "old.pt", net, {"backbone": "small"}))  # before the record
    assert_same_weights(old, net)
    with pytest.raises(CheckpointError, match=r"older.pt: records neither its trunk nor params.backbone"):
        load_segmenter(write(tmp_path / "older.pt", net, {"input_size": 32}))
    with pytest.raises(WeightsError, match=r"odd.pt: records the trunk .*'align_corners': True"):
        load_segmenter(write(tmp_path / "odd.pt", net, {}, {"trunk": {**trunk, "align_corners": True}}))
