"""Compare pipeline runs: one row per MLflow pipeline run (the parent of the stage runs) of an experiment.

    python -m gain.report.compare [--experiment gain-sec] [--out reports/compare]

Writes <out>.csv (name, params that differ between runs, headline metrics) and <out>.png (grouped bars, one
group per pipeline run, labelled with its name: the DVC experiment name, or method + short run id).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd

from gain.evaluation.figures import save_figure
from gain.runtime.io import atomic_path
from gain.runtime.params import load_params
from gain.runtime.store import tracking_uri

KEY_METRICS = [
    "sec_miou",
    "sec_crf_miou",
    "attention_crf_miou",
    "seed_miou",
    "attn_miou",
    "seed_precision",
    "seed_recall",
    "labeled_fraction",
    "bias_object_only_accuracy",
    "bias_context_only_accuracy",
    "map",
]
FIGURE_METRICS = ["sec_miou", "sec_crf_miou", "seed_miou", "attn_miou"]


def pipeline_table(runs: pd.DataFrame) -> pd.DataFrame:
    """runs: mlflow.search_runs output (columns tags.*, params.*, metrics.*) -> one row per pipeline run:
    its own params and metrics, completed by its stage runs' (a pipeline run from before parents carried
    them, or a metric a stage logged only on itself; the latest stage run wins)."""
    if runs.empty or "tags.kind" not in runs:
        return pd.DataFrame()
    runs = runs.sort_values("start_time")
    parents = runs[runs["tags.kind"] == "pipeline"]
    stages = runs[runs["tags.kind"] == "stage"]
    rows = []
    for _, parent in parents.iterrows():
        children = stages[stages.get("tags.mlflow.parentRunId") == parent["run_id"]]
        row = {
            "name": parent.get("tags.mlflow.runName") or parent["run_id"][:8],
            "run_id": parent["run_id"],
            "started": parent["start_time"],
            "status": parent["status"],
            "stages": ",".join(children["tags.stage"]) if len(children) else "",
        }
        for _, r in children.iterrows():
            row |= {c: v for c, v in r.items() if c.startswith(("params.", "metrics.")) and pd.notna(v)}
        row |= {c: v for c, v in parent.items() if c.startswith(("params.", "metrics.")) and pd.notna(v)}
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values("started").reset_index(drop=True)


def changed_params(table: pd.DataFrame) -> list[str]:
    """Params with different values across pipeline runs. A run without a value for a param (an older
    pipeline run that skipped the stage reading it) counts as unchanged there."""
    cols = [c for c in table.columns if c.startswith("params.")]
    return [c for c in cols if table[c].dropna().astype(str).nunique() > 1]


def comparison(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame(columns=["name", "run_id", "started", "status"])
    metric_cols = [f"metrics.{m}" for m in KEY_METRICS if f"metrics.{m}" in table.columns]
    out = table[["name", "run_id", "started", "status", *changed_params(table), *metric_cols]].copy()
    out.columns = [c.removeprefix("params.").removeprefix("metrics.") for c in out.columns]
    return out


def comparison_figure(df: pd.DataFrame):
    """Grouped bars of FIGURE_METRICS, one group per pipeline run, x labels = name + changed params."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in FIGURE_METRICS if m in df.columns]
    df = df.dropna(subset=metrics, how="all")  # pipelines that stopped before evaluate
    params = [c for c in df.columns if "." in c]
    labels = ["\n".join([row["name"]] + [f"{p}={row[p]}" for p in params]) for _, row in df.iterrows()]
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(df)), 4))
    width = 0.8 / max(len(metrics), 1)
    for j, m in enumerate(metrics):
        ax.bar([i + j * width for i in range(len(df))], df[m].astype(float), width=width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(df))], labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    ax.set_title("pipeline runs compared (MLflow pipeline runs, by name)", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--experiment", default=None, help="MLflow experiment (default: params mlflow.experiment)"
    )
    ap.add_argument("--out", default="reports/compare", help="output path prefix")
    args = ap.parse_args(argv)
    params = load_params()
    mlflow.set_tracking_uri(tracking_uri(params))
    name = args.experiment or params.runtime.mlflow.experiment
    if mlflow.get_experiment_by_name(name) is None:
        raise SystemExit(f"MLflow experiment {name!r} not found in {tracking_uri(params)}")
    runs = mlflow.search_runs(experiment_names=[name], max_results=10000)
    df = comparison(pipeline_table(runs))
    out = Path(args.out)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    if len(df):
        save_figure(comparison_figure(df), out.with_suffix(".png"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False))
    return df


if __name__ == "__main__":
    main()
