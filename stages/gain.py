"""DVC stage `gain`: GAIN classifier pretraining (S_cl + S_am, optionally S_e = GAIN_ext).

`dvc repro` runs it, or `torchrun --nproc_per_node N -m stages.gain` for DDP. A run killed midway resumes
from checkpoints/gain/last.pt when that was written for the same params, data and code.
"""

from gain.cam.evaluate import bias_accuracy
from gain.cam.model import load_classifier
from gain.cam.train import train_gain
from gain.data.dataset import DatasetIndex
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.io import outputs_together
from gain.runtime.params import load_params
from gain.runtime.stage import save_model, stage_fingerprint, training_stage, write_training_reports


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(layout.INDEX)
    reports = layout.reports("gain")
    with training_stage("gain", params) as (rt, run):
        result, model = train_gain(
            params.gain,
            index,
            rt,
            run,
            seed=params.seed,
            knobs=params.runtime,
            ckpt_dir=layout.CHECKPOINTS / "gain",
            fingerprint=stage_fingerprint("gain", params, [index.digest]),
            figure_dir=reports if rt.is_main else None,
            outputs=layout.stage_files("gain"),
        )
        if not rt.is_main:
            return
        run.log_dataset(index)
        bias = {}
        if index.bias_class is not None:
            bias = bias_accuracy(
                model.classifier, index, index.bias_class, rt, input_size=params.gain.input_size
            )
        with outputs_together():  # the model file is replaced only with all its reports
            save_model(layout.GAIN_MODEL, result)
            metrics = write_training_reports(result, reports, run, extra=bias)
        run.log_artifact(reports)
        run.log_model(
            load_classifier(layout.GAIN_MODEL)[0], layout.GAIN_MODEL, example_size=params.gain.input_size
        )
        print(
            f"gain: val mAP {metrics['map']:.3f}, attention mIoU {metrics['attn_miou']:.3f} (step {result.step})"
        )


if __name__ == "__main__":
    run_stage(main)
