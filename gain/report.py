"""The human-readable report: this run's numbers beside the papers', clearly labelled by dataset."""

from __future__ import annotations

import math

# PASCAL VOC 2012 val / test mIoU (%) from the GAIN paper (Li et al. 2018, Tables 1-2), with and without
# SEC's CRF post-processing. GAIN_ext uses the 1,464 VOC train pixel labels.
PAPER_VOC_VAL = {
    "SEC (CAM seeds)": {"crf": 50.7, "no_crf": 44.79},
    "GAIN (S_cl + S_am)": {"crf": 55.3, "no_crf": 50.78},
    "GAIN_ext (+ S_e)": {"crf": 60.5, "no_crf": 54.77},
}
# Table 4, classification accuracy (%) on the biased boat splits.
PAPER_BIAS = {
    "Grad-CAM": {"object_only": 42, "context_only": 30},
    "GAIN": {"object_only": 48, "context_only": 62},
    "GAIN_ext (78 px-labelled)": {"object_only": 84, "context_only": 84},
}


def method_name(alpha: float, ext: bool) -> str:
    if ext:
        return "GAIN_ext (+ S_e)"
    return "GAIN (S_cl + S_am)" if alpha > 0 else "SEC (CAM seeds)"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def render(
    *,
    dataset: str,
    method: str,
    metrics: dict,
    per_class: list[dict],
    commands: list[str],
    figures: dict[str, str],
) -> str:
    """Markdown report. metrics: the evaluate stage's metrics.json dict."""
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
        "| | this run, no CRF | this run, CRF | paper VOC val, no CRF | paper VOC val, CRF |",
        "|---|---|---|---|---|",
    ]
    for name, paper in PAPER_VOC_VAL.items():
        ours = name == method
        lines.append(
            f"| {name}{' (this run)' if ours else ''} | {_pct(metrics['sec_miou']) if ours else ''} | "
            f"{_pct(metrics.get('sec_crf_miou')) if ours else ''} | {paper['no_crf']} | {paper['crf']} |"
        )
    lines += [
        "",
        f"The paper's numbers are PASCAL VOC 2012 val; {'this run is on VOC too.' if is_voc else 'this run is on the synthetic set, so only the ordering across methods is comparable, never the values.'}",
        "",
        "## Seeds and attention (weak training images with masks)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| seed precision | {_pct(metrics['seed_precision'])} |",
        f"| seed recall (foreground) | {_pct(metrics['seed_recall'])} |",
        f"| labeled fraction | {_pct(metrics['seed_labeled_fraction'])} |",
        f"| seed map mIoU (unlabeled counts as a miss) | {_pct(metrics['seed_miou'])} |",
        f"| dense attention map mIoU | {_pct(metrics['attention_miou'])} |",
        f"| SEC val pixel accuracy | {_pct(metrics['sec_pixel_accuracy'])} |",
        "",
    ]
    if "bias_object_only_accuracy" in metrics:
        lines += [
            "## Context bias (paper Table 4 setting)",
            "",
            "Classification accuracy on the biased class: *object only* = images with the class but without its",
            "usual context (recognised?), *context only* = the context without the class (correctly absent?).",
            "",
            "| | object only | context only |",
            "|---|---|---|",
            f"| this run ({method}, synthetic) | {_pct(metrics['bias_object_only_accuracy'])} | "
            f"{_pct(metrics['bias_context_only_accuracy'])} |",
        ]
        for name, v in PAPER_BIAS.items():
            lines.append(f"| paper, {name} (VOC boat/water) | {v['object_only']} | {v['context_only']} |")
        lines.append("")
    lines += [
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
    lines += ["## How these numbers were produced", "", "```"] + commands + ["```", ""]
    return "\n".join(lines)
