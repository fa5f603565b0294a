"""Compare pipeline runs: every MLflow stage run of an experiment -> one row per pipeline execution.

    python -m gain.evaluation.compare [--experiment gain-sec] [--out reports/compare]

Writes <out>.csv (params that differ between runs + key metrics) and <out>.png (grouped bars).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd

from gain.evaluation.figures import save_figure
from gain.runtime.io import atomic_path
from gain.runtime.params import load_params
from gain.runtime.tracking import tracking_uri

KEY_METRICS = [
    "eval/sec_miou",
    "eval/sec_crf_miou",
    "eval/seed_miou",
    "eval/attn_miou",
    "eval/seed_precision",
    "eval/seed_recall",
    "eval/bias_object_only_accuracy",
    "eval/bias_context_only_accuracy",
    "eval/map",
]


def pipeline_table(runs: pd.DataFrame) -> pd.DataFrame:
    """runs: mlflow.search_runs output (columns tags.*, params.*, metrics.*) -> one row per pipeline_id,
    the union of its stage runs' params and metrics (the latest run of a stage wins)."""
    if runs.empty:
        return pd.DataFrame()
    runs = runs[runs.get("tags.kind") == "stage"].sort_values("start_time")
    rows = []
    for pid, group in runs.groupby("tags.pipeline_id", sort=False):
        row = {
            "pipeline_id": pid,
            "started": group["start_time"].min(),
            "dvc_exp_name": next(
                (x for x in group.get("tags.dvc_exp_name", []) if isinstance(x, str) and x), ""
            ),
            "stages": ",".join(group["tags.stage"]),
        }
        for _, r in group.iterrows():
            for col, val in r.items():
                if (col.startswith("params.") or col.startswith("metrics.")) and pd.notna(val):
                    row[col] = val
        rows.append(row)
    return pd.DataFrame(rows).sort_values("started").reset_index(drop=True)


def changed_params(table: pd.DataFrame) -> list[str]:
    """Params with different values across pipeline runs. A run that skipped a stage (DVC found it up to
    date) has no value for that stage's params; it counts as unchanged there."""
    cols = [c for c in table.columns if c.startswith("params.")]
    return [c for c in cols if table[c].dropna().astype(str).nunique() > 1]


def comparison(table: pd.DataFrame) -> pd.DataFrame:
    metric_cols = [f"metrics.{m}" for m in KEY_METRICS if f"metrics.{m}" in table.columns]
    out = table[["pipeline_id", "dvc_exp_name", "started", *changed_params(table), *metric_cols]].copy()
    out.columns = [c.removeprefix("params.").removeprefix("metrics.") for c in out.columns]
    return out


def comparison_figure(df: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        m
        for m in ("eval/sec_miou", "eval/sec_crf_miou", "eval/seed_miou", "eval/attn_miou")
        if m in df.columns
    ]
    df = df.dropna(subset=metrics, how="all")  # pipelines that stopped before evaluate
    params = [c for c in df.columns if "." in c and c not in metrics and not c.startswith("eval/")]
    labels = [
        "\n".join([row["dvc_exp_name"] or row["pipeline_id"][-8:]] + [f"{p}={row[p]}" for p in params])
        for _, row in df.iterrows()
    ]
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(df)), 4))
    width = 0.8 / max(len(metrics), 1)
    for j, m in enumerate(metrics):
        ax.bar([i + j * width for i in range(len(df))], df[m].astype(float), width=width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(df))], labels, fontsize=6)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("pipeline runs compared (MLflow)", fontsize=9)
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
