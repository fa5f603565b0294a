"""What people read: report.md's method naming and provenance, the class legend of label figures, the
per-step training-loss table, and the run comparison labelled by pipeline run name."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gain.evaluation.figures import close_figure, colorize, grid_figure
from gain.report.compare import changed_params, comparison, comparison_figure, pipeline_table
from gain.report.evaluation import provenance_lines, render
from gain.runtime.loop import FitResult
from gain.runtime.stage import write_training_reports
from gain.runtime.tracking import NullRun

PROVENANCE = {
    "command": "dvc exp run --temp -n gradcam -S gain.alpha=0",
    "overrides": "gain.alpha=0.0",
    "dvc_exp_name": "gradcam",
    "dvc_exp_baseline_rev": "b" * 40,
    "git_commit": "c" * 40,
    "tracking_uri": "sqlite:///repo/mlflow.db",
    "pipeline_name": "gradcam",
    "parent_run_id": "p" * 32,
    "stages": {
        "data": {"run_id": "d" * 32, "pipeline_name": "GAIN-12345678", "registered_model": ""},
        "gain": {"run_id": "g" * 32, "pipeline_name": "gradcam", "registered_model": "gain-classifier/2"},
    },
}


def render_for(method: str, provenance: dict) -> str:
    return render(
        dataset="synthetic",
        method=method,
        metrics={"sec_miou": 0.25, "sec_crf_miou": 0.5, "sec_pixel_accuracy": 0.75},
        gain={"map": 0.5, "attn_miou": 0.25},
        seeds={
            "seed_precision": 0.5,
            "seed_recall": 0.5,
            "labeled_fraction": 0.5,
            "seed_miou": 0.25,
            "dense_miou": 0.2,
        },
        per_class=[],
        provenance=provenance,
        figures={},
    )


def test_report_puts_the_crf_on_attention_beside_sec_and_crf():
    report = render(
        dataset="synthetic",
        method="GAIN",
        metrics={"sec_miou": 0.25, "sec_crf_miou": 0.5, "sec_pixel_accuracy": 0.75, "attention_crf_miou": 0.375},
        gain={"map": 0.5, "attn_miou": 0.25},
        seeds={"seed_precision": 0.5, "seed_recall": 0.5, "labeled_fraction": 0.5, "seed_miou": 0.25,
               "dense_miou": 0.2},
        per_class=[],
        provenance=PROVENANCE,
        figures={},
    )  # fmt: skip
    row = next(line for line in report.splitlines() if line.startswith("| reference: the test-time CRF"))
    assert "| 37.5 |" in row and "| **GAIN** (this run) | 25.0 | 50.0 |" in report
    assert "reference:" not in render_for("GAIN", PROVENANCE)  # no row without the metric


def test_report_uses_one_name_per_method():
    report = render_for("Grad-CAM", PROVENANCE)
    assert "Seeds from: **Grad-CAM**" in report
    assert "| **Grad-CAM** (this run) | 25.0 | 50.0 | 44.79 | 50.7 | SEC |" in report
    assert (
        "| GAIN | " in report
        and "| GAIN_ext | " in report
        and "(this run)" not in report.split("| GAIN |")[1]
    )


def test_report_names_command_experiment_commit_and_runs():
    lines = provenance_lines(PROVENANCE)
    text = "\n".join(lines)
    assert "- command: `dvc exp run --temp -n gradcam -S gain.alpha=0`" in text
    assert "- params changed from the baseline: `gain.alpha=0.0`" in text
    assert "- DVC experiment: gradcam" in text
    assert f"- git commit: {'c' * 40} (experiment baseline)" in text
    assert f"- MLflow pipeline run: gradcam (`{'p' * 32}`)" in text
    assert f"| data | `{'d' * 32}` | GAIN-12345678 |  |" in text  # produced by an earlier pipeline
    assert f"| gain | `{'g' * 32}` | gradcam | gain-classifier/2 |" in text
    plain = "\n".join(provenance_lines({**PROVENANCE, "command": "", "dvc_exp_name": "", "overrides": ""}))
    assert "python -m stages.evaluate (outside DVC)" in plain and "(none: dvc repro)" in plain
    assert "params changed from the baseline: none" in plain
    assert provenance_lines({}) == ["## How these numbers were produced", "", "(not tracked)", ""]


def test_label_figures_carry_a_class_colour_legend():
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    rows = [[(colorize(mask), "seeds")]]
    fig = grid_figure(rows, classes=("background", "disc", "kite"))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["background", "disc", "kite", "void / unlabeled"]
    colours = [
        tuple(np.round(np.array(h.get_facecolor()[:3]) * 255).astype(int)) for h in legend.legend_handles
    ]
    assert colours[:3] == [tuple(c) for c in colorize(np.array([[0, 1, 2]], dtype=np.uint8))[0]]
    assert colours[3] == tuple(colorize(np.array([[255]], dtype=np.uint8))[0, 0])
    close_figure(fig)
    fig = grid_figure(rows)
    assert fig.legends == []
    close_figure(fig)


class RecordingRun(NullRun):
    def __init__(self, rows):
        self.rows, self.logged = rows, []

    def train_log(self, upto):
        return [r for r in self.rows if r["step"] <= upto]

    def log_metrics(self, metrics, step=None):
        self.logged.append(metrics)


def test_training_reports_write_per_step_losses_and_prefixed_metrics(tmp_path):
    result = FitResult(
        step=2,
        history=[{"step": 2, "miou": 0.5, "pixel_accuracy": 0.75}],
        chosen={"step": 2, "miou": 0.5, "pixel_accuracy": 0.75},
        model_state={},
        resumed_from=0,
        meta={},
    )
    rows = [{"step": 1, "loss_total": 2.0, "lr": 0.1}, {"step": 2, "loss_total": 1.5, "lr": 0.1}]
    run = RecordingRun(rows + [{"step": 3, "loss_total": 9.0, "lr": 0.1}])
    metrics = write_training_reports(result, tmp_path, run, prefix="val_")
    assert metrics == {"val_miou": 0.5, "val_pixel_accuracy": 0.75}  # no step: not a headline number
    assert pd.read_csv(tmp_path / "train_loss.csv").to_dict("records") == rows
    assert pd.read_csv(tmp_path / "history.csv").columns.tolist() == ["step", "miou", "pixel_accuracy"]
    assert run.logged == [metrics]


def runs_frame() -> pd.DataFrame:
    """What mlflow.search_runs returns for two pipeline runs: new-style parents carrying params and
    metrics, and one older parent whose numbers live on its stage runs only."""
    return pd.DataFrame(
        [
            {"run_id": "p1", "start_time": 1, "status": "FINISHED", "tags.kind": "pipeline",
             "tags.mlflow.runName": "gradcam", "params.gain.alpha": "0.0", "params.sec.lr": "0.002",
             "metrics.sec_miou": 0.25, "metrics.seed_miou": 0.5},
            {"run_id": "s1", "start_time": 2, "status": "FINISHED", "tags.kind": "stage", "tags.stage": "sec",
             "tags.mlflow.parentRunId": "p1", "params.sec.lr": "0.002", "metrics.val_miou": 0.3},
            {"run_id": "p2", "start_time": 3, "status": "FINISHED", "tags.kind": "pipeline",
             "tags.mlflow.runName": "GAIN-abcdef12", "params.gain.alpha": "1.0", "params.sec.lr": "0.002",
             "metrics.sec_miou": 0.5},
            {"run_id": "s2", "start_time": 4, "status": "FINISHED", "tags.kind": "stage", "tags.stage": "seeds",
             "tags.mlflow.parentRunId": "p2", "metrics.seed_miou": 0.75},
        ]
    )  # fmt: skip


def test_compare_has_one_row_per_pipeline_run_named_and_completed_by_its_stages():
    table = pipeline_table(runs_frame())
    assert table["name"].tolist() == ["gradcam", "GAIN-abcdef12"]
    assert table["stages"].tolist() == ["sec", "seeds"]
    assert table["metrics.seed_miou"].tolist() == [0.5, 0.75]  # the second from its seeds run
    assert changed_params(table) == ["params.gain.alpha"]
    df = comparison(table)
    assert df.columns.tolist() == [
        "name",
        "run_id",
        "started",
        "status",
        "gain.alpha",
        "sec_miou",
        "seed_miou",
    ]
    fig = comparison_figure(df)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["gradcam\ngain.alpha=0.0", "GAIN-abcdef12\ngain.alpha=1.0"]
    close_figure(fig)
    assert pipeline_table(pd.DataFrame()).empty and comparison(pd.DataFrame()).empty
