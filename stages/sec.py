"""DVC stage `sec`: SEC (seed, expand, constrain) trained on the GAIN seeds.

`dvc repro` runs it, or `torchrun --nproc_per_node N -m stages.sec` for DDP. A run killed midway resumes
from checkpoints/sec/last.pt when that was written for the same params, inputs and code. run() is also what
the method study (gain/study/runner.py) trains SEC with.
"""

from gain.data.dataset import DatasetIndex
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.device import Runtime
from gain.runtime.io import file_digest, folder_digest, outputs_together
from gain.runtime.params import Params, load_params
from gain.runtime.stage import save_model, stage_fingerprint, training_stage, write_training_reports
from gain.sec.model import load_segmenter
from gain.sec.train import train_sec


def run(
    params: Params, index: DatasetIndex, *, paths: layout.StagePaths = layout.PIPELINE, rt: Runtime, tracker
) -> dict:
    """Train SEC on paths.seeds, initialised from paths.gain_model (resumable from paths.sec_ckpt); on the
    main process write paths.sec_model and the reports under paths.report_dir("sec"). -> metrics.json's
    values (the shipped step's validation, `val_` keys); {} on the other DDP ranks."""
    inputs = [index.digest, folder_digest(paths.seeds), file_digest(paths.gain_model)]
    reports = paths.report_dir("sec")
    result, _ = train_sec(
        params.sec,
        index,
        rt,
        tracker,
        seed=params.seed,
        knobs=params.runtime,
        seeds_dir=paths.seeds,
        gain_model=paths.gain_model,
        ckpt_dir=paths.sec_ckpt,
        fingerprint=stage_fingerprint("sec", params, inputs),
        outputs=paths.files("sec"),
    )
    if not rt.is_main:
        return {}
    tracker.log_dataset(index)
    with outputs_together():  # the model file is replaced only with all its reports
        save_model(paths.sec_model, result)
        metrics = write_training_reports(result, reports, tracker, prefix="val_")
    tracker.log_artifact(reports)
    tracker.log_model(load_segmenter(paths.sec_model)[0], paths.sec_model, example_size=params.sec.input_size)
    print(f"sec: val mIoU {metrics['val_miou']:.3f} (step {result.step})")
    return metrics


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(layout.INDEX)
    with training_stage("sec", params) as (rt, tracker):
        run(params, index, rt=rt, tracker=tracker)


if __name__ == "__main__":
    run_stage(main)
