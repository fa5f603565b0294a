"""The shared training loop: bit-exact resume after a kill, the NaN guard, checkpoints, DDP on 2 CPU ranks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gain.runtime.checkpoint import load_checkpoint
from gain.runtime.device import CPU
from gain.runtime.loop import Loop, NonFiniteLoss, Schedule, fit
from gain.runtime.tracking import NullRun
from tests.pipeline_utils import BIN, REPO, dvc, env_for, make_repo, python


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i)), "index": i}


def toy_fit(tmp_path: Path, step_fn, total: int = 6, ckpt_every: int = 1):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    loop = Loop(model=model, optimizer=opt, dataset=Toy(), step_fn=step_fn, lr_at=lambda s: 0.01)
    schedule = Schedule(total_steps=total, batch_size=4, eval_every=100, ckpt_every=ckpt_every, seed=0)
    return model, fit(loop, schedule, rt=CPU, tracker=NullRun(), ckpt_dir=tmp_path, fingerprint="f")


def test_nan_loss_stops_with_step_and_name_and_keeps_last_good_checkpoint(tmp_path):
    def step_fn(model, batch, step):
        loss = model(batch["x"]).mean() ** 2
        am = loss * float("nan") if step == 3 else loss * 0
        return {"cl": loss, "am": am, "total": loss + am}

    with pytest.raises(NonFiniteLoss, match=r"step 3: loss 'am' is nan"):
        toy_fit(tmp_path, step_fn)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoint_written_atomically_and_loads_weights_only(tmp_path):
    def step_fn(model, batch, step):
        loss = model(batch["x"]).pow(2).mean()
        return {"total": loss}

    model, res = toy_fit(tmp_path, step_fn)
    assert res.step == 6
    # no temp files left behind; the checkpoint before the last is kept for a damaged last.pt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.prev"]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(state["model"]["weight"], model.weight.detach())


def test_resume_in_process_matches_uninterrupted(tmp_path):
    def step_fn(model, batch, step):
        return {"total": (model(batch["x"]) - 1).pow(2).mean() + 0.01 * torch.randn(()) ** 2}

    torch.manual_seed(0)
    full, _ = toy_fit(tmp_path / "full", step_fn, total=9)
    torch.manual_seed(0)
    toy_fit(tmp_path / "cut", step_fn, total=4)  # "killed" after step 4: a later run continues to 9
    torch.manual_seed(123)  # a different RNG state in the resuming process must not matter
    resumed, res = toy_fit(tmp_path / "cut", step_fn, total=9)
    assert res.resumed_from == 4
    assert torch.equal(full.weight, resumed.weight) and torch.equal(full.bias, resumed.bias)


GAIN_RESUME = {"gain": {"epochs": 4, "batch_size": 2}, "runtime": {"gain_ckpt_every": 1}}


@pytest.mark.e2e
def test_gain_stage_killed_midway_resumes_to_identical_weights(tmp_path):
    """SIGKILL the real stage after a mid-run checkpoint, re-run it: same final weights, bit for bit."""
    repo = make_repo(tmp_path / "killed", GAIN_RESUME)
    dvc(repo, "repro", "data")
    env = env_for(repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.gain"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = repo / "checkpoints/gain/last.pt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = torch.load(last, weights_only=True)["step"]
            except Exception:  # being replaced right now
                step = 0
            if step >= 5:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at < 32, "the run was not interrupted mid-way"
    resumed = python(repo, "-m", "stages.gain")
    # (a checkpoint or two may land between reading the step and the signal; a kill between keeping the
    # previous checkpoint and putting the new one in place resumes from last.pt.prev, by design)
    found = re.search(r"resuming from checkpoints/gain/last\.pt(?:\.prev)? at step (\d+)/32", resumed.stdout)
    assert found, resumed.stdout
    step = int(found.group(1))
    assert killed_at <= step < 32

    clean = make_repo(tmp_path / "clean", GAIN_RESUME)
    dvc(clean, "repro", "data")
    python(clean, "-m", "stages.gain")
    a = torch.load(repo / "models/gain/model.pt", weights_only=True)["model"]
    b = torch.load(clean / "models/gain/model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Byte-identical files: DVC sees the same model, so nothing downstream re-runs because of the resume.
    for name in ("models/gain/model.pt", "reports/gain/metrics.json", "reports/gain/history.csv"):
        assert (repo / name).read_bytes() == (clean / name).read_bytes(), name


@pytest.mark.e2e
def test_ddp_two_cpu_ranks_identical_weights_and_rank1_logs_nothing(tmp_path):
    repo = make_repo(tmp_path / "ddp", {"gain": {"epochs": 1, "batch_size": 2}})
    dvc(repo, "repro", "data")
    out = tmp_path / "ranks"
    env = env_for(repo) | {"OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "tests.ddp_worker", str(out)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # The worker trains through the gain stage's run() (stages/gain.py): rank 0 shipped its weights as the
    # stage's model file, beside the stage's reports.
    shipped = torch.load(repo / "models/gain/model.pt", weights_only=True)["model"]
    assert shipped.keys() == w0.keys() and all(torch.equal(shipped[k], w0[k]) for k in w0)
    assert (repo / "reports/gain/metrics.json").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gain-sec")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'gain'")
    assert len(runs) == 1  # rank 0's run only
    ranks_logged = {r.data.tags.get("rank") for r in runs}
    assert ranks_logged == {"0"}


@pytest.mark.parametrize("train_crf", ["lattice", "exact"])
def test_sec_training_resumes_to_identical_weights(tmp_path, train_crf):
    """SEC (dropout, CRF constrain loss with either training CRF) through the same loop: 4 + 4 resumed steps ==
    8 straight steps."""
    from dataclasses import replace

    from gain.data.dataset import synthetic_dataset_index
    from gain.data.synthetic import SyntheticConfig, generate
    from gain.runtime.device import seed_everything
    from gain.runtime.params import load_params
    from gain.sec.train import train_sec

    root = tmp_path / "VOC2012"
    generate(
        root,
        SyntheticConfig(num_classes=3, image_size=48, n_train=8, n_val=2, n_bias_eval=1, pixel_labelled=0),
        progress=False,
    )
    index = synthetic_dataset_index(root)
    shipped = load_params(REPO / "params.yaml")
    p = replace(
        shipped.sec,
        init="none",
        input_size=48,
        batch_size=4,
        iterations=8,
        eval_every=100,
        train_crf=train_crf,
    )
    knobs = replace(shipped.runtime, sec_ckpt_every=1, crf_workers=0)
    seeds = root / "SegmentationClass"  # perfect seeds are enough to exercise the loop

    def run(ckpt, iterations):
        seed_everything(0, True)
        _, model = train_sec(
            replace(p, iterations=iterations),
            index,
            CPU,
            NullRun(),
            seed=0,
            knobs=knobs,
            seeds_dir=seeds,
            gain_model=None,
            ckpt_dir=ckpt,
            fingerprint="sec",
        )
        return model.state_dict()

    straight = run(tmp_path / "a", 8)
    run(tmp_path / "b", 4)
    resumed = run(tmp_path / "b", 8)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 8
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
