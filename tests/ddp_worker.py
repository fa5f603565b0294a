"""Launched by torchrun in tests/test_engine.py: the gain stage's training on 2 CPU ranks (gloo), then each
rank saves its weights so the test can compare them."""

import sys
from pathlib import Path

import mlflow
import torch

from gain.cam.train import train_gain
from gain.data.dataset import DatasetIndex
from gain.runtime.device import seed_everything, setup_runtime, teardown_runtime
from gain.runtime.params import load_params
from gain.runtime.tracking import stage_run


def main(out: Path) -> None:
    params = load_params()
    rt = setup_runtime("cpu")
    seed_everything(params.seed, params.deterministic)
    index = DatasetIndex.load("data/dataset/index.json")
    with stage_run("gain", params, enabled=rt.is_main) as run:
        if run.run_id is not None:
            mlflow.set_tag("rank", str(rt.rank))
        _, model = train_gain(
            params.gain,
            index,
            rt,
            run,
            seed=params.seed,
            knobs=params.runtime,
            ckpt_dir=Path("checkpoints/gain"),
            fingerprint="ddp",
        )
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"rank{rt.rank}.pt")
    teardown_runtime()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
