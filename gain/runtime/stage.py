"""What a training stage wraps around `fit`: its device and MLflow run, the resume fingerprint, and the
files it hands on (the model file and its reports)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from gain.runtime.checkpoint import save_checkpoint
from gain.runtime.codebase import code_fingerprint
from gain.runtime.device import Runtime, seed_everything, setup_runtime, teardown_runtime
from gain.runtime.io import atomic_path, write_json
from gain.runtime.loop import FitResult
from gain.runtime.params import STAGE_PARAMS, Params, params_hash, section_dict
from gain.runtime.tracking import NullRun, stage_run


@contextmanager
def training_stage(stage: str, params: Params) -> Iterator[tuple[Runtime, NullRun]]:
    """Device (DDP process group under torchrun), seeding and the stage's MLflow run (rank 0 only) of a
    training stage; the process group is left however the block ends. -> (runtime, tracker)."""
    rt = setup_runtime(params.device)
    seed_everything(params.seed, params.deterministic)
    try:
        with stage_run(stage, params, enabled=rt.is_main) as run:
            yield rt, run
    finally:
        teardown_runtime()


def stage_fingerprint(stage: str, params, inputs: list[str]) -> str:
    """What a resume checkpoint must match: the stage's DVC params, digests of its inputs and the code the
    stage imports (the closure dvc.yaml lists as its deps)."""
    return params_hash(
        {
            **section_dict(params, STAGE_PARAMS[stage]),
            "inputs": inputs,
            "code": code_fingerprint(f"stages.{stage}"),
        }
    )


def save_model(path: Path, result: FitResult) -> None:
    """The weights a training stage hands on (its DVC output) with its meta: identical weights give
    identical bytes."""
    save_checkpoint(path, {"model": result.model_state, "step": result.chosen["step"], **result.meta})


def write_training_reports(
    result: FitResult, reports: Path, tracker, extra: dict | None = None, prefix: str = ""
) -> dict:
    """The DVC reports of a training stage, also logged to MLflow: history.csv (validation curves: step,
    epoch where the stage has one, metrics), train_loss.csv (step, every `train/*` value the loop logged:
    losses and lr, for all steps also across a resume) and metrics.json (the shipped step's evaluation,
    keys prefixed with `prefix`, and `extra`). Returns the metrics dict. The caller logs the folder as an
    artifact once the files are in place (inside `outputs_together` they are not yet)."""
    reports = Path(reports)
    with atomic_path(reports / "history.csv") as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    with atomic_path(reports / "train_loss.csv") as tmp:
        pd.DataFrame(tracker.train_log(result.step)).to_csv(tmp, index=False)
    chosen = {f"{prefix}{k}": v for k, v in result.chosen.items() if k not in ("step", "epoch")}
    final = {**chosen, **(extra or {})}
    write_json(reports / "metrics.json", final)
    tracker.log_metrics({k: v for k, v in final.items() if isinstance(v, int | float)})
    return final
