"""DVC stage `evaluate`: SEC's VOC-convention mIoU on the reported split (the devkit's way: one confusion
matrix over the split at original resolution, 255 ignored, mean of the per-class IoU), without and with the
test-time dense CRF, and the report beside the papers' numbers (classifier and seed figures: their stages)."""

import torch

from gain.cam.model import load_classifier
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import eval_preset
from gain.report.evaluation import attention_crf_reference, qualitative_figure, write_evaluation
from gain.runtime import layout
from gain.runtime.cli import run_stage
from gain.runtime.device import Runtime, setup_runtime
from gain.runtime.io import read_json
from gain.runtime.naming import method_name
from gain.runtime.params import Params, load_params
from gain.runtime.tracking import stage_run
from gain.sec.crf import CRFPool
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.model import load_segmenter


def run(
    params: Params, index: DatasetIndex, *, paths: layout.StagePaths = layout.PIPELINE, rt: Runtime, tracker
) -> dict:
    """Score paths.sec_model on evaluate.split, write the report and its tables and figures under
    paths.reports beside the gain and seeds stages' metrics.json. -> reports/metrics.json's values."""
    p, knobs = params.evaluate, params.runtime
    model, sec_p = load_segmenter(paths.sec_model)
    classifier, gain_p = load_classifier(paths.gain_model)
    model, classifier = model.to(rt.device), classifier.to(rt.device)
    gain = read_json(paths.report_dir("gain") / "metrics.json")
    seeds = read_json(paths.report_dir("seeds") / "metrics.json")
    tracker.log_dataset(index)
    ds = VOCDataset(index, index.splits[p.split], eval_preset(sec_p["input_size"]), keep_original=True)
    with CRFPool(knobs.crf_workers if p.crf else 0) as pool:
        scores = evaluate_segmenter(
            model,
            ds,
            rt,
            crf_pool=pool if p.crf else None,
            crf_scale=p.crf_scale,
            n_examples=knobs.vis_images,
        )
    reference = {}
    if p.crf:  # the CRF alone on the attention the seeds came from: what SEC + CRF must beat
        reference = attention_crf_reference(
            classifier, ds, params.seeds, rt, crf_scale=p.crf_scale, knobs=knobs
        )
    with torch.no_grad():
        figure = qualitative_figure(scores, classifier, index, rt, input_size=gain_p["input_size"])
    metrics = write_evaluation(
        paths.reports,
        scores,
        index,
        method=method_name(gain_p["alpha"], gain_p["ext"]),
        gain=gain,
        seeds=seeds,
        qualitative=figure,
        provenance=tracker.provenance(),
        reference=reference,
    )
    tracker.log_pipeline_metrics({**gain, **seeds, **metrics})  # the headline, on the pipeline run too
    for f in paths.files("evaluate"):
        tracker.log_artifact(f, "report")
    crf = f", with CRF {metrics['sec_crf_miou']:.3f}" if "sec_crf_miou" in metrics else ""
    print(f"evaluate: SEC {p.split} mIoU {metrics['sec_miou']:.3f}{crf}; seed mIoU {seeds['seed_miou']:.3f}")
    return metrics


def main() -> None:
    params = load_params()
    index = DatasetIndex.load(layout.INDEX)
    rt = setup_runtime(params.device)
    with stage_run("evaluate", params) as tracker:
        run(params, index, rt=rt, tracker=tracker)


if __name__ == "__main__":
    run_stage(main)
