"""DVC stage `sec`: SEC (seed, expand, constrain) trained on the GAIN seeds.

`dvc repro` runs it, or `torchrun --nproc_per_node N -m stages.sec` for DDP. A run killed midway resumes
from checkpoints/sec/last.pt when that was written for the same params, inputs and code.
"""

from gain.data.dataset import DatasetIndex
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.io import file_digest, folder_digest, outputs_together
from gain.runtime.params import load_params
from gain.runtime.stage import save_model, stage_fingerprint, training_stage, write_training_reports
from gain.sec.model import load_segmenter
from gain.sec.train import train_sec


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(layout.INDEX)
    inputs = [index.digest, folder_digest(layout.SEEDS), file_digest(layout.GAIN_MODEL)]
    with training_stage("sec", params) as (rt, run):
        result, _ = train_sec(
            params.sec,
            index,
            rt,
            run,
            seed=params.seed,
            knobs=params.runtime,
            seeds_dir=layout.SEEDS,
            gain_model=layout.GAIN_MODEL,
            ckpt_dir=layout.CHECKPOINTS / "sec",
            fingerprint=stage_fingerprint("sec", params, inputs),
            outputs=layout.stage_files("sec"),
        )
        if not rt.is_main:
            return
        run.log_dataset(index)
        with outputs_together():  # the model file is replaced only with all its reports
            save_model(layout.SEC_MODEL, result)
            metrics = write_training_reports(result, layout.reports("sec"), run, prefix="val_")
        run.log_artifact(layout.reports("sec"))
        run.log_model(
            load_segmenter(layout.SEC_MODEL)[0], layout.SEC_MODEL, example_size=params.sec.input_size
        )
        print(f"sec: val mIoU {metrics['val_miou']:.3f} (step {result.step})")


if __name__ == "__main__":
    run_stage(main)
