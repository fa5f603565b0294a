"""DVC stage `gain`: GAIN classifier pretraining (S_cl + S_am, optionally S_e = GAIN_ext).

Run by `dvc repro` (or `torchrun --nproc_per_node N -m stages.pretrain` for DDP). Resumes from
models/gain/last.pt when it was written for the same params and data. Writes models/gain/{best,last}.pt,
reports/gain/metrics.json, reports/gain/history.csv (DVC plots) and reports/gain/attention.png.
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
from gain.pretrain import train_gain
from gain.tracking import stage_run

INDEX = Path("data/dataset/index.json")
CKPT = Path("models/gain")
REPORTS = Path("reports/gain")


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(INDEX)
    rt = setup_runtime(params.device)
    seed_everything(params.seed, params.deterministic)
    fingerprint = params_hash(
        {
            **section_dict(params, STAGE_PARAMS["gain"]),
            "data": INDEX.read_text(),
            "code": code_fingerprint("gain", "stages"),
        }
    )
    try:
        with stage_run("gain", params, enabled=rt.is_main) as run:
            out = train_gain(
                params.gain,
                index,
                rt,
                run,
                seed=params.seed,
                ckpt_dir=CKPT,
                fingerprint=fingerprint,
                figure_dir=REPORTS if rt.is_main else None,
            )
            if not rt.is_main:
                return
            res = out["result"]
            write_training_reports(res, REPORTS, run)
            run.log_model(out["model"].classifier.cpu(), "model")
            print(
                f"gain: best val mAP {res.best['map']:.3f} (step {res.best['step']}), "
                f"attention mIoU {res.best['attn_miou']:.3f}"
            )
    finally:
        teardown_runtime()


if __name__ == "__main__":
    run_stage(main)
