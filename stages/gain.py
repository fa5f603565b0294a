"""DVC stage `gain`: GAIN classifier pretraining (S_cl + S_am, optionally S_e = GAIN_ext).

`dvc repro` runs it, or `torchrun --nproc_per_node N -m stages.gain` for DDP. A run killed midway resumes
from checkpoints/gain/last.pt when that was written for the same params, data and code. run() is also what
the method study (gain/study/runner.py) and the DDP test (tests/ddp_worker.py) train with.
"""

from collections.abc import Callable

from gain.cam.evaluate import bias_accuracy
from gain.cam.model import load_classifier
from gain.cam.train import train_gain
from gain.data.dataset import DatasetIndex
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.device import Runtime
from gain.runtime.io import outputs_together
from gain.runtime.params import Params, load_params
from gain.runtime.stage import save_model, stage_fingerprint, training_stage, write_training_reports


def run(
    params: Params,
    index: DatasetIndex,
    *,
    paths: layout.StagePaths = layout.PIPELINE,
    rt: Runtime,
    tracker,
    extra_eval: Callable | None = None,
) -> dict:
    """Train GAIN (resumable from paths.gain_ckpt); on the main process write paths.gain_model and the
    reports under paths.report_dir("gain"). `extra_eval(gain_module)` adds metrics to every epoch's
    evaluation. -> metrics.json's values (the shipped epoch's, Table 4's bias accuracies) and `history`
    (the evaluations, history.csv's rows); {} on the other DDP ranks."""
    reports = paths.report_dir("gain")
    result, model = train_gain(
        params.gain,
        index,
        rt,
        tracker,
        seed=params.seed,
        knobs=params.runtime,
        ckpt_dir=paths.gain_ckpt,
        fingerprint=stage_fingerprint("gain", params, [index.digest]),
        figure_dir=reports if rt.is_main else None,
        outputs=paths.files("gain"),
        extra_eval=extra_eval,
    )
    if not rt.is_main:
        return {}
    tracker.log_dataset(index)
    bias = {}
    if index.bias_class is not None:
        bias = bias_accuracy(model.classifier, index, index.bias_class, rt, input_size=params.gain.input_size)
    with outputs_together():  # the model file is replaced only with all its reports
        save_model(paths.gain_model, result)
        metrics = write_training_reports(result, reports, tracker, extra=bias)
    tracker.log_artifact(reports)
    classifier = load_classifier(paths.gain_model)[0]
    tracker.log_model(classifier, paths.gain_model, example_size=params.gain.input_size)
    print(
        f"gain: val mAP {metrics['map']:.3f}, attention mIoU {metrics['attn_miou']:.3f} (step {result.step})"
    )
    return {**metrics, "history": result.history}


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(layout.INDEX)
    with training_stage("gain", params) as (rt, tracker):
        run(params, index, rt=rt, tracker=tracker)


if __name__ == "__main__":
    run_stage(main)
