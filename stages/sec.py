"""DVC stage `sec`: SEC (seed, expand, constrain) trained on the GAIN seeds.

Run by `dvc repro` (or `torchrun --nproc_per_node N -m stages.sec`). Resumes from models/sec/last.pt when
written for the same params and inputs. Writes models/sec/{best,last}.pt, reports/sec/metrics.json and
reports/sec/history.csv (DVC plots).
"""

from __future__ import annotations

from pathlib import Path

from gain.cli import run_stage
from gain.data import DatasetIndex
from gain.engine import (
    code_fingerprint,
    seed_everything,
    setup_runtime,
    teardown_runtime,
    write_training_reports,
)
from gain.params import STAGE_PARAMS, load_params, params_hash, section_dict
from gain.segment import train_sec
from gain.tracking import stage_run

INDEX = Path("data/dataset/index.json")
SEEDS = Path("data/seeds")
GAIN_MODEL = Path("models/gain/best.pt")
CKPT = Path("models/sec")
REPORTS = Path("reports/sec")
SEED_RUN = Path("runs/seeds.json")


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(INDEX)
    rt = setup_runtime(params.device)
    seed_everything(params.seed, params.deterministic)
    # The seeds stage's run id changes whenever its outputs are regenerated: a cheap input fingerprint.
    inputs = INDEX.read_text() + (SEED_RUN.read_text() if SEED_RUN.is_file() else "")
    fingerprint = params_hash(
        {
            **section_dict(params, STAGE_PARAMS["sec"]),
            "inputs": inputs,
            "code": code_fingerprint("gain", "stages"),
        }
    )
    try:
        with stage_run("sec", params, enabled=rt.is_main) as run:
            out = train_sec(
                params.sec,
                index,
                rt,
                run,
                seed=params.seed,
                seeds_dir=SEEDS,
                gain_ckpt=GAIN_MODEL,
                ckpt_dir=CKPT,
                fingerprint=fingerprint,
            )
            if not rt.is_main:
                return
            res = out["result"]
            write_training_reports(res, REPORTS, run)
            run.log_model(out["model"].cpu(), "model")
            print(f"sec: best val mIoU {res.best['miou']:.3f} (step {res.best['step']})")
    finally:
        teardown_runtime()


if __name__ == "__main__":
    run_stage(main)
