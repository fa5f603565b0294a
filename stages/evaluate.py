"""DVC stage `evaluate`: SEC's VOC-convention mIoU on the reported split, without and with the test-time
dense CRF, and the report beside the papers' numbers (classifier and seed figures come from their stages).

mIoU the devkit's way: one confusion matrix over the whole split at original resolution, 255 ignored, IoU
per class, mean over classes.
"""

import torch

from gain.cam.model import load_classifier
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import eval_preset
from gain.report.evaluation import attention_crf_reference, qualitative_figure, write_evaluation
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.device import setup_runtime
from gain.runtime.io import read_json
from gain.runtime.naming import method_name
from gain.runtime.params import load_params
from gain.runtime.tracking import stage_run
from gain.sec.crf import CRFPool
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.model import load_segmenter


def main() -> None:
    params = load_params()
    p, knobs = params.evaluate, params.runtime
    index = DatasetIndex.load(layout.INDEX)
    rt = setup_runtime(params.device)
    model, sec_p = load_segmenter(layout.SEC_MODEL)
    classifier, gain_p = load_classifier(layout.GAIN_MODEL)
    gain, seeds = (
        read_json(layout.reports("gain") / "metrics.json"),
        read_json(layout.reports("seeds") / "metrics.json"),
    )
    with stage_run("evaluate", params) as run:
        run.log_dataset(index)
        ds = VOCDataset(index, index.splits[p.split], eval_preset(sec_p["input_size"]), keep_original=True)
        with CRFPool(knobs.crf_workers if p.crf else 0) as pool:
            scores = evaluate_segmenter(
                model.to(rt.device),
                ds,
                rt,
                crf_pool=pool if p.crf else None,
                crf_scale=p.crf_scale,
                n_examples=knobs.vis_images,
            )
        reference = {}
        if p.crf:  # the CRF alone on the attention the seeds came from: what SEC + CRF must beat
            reference = attention_crf_reference(
                classifier.to(rt.device), ds, params.seeds, rt, crf_scale=p.crf_scale, knobs=knobs
            )
        with torch.no_grad():
            figure = qualitative_figure(
                scores, classifier.to(rt.device), index, rt, input_size=gain_p["input_size"]
            )
        metrics = write_evaluation(
            layout.REPORTS,
            scores,
            index,
            method=method_name(gain_p["alpha"], gain_p["ext"]),
            gain=gain,
            seeds=seeds,
            qualitative=figure,
            provenance=run.provenance(),
            reference=reference,
        )
        run.log_pipeline_metrics({**gain, **seeds, **metrics})  # the headline, on the pipeline run too
        for files in layout.OUTPUTS["evaluate"].values():
            for f in files:
                run.log_artifact(f, "report")
        crf = f", with CRF {metrics['sec_crf_miou']:.3f}" if "sec_crf_miou" in metrics else ""
        print(
            f"evaluate: SEC {p.split} mIoU {metrics['sec_miou']:.3f}{crf}; seed mIoU {seeds['seed_miou']:.3f}"
        )


if __name__ == "__main__":
    run_stage(main)
