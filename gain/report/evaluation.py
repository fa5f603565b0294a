"""The `evaluate` stage's outputs: SEC's scores on the reported split beside the papers', the per-class and
confusion tables and figures, a qualitative grid and report.md, the run log people read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gain.cam.attention import attention_maps
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.transforms import eval_preset
from gain.evaluation.figures import bar_figure, colorize, grid_figure, heatmap_figure, overlay, save_figure
from gain.runtime.device import Runtime
from gain.runtime.io import atomic_path, write_json, write_text
from gain.runtime.loaders import collate
from gain.runtime.params import RuntimeParams, SeedsParams
from gain.sec.crf import CRFPool
from gain.sec.evaluate import SegmentationScores, evaluate_attention_crf
from gain.seeds.extract import image_attention

# PASCAL VOC 2012 val mIoU (%) from the GAIN paper (Li et al. 2018, Tables 1-2), with and without SEC's
# CRF post-processing, keyed by the method whose seeds SEC trained on. SEC's own row uses CAM cues, which a
# GAP + linear head's Grad-CAM equals; GAIN_ext uses the 1,464 VOC train pixel labels.
PAPER_VOC_VAL = {
    "Grad-CAM": {"paper_row": "SEC", "crf": 50.7, "no_crf": 44.79},
    "GAIN": {"paper_row": "GAIN", "crf": 55.3, "no_crf": 50.78},
    "GAIN_ext": {"paper_row": "GAIN_ext", "crf": 60.5, "no_crf": 54.77},
}
# Table 4, classification accuracy (%) on the biased boat splits.
PAPER_BIAS = {
    "Grad-CAM": {"object_only": 42, "context_only": 30},
    "GAIN": {"object_only": 48, "context_only": 62},
    "GAIN_ext (78 px-labelled)": {"object_only": 84, "context_only": 84},
}


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _miou_section(dataset: str, method: str, metrics: dict) -> list[str]:
    """Title, data set, and the mIoU table beside the paper's rows (and the CRF-on-attention reference)."""
    is_voc = dataset == "voc"
    ds_label = (
        "PASCAL VOC 2012 val" if is_voc else "built-in SYNTHETIC set (val split) - not comparable to VOC"
    )
    lines = [
        "# GAIN -> SEC evaluation report",
        "",
        f"Dataset: **{ds_label}**. Seeds from: **{method}**.",
        "",
        "## Segmentation mIoU (%)",
        "",
        "| seeds from | this run, no CRF | this run, CRF | paper VOC val, no CRF | paper VOC val, CRF | "
        "paper row |",
        "|---|---|---|---|---|---|",
    ]
    for name, paper in PAPER_VOC_VAL.items():
        ours = name == method
        lines.append(
            f"| {'**' + name + '** (this run)' if ours else name} | {_pct(metrics['sec_miou']) if ours else ''} | "
            f"{_pct(metrics.get('sec_crf_miou')) if ours else ''} | {paper['no_crf']} | {paper['crf']} | "
            f"{paper['paper_row']} |"
        )
    if "attention_crf_miou" in metrics:
        lines.append(
            f"| reference: the test-time CRF on the seeds' dense attention alone (image labels given) | | "
            f"{_pct(metrics['attention_crf_miou'])} | | | |"
        )
    comparable = (
        "this run is on VOC too."
        if is_voc
        else (
            "this run is on the synthetic set, so only the ordering across methods is comparable, never the values."
        )
    )
    return lines + [
        "",
        f"The paper's numbers are PASCAL VOC 2012 val; {comparable} The paper's SEC row used CAM cues, which "
        "for a GAP + linear head equal Grad-CAM's.",
        "",
    ]


def _measures_section(metrics: dict, gain: dict, seeds: dict) -> list[str]:
    return [
        "## Classifier, attention and seeds",
        "",
        "| measure | value |",
        "|---|---|",
        f"| GAIN classifier val mAP | {_pct(gain.get('map'))} |",
        f"| val attention mIoU (attention > 20% of max vs. masks) | {_pct(gain.get('attn_miou'))} |",
        f"| seed precision (train images with masks) | {_pct(seeds['seed_precision'])} |",
        f"| seed recall (foreground) | {_pct(seeds['seed_recall'])} |",
        f"| labeled fraction | {_pct(seeds['labeled_fraction'])} |",
        f"| seed map mIoU (unlabeled counts as a miss) | {_pct(seeds['seed_miou'])} |",
        f"| dense attention map mIoU | {_pct(seeds['dense_miou'])} |",
        f"| SEC val pixel accuracy | {_pct(metrics['sec_pixel_accuracy'])} |",
        "",
    ]


