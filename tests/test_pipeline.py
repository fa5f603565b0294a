"""End-to-end: the real `dvc repro` in a throw-away copy of the repo on a tiny synthetic config, with the
real MLflow sqlite store read back through the MLflow client."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_utils import dvc, make_repo, python, write_params

pytestmark = pytest.mark.e2e

STAGES = ["data", "gain", "seeds", "sec", "evaluate"]
METRICS = [
    "reports/data/stats.json",
    "reports/gain/metrics.json",
    "reports/seeds/metrics.json",
    "reports/sec/metrics.json",
    "reports/metrics.json",
]


def runs_by_stage(repo: Path) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gain-sec")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'stage'")
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["stage"], []).append(r)
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One full tiny pipeline, shared by the tests of this module."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    first = dvc(repo, "repro")
    return repo, first


def test_data_stage_outputs_and_mlflow_run(pipeline):
    repo, first = pipeline
    root = repo / "data/dataset/VOC2012"
    index = json.loads((repo / "data/dataset/index.json").read_text())
    assert len(index["splits"]["weak_train"]) == 16 and len(index["splits"]["val"]) == 6
    assert all((root / "JPEGImages" / f"{i}.jpg").is_file() for i in index["splits"]["val"])
    stats = json.loads((repo / "reports/data/stats.json").read_text())
    assert stats["images"]["weak_train"] == 16
    assert (repo / "reports/data/samples.png").stat().st_size > 1000

    runs = runs_by_stage(repo)
    (data_run,) = runs["data"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    tags = data_run.data.tags
    assert tags["git_commit"] == head
    assert tags["dvc_stage"] == "data" and len(tags["params_hash"]) == 16
    assert data_run.data.params["data.source"] == "synthetic"
    assert data_run.data.params["data.synthetic.n_train"] == "16"
    assert data_run.data.metrics["data/images_weak_train"] == 16
    assert json.loads((repo / "runs/data.json").read_text())["run_id"] == data_run.info.run_id


def test_every_stage_logged_once_under_one_pipeline(pipeline):
    repo, first = pipeline
    runs = runs_by_stage(repo)
    assert sorted(runs) == sorted(STAGES)
    assert all(len(v) == 1 for v in runs.values())
    pipeline_ids = {v[0].data.tags["pipeline_id"] for v in runs.values()}
    assert len(pipeline_ids) == 1
    parents = {v[0].data.tags["mlflow.parentRunId"] for v in runs.values()}
    assert len(parents) == 1
    gain_run = runs["gain"][0]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    history = client.get_metric_history(gain_run.info.run_id, "train/loss_am")
    assert len(history) == 8  # 2 epochs x 4 steps, one value per step
    assert "val/map" in gain_run.data.metrics
    arts = {a.path for a in client.list_artifacts(gain_run.info.run_id, "attention")}
    assert "attention/epoch_001.png" in arts


def test_outputs_of_every_stage(pipeline):
    repo, _ = pipeline
    ids = json.loads((repo / "data/dataset/index.json").read_text())["splits"]["weak_train"]
    seed_pngs = sorted(p.stem for p in (repo / "data/seeds").glob("*.png"))
    assert seed_pngs == sorted(ids)
    from gain.runtime.io import read_label_png

    for i in ids:
        values = set(read_label_png(repo / "data/seeds" / f"{i}.png").ravel().tolist())
        assert values <= {0, 1, 2, 3, 255}
    for path in METRICS:
        assert json.loads((repo / path).read_text())
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["sec_miou"] <= 1.0 and "sec_crf_miou" in metrics
    for name in (
        "per_class_iou.csv",
        "confusion.csv",
        "confusion.png",
        "per_class_iou.png",
        "qualitative.png",
        "report.md",
    ):
        assert (repo / "reports" / name).stat().st_size > 0, name
    report = (repo / "reports/report.md").read_text()
    assert "SYNTHETIC" in report and "55.3" in report


def test_dvc_metrics_and_plots_show(pipeline):
    repo, _ = pipeline
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    flat = json.dumps(shown)
    assert "sec_miou" in flat and "seed_precision" in flat
    out = repo / "plots_html"
    dvc(repo, "plots", "show", "-o", str(out))
    assert (out / "index.html").is_file()


def test_second_repro_is_a_noop(pipeline):
    repo, _ = pipeline
    before = sum(len(v) for v in runs_by_stage(repo).values())
    again = dvc(repo, "repro")
    assert "Running stage" not in again.stdout
    assert sum(len(v) for v in runs_by_stage(repo).values()) == before


@pytest.fixture(scope="module")
def changed(pipeline, tmp_path_factory):
    """A copy of the pipeline repo (store and DVC cache included, so the shared one stays as it was): sec.lr
    changed and reproduced, then changed back and reproduced again. -> (repo, first output, second output)."""
    repo = tmp_path_factory.mktemp("changed") / "repo"
    shutil.copytree(pipeline[0], repo, symlinks=True)
    write_params(repo, {"sec": {"lr": 0.001}})
    first = dvc(repo, "repro").stdout
    write_params(repo, {"sec": {"lr": 0.002}})
    second = dvc(repo, "repro").stdout
    return repo, first, second


def test_changing_a_sec_param_reruns_only_sec_and_evaluate(changed):
    repo, out, _ = changed
    assert "Running stage 'sec'" in out and "Running stage 'evaluate'" in out
    for stage in ("data", "gain", "seeds"):
        assert f"Running stage '{stage}'" not in out
    runs = runs_by_stage(repo)
    assert len(runs["sec"]) == 2 and len(runs["gain"]) == 1


def test_going_back_to_earlier_params_is_restored_from_the_run_cache(changed):
    """DVC's run-cache brings back sec's and evaluate's outputs for the earlier params without running."""
    repo, _, out = changed
    assert "Running stage" not in out, out
    assert "Stage 'sec' is cached - skipping run, checking out outputs" in out
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in out
    assert len(runs_by_stage(repo)["sec"]) == 2  # no third MLflow run: nothing ran
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."


