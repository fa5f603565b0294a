"""Launched by torchrun in tests/runtime/test_engine.py: the gain stage's run() (stages/gain.py) on 2 CPU ranks (gloo),
then each rank saves the weights it trained so the test can compare them."""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch

import stages.gain
from gain.data.dataset import DatasetIndex
from gain.runtime import layout
from gain.runtime.device import Runtime, seed_everything, setup_runtime, teardown_runtime
from gain.runtime.params import load_params
from gain.runtime.tracking import stage_run


@dataclass(frozen=True)
class PlacingRuntime(Runtime):
    """The runtime of this rank, keeping each model placed on it (Runtime.place, which `fit` calls with
    the model it trains): after run(), the weights this rank ended with, on every rank, not only rank 0's
    model file."""

    placed: list = field(default_factory=list, compare=False)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        self.placed.append(model)
        return super().place(model)


def main(out: Path) -> None:
    params = load_params()
    rt = PlacingRuntime(**vars(setup_runtime("cpu")))
    seed_everything(params.seed, params.deterministic)
    index = DatasetIndex.load(layout.INDEX)
    with stage_run("gain", params, enabled=rt.is_main) as tracker:
        if tracker.run_id is not None:
            mlflow.set_tag("rank", str(rt.rank))
        stages.gain.run(params, index, rt=rt, tracker=tracker)
    (model,) = rt.placed
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / f"rank{rt.rank}.pt")
    teardown_runtime()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