def _bias_section(method: str, gain: dict) -> list[str]:
    """Table 4's setting, where the set has a biased class (else nothing)."""
    if "bias_object_only_accuracy" not in gain:
        return []
    lines = [
        "## Context bias (paper Table 4 setting)",
        "",
        "Classification accuracy on the biased class: *object only* = images with the class but without its",
        "usual context (recognised?), *context only* = the context without the class (correctly absent?).",
        "",
        "| | object only | context only |",
        "|---|---|---|",
        f"| this run ({method}, synthetic) | {_pct(gain['bias_object_only_accuracy'])} | "
        f"{_pct(gain['bias_context_only_accuracy'])} |",
    ]
    for name, v in PAPER_BIAS.items():
        lines.append(f"| paper, {name} (VOC boat/water) | {v['object_only']} | {v['context_only']} |")
    return lines + [""]


def _per_class_section(per_class: list[dict], figures: dict[str, str]) -> list[str]:
    lines = [
        "## Per-class IoU (val, no CRF)",
        "",
        "| class | IoU | precision | recall | gt pixels |",
        "|---|---|---|---|---|",
    ]
    for row in per_class:
        lines.append(
            f"| {row['class']} | {_pct(row['iou'])} | {_pct(row['precision'])} | {_pct(row['recall'])} | "
            f"{row['gt_pixels']} |"
        )
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path})", ""]
    return lines


def render(
    *,
    dataset: str,
    method: str,
    metrics: dict,
    gain: dict,
    seeds: dict,
    per_class: list[dict],
    provenance: dict,
    figures: dict[str, str],
) -> str:
    """Markdown report. metrics: the evaluate stage's metrics.json; gain, seeds: those stages' metrics."""
    lines = [
        *_miou_section(dataset, method, metrics),
        *_measures_section(metrics, gain, seeds),
        *_bias_section(method, gain),
        *_per_class_section(per_class, figures),
        *provenance_lines(provenance),
    ]
    return "\n".join(lines)


def provenance_lines(prov: dict) -> list[str]:
    """report.md's last section: the command, DVC experiment, commit and the MLflow runs behind each output
    (prov: StageRun.provenance(); empty when nothing was tracked)."""
    if not prov:
        return ["## How these numbers were produced", "", "(not tracked)", ""]
    command = prov.get("command") or "python -m stages.evaluate (outside DVC)"
    lines = [
        "## How these numbers were produced",
        "",
        f"- command: `{command}`",
        f"- params changed from {'the baseline' if prov.get('dvc_exp_baseline_rev') else 'HEAD'}: "
        + (f"`{prov['overrides']}`" if prov.get("overrides") else "none"),
        f"- DVC experiment: {prov.get('dvc_exp_name') or '(none: dvc repro)'}",
        f"- git commit: {prov.get('git_commit', 'unknown')}"
        + (" (experiment baseline)" if prov.get("dvc_exp_baseline_rev") else ""),
        f"- MLflow store: {prov.get('tracking_uri', '')}",
        f"- MLflow pipeline run: {prov.get('pipeline_name', '')} (`{prov.get('parent_run_id', '')}`)",
        "",
        "| stage | MLflow run that produced its output | in pipeline run | registered model |",
        "|---|---|---|---|",
    ]
    for stage, run in prov.get("stages", {}).items():
        lines.append(
            f"| {stage} | `{run['run_id']}` | {run.get('pipeline_name', '')} | {run.get('registered_model', '')} |"
        )
    return [*lines, ""]