def test_runtime_knobs_are_not_dvc_params(pipeline, tmp_path):
    """Workers, checkpoint cadence, figure counts and the MLflow experiment never re-run a stage."""
    repo = tmp_path / "repo"
    shutil.copytree(pipeline[0], repo, symlinks=True)
    write_params(repo, {"runtime": {"workers": 1, "sec_ckpt_every": 3, "vis_images": 1, "crf_workers": 1}})
    write_params(repo, {"runtime": {"mlflow": {"experiment": "elsewhere"}}})
    assert "Running stage" not in dvc(repo, "repro").stdout


def test_compare_tables_one_row_per_pipeline_run(changed):
    """Two pipeline executions with runs (the first and the sec.lr change); only sec.lr differs."""
    repo = changed[0]
    out = python(repo, "-m", "gain.evaluation.compare", "--out", "reports/compare")
    import pandas as pd

    df = pd.read_csv(repo / "reports/compare.csv")
    assert len(df) == 2
    assert [c for c in df.columns if "." in c and not c.startswith("eval/")] == ["sec.lr"]
    assert sorted(df["sec.lr"]) == [0.001, 0.002]
    assert df["eval/sec_miou"].between(0, 1).all()
    assert (repo / "reports/compare.png").stat().st_size > 0
    assert "sec.lr" in out.stdout


def test_rerun_from_scratch_gives_identical_outputs(pipeline, tmp_path):
    """Same params and seed on a fresh copy: every metrics file and the dvc.lock hashes are identical."""
    repo, _ = pipeline
    other = make_repo(tmp_path / "again")
    dvc(other, "repro")
    for path in METRICS:
        assert (repo / path).read_text() == (other / path).read_text(), path
    assert (repo / "dvc.lock").read_text() == (other / "dvc.lock").read_text()
