"""gain/cam/train.py: GAIN ships its last step by default, and with `gain.select: heldout` the epoch with the
best mAP on training ids it never trained on (never val); its model file records trunk, head and CAM."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gain.cam import train as gain_train
from gain.cam.model import load_classifier
from gain.cam.train import train_gain
from gain.data.dataset import synthetic_dataset_index
from gain.data.heldout import carve_heldout
from gain.data.synthetic import SyntheticConfig, generate
from gain.models.backbones import SmallTrunk
from gain.runtime.device import CPU, seed_everything
from gain.runtime.params import load_params
from gain.runtime.stage import save_model
from gain.runtime.tracking import NullRun
from tests.tensor_utils import record_dataset_ids, single_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("gain_select") / "VOC2012"
    cfg = SyntheticConfig(num_classes=3, image_size=32, n_train=10, n_val=4, n_bias_eval=1, pixel_labelled=0)
    generate(root, cfg, progress=False)
    return synthetic_dataset_index(root)


def run(index, tmp_path, monkeypatch, **overrides):
    """Train a tiny GAIN with `overrides`; -> (FitResult, the id lists VOCDataset was built with in order)."""
    p = replace(
        SHIPPED.gain,
        input_size=32,
        batch_size=5,
        epochs=3,
        warmup_epochs=1,
        heldout_fraction=0.2,
        **overrides,
    )
    seen = record_dataset_ids(monkeypatch, gain_train)
    seed_everything(0, True)
    result, _ = train_gain(
        p,
        index,
        CPU,
        NullRun(),
        seed=0,
        knobs=replace(SHIPPED.runtime, vis_images=0),
        ckpt_dir=tmp_path / "ckpt",
        fingerprint="gain",
    )
    return result, seen


def test_gain_ships_the_last_step_by_default(index, tmp_path, monkeypatch):
    result, (train_ids, val_ids, held_ids) = run(index, tmp_path, monkeypatch, select="last")
    assert train_ids == index.splits["weak_train"] and held_ids == [] and val_ids == index.splits["val"]
    assert result.step == 6 and result.chosen["step"] == 6
    assert all("heldout_map" not in h for h in result.history)
    # The model file records what rebuilding the classifier and its attention needs, and is rebuilt from it.
    g = SHIPPED.gain
    assert result.meta["trunk"] == SmallTrunk.spec.record() and result.meta["head"] == g.head
    assert result.meta["cam"] == {"method": "grad_cam", "layer": "trunk", "sigma": g.sigma, "omega": g.omega}
    save_model(tmp_path / "model.pt", result)
    classifier, params = load_classifier(tmp_path / "model.pt")
    assert params == result.meta["params"]
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, result.model_state[f"classifier.{key}"]), key


def test_gain_heldout_selection_trains_without_the_heldout_ids_and_ships_their_best_epoch(
    index, tmp_path, monkeypatch
):
    result, (train_ids, val_ids, held_ids) = run(index, tmp_path, monkeypatch, select="heldout")
    _, expected_held = carve_heldout(index.splits["weak_train"], 0.2, 0)
    assert held_ids == expected_held and len(held_ids) == 2
    assert not set(train_ids) & set(held_ids) and len(train_ids) == 8
    assert val_ids == index.splits["val"]  # val stays a monitoring curve
    scores = [h["heldout_map"] for h in result.history]
    assert len(scores) == 3 and all("map" in h for h in result.history)
    assert result.chosen["step"] == result.history[int(np.nanargmax(scores))]["step"]