def attention_crf_reference(
    classifier,
    dataset: VOCDataset,
    p: SeedsParams,
    rt: Runtime,
    *,
    crf_scale: float | str,
    knobs: RuntimeParams,
) -> dict:
    """{"attention_crf_miou"}: SEC's test-time CRF on the seeds' dense attention (the seeds stage's attention
    of each image's ground-truth classes, background at the cue threshold) over `dataset` (keep_original),
    a reference row for SEC + CRF: what the CRF makes of the attention without SEC."""
    attention = image_attention(classifier, dataset, rt, batch_size=knobs.seeds_batch_size, flip=p.flip)
    with CRFPool(knobs.crf_workers) as pool:
        miou = evaluate_attention_crf(
            attention, dataset.index.num_classes, pool, fg_fraction=p.fg_fraction, crf_scale=crf_scale
        )
    return {"attention_crf_miou": miou}


def qualitative_figure(
    scores: SegmentationScores, classifier, index: DatasetIndex, rt: Runtime, *, input_size: int
):
    """Rows of image / ground truth / GAIN attention (max over the image's classes) / SEC / SEC + CRF."""
    examples = scores.examples
    ds = VOCDataset(index, [e["item"]["id"] for e in examples], eval_preset(input_size))
    batch = collate([ds[i] for i in range(len(ds))])
    attn, pair_image, _ = attention_maps(
        classifier, rt.to_device(batch["image"]), batch["label"].to(rt.device), flip=False
    )
    rows = []
    for b, e in enumerate(examples):
        img = e["item"]["orig_image"]
        mine = attn[pair_image == b].float().cpu()
        heat = np.zeros(img.shape[:2])
        if len(mine):
            from torch.nn import functional as F

            heat = F.interpolate(mine[:, None], size=img.shape[:2], mode="bilinear")[:, 0].amax(0).numpy()
        row = [
            (img, e["item"]["id"]),
            (colorize(e["item"]["orig_mask"]), "ground truth"),
            (overlay(img, heat), "GAIN attention"),
            (colorize(e["pred"]), "SEC"),
        ]
        if e["crf_pred"] is not None:
            row.append((colorize(e["crf_pred"]), "SEC + CRF"))
        rows.append(row)
    return grid_figure(rows, classes=index.classes)


def write_evaluation(
    out: Path,
    scores: SegmentationScores,
    index: DatasetIndex,
    *,
    method: str,
    gain: dict,
    seeds: dict,
    qualitative,
    provenance: dict,
    reference: dict | None = None,
) -> dict:
    """Write metrics.json, per_class_iou.csv, confusion.csv, the figures and report.md under `out`;
    `reference` adds reference metrics (attention_crf_miou). -> the metrics dict."""
    plain = scores.plain.compute(index.classes)
    metrics = {
        "sec_miou": plain["miou"],
        "sec_pixel_accuracy": plain["pixel_accuracy"],
        "sec_absent_classes": plain["absent_classes"],
        "method": method,
        "dataset": index.source,
    }
    if scores.crf is not None:
        crf = scores.crf.compute(index.classes)
        metrics |= {"sec_crf_miou": crf["miou"], "sec_crf_pixel_accuracy": crf["pixel_accuracy"]}
    metrics |= reference or {}
    write_json(out / "metrics.json", metrics)
    table = scores.plain.per_class_table(index.classes)
    with atomic_path(out / "per_class_iou.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "confusion.csv") as tmp:
        scores.plain.to_dataframe(index.classes).to_csv(tmp)
    names = list(index.classes)
    save_figure(
        heatmap_figure(scores.plain.mat, names, title=f"SEC confusion ({index.source})"),
        out / "confusion.png",
    )
    save_figure(
        bar_figure(names, plain["iou"], title="SEC per-class IoU (no CRF)", ylabel="IoU"),
        out / "per_class_iou.png",
    )
    save_figure(qualitative, out / "qualitative.png")
    figures = {
        "Qualitative: image / ground truth / attention / SEC / SEC + CRF": "qualitative.png",
        "Per-class IoU": "per_class_iou.png",
        "Confusion matrix (row-normalised)": "confusion.png",
        "GAIN attention (fixed val images)": "gain/attention.png",
        "Seeds (train images)": "seeds/grid.png",
    }
    report = render(
        dataset=index.source,
        method=method,
        metrics=metrics,
        gain=gain,
        seeds=seeds,
        per_class=table.to_dict("records"),
        provenance=provenance,
        figures=figures,
    )
    write_text(out / "report.md", report)
    return metrics
