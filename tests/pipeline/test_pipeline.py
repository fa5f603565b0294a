"""End-to-end: the real `dvc repro`, `dvc exp run --temp`, a `dvc queue`, `dvc plots`, `dvc push`/`pull` and
`python -m gain.predict` in throw-away copies of the repo on a tiny synthetic config, with the real MLflow
sqlite store read back through the MLflow client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.pipeline_utils import README_EXPERIMENT, dvc, make_repo, python, write_params

pytestmark = pytest.mark.e2e

STAGES = ["data", "gain", "seeds", "sec", "evaluate"]
METRICS = [
    "reports/data/stats.json",
    "reports/gain/metrics.json",
    "reports/seeds/metrics.json",
    "reports/sec/metrics.json",
    "reports/metrics.json",
]
HEADLINE = [
    "map",
    "attn_miou",
    "bias_object_only_accuracy",
    "bias_context_only_accuracy",
    "seed_precision",
    "seed_recall",
    "labeled_fraction",
    "seed_miou",
    "sec_miou",
    "sec_crf_miou",
    "attention_crf_miou",
]


def client_of(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def runs_by_stage(repo: Path) -> dict[str, list]:
    client = client_of(repo)
    exp = client.get_experiment_by_name("gain-sec")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'stage'")
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["stage"], []).append(r)
    return out


def pipeline_runs(repo: Path) -> dict[str, object]:
    """The MLflow pipeline (parent) runs, by name."""
    client = client_of(repo)
    exp = client.get_experiment_by_name("gain-sec")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.kind = 'pipeline'")}


def children(repo: Path, parent) -> dict[str, object]:
    client = client_of(repo)
    found = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return {r.info.run_name: r for r in found}


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (which Python's json accepts and JSON does not)."""

    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def without_provenance(report: str) -> str:
    return report.split("## How these numbers were produced")[0]


# The shared pipeline's params on top of TINY: models logged to MLflow and registered.
PIPELINE_PARAMS = {"runtime": {"mlflow": {"log_models": True}}}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One full tiny pipeline (models logged to MLflow and registered), shared by the tests of this module."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline"), PIPELINE_PARAMS)
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
    client = client_of(repo)
    history = client.get_metric_history(gain_run.info.run_id, "train/loss_am")
    assert len(history) == 8  # 2 epochs x 4 steps, one value per step
    assert "val/map" in gain_run.data.metrics
    arts = {a.path for a in client.list_artifacts(gain_run.info.run_id, "attention")}
    assert "attention/epoch_001.png" in arts


def test_pipeline_run_carries_params_headline_commit_and_dataset(pipeline):
    """The parent run is what MLflow's Compare view compares: named, closed, every DVC param, the headline
    metrics, the commit and command, the dataset with its digest, and the registered model versions."""
    repo, _ = pipeline
    (parent,) = pipeline_runs(repo).values()
    runs = runs_by_stage(repo)
    assert parent.info.run_name == f"GAIN-{parent.info.run_id[:8]}" and parent.info.status == "FINISHED"
    assert parent.info.end_time >= max(r[0].info.end_time for r in runs.values())  # closed by the last stage
    assert parent.data.params["gain.alpha"] == "1.0" and parent.data.params["sec.lr"] == "0.002"
    assert parent.data.params["data.synthetic.n_train"] == "16" and len(parent.data.params) > 50
    assert set(HEADLINE) <= set(parent.data.metrics)
    evaluate = json.loads((repo / "reports/metrics.json").read_text())
    assert parent.data.metrics["sec_miou"] == evaluate["sec_miou"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    tags = parent.data.tags
    assert tags["git_commit"] == head.strip() and tags["command"] == "dvc repro" and tags["method"] == "GAIN"
    assert tags["last_stage"] == "evaluate"
    assert {r.info.run_name: r.data.tags["pipeline_name"] for r in children(repo, parent).values()} == {
        s: parent.info.run_name for s in STAGES
    }
    index = json.loads((repo / "data/dataset/index.json").read_text())
    (ds,) = parent.inputs.dataset_inputs
    assert (
        ds.dataset.digest == index["digest"][:16]
        and json.loads(ds.dataset.profile)["sha256"] == index["digest"]
    )
    # The networks the stages handed on, exactly those bytes, registered with the producing run's version.
    client = client_of(repo)
    for stage, name, path in (
        ("gain", "gain-classifier", "models/gain/model.pt"),
        ("sec", "sec-segmenter", "models/sec/model.pt"),
    ):
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert version.run_id == runs[stage][0].info.run_id and tags[f"model.{name}"] == str(version.version)
        copy = client.download_artifacts(version.run_id, "checkpoint/model.pt", str(repo / "dl" / stage))
        assert Path(copy).read_bytes() == (repo / path).read_bytes()
        shutil.rmtree(repo / "dl")


def test_registered_models_are_safe_exports_with_signature_that_reproduce_the_weights(pipeline, tmp_path):
    """pt2 (torch.export, no pickle, no pickle warning from any stage), a signature and an input example;
    the loaded model gives the model file's outputs, for other batch and image sizes too."""
    import mlflow
    import mlflow.pytorch
    import torch

    from gain.cam.model import load_classifier
    from gain.sec.model import load_segmenter

    repo, first = pipeline
    assert "Pickle" not in first.stdout + first.stderr
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        for name, loader, path in (
            ("gain-classifier", load_classifier, "models/gain/model.pt"),
            ("sec-segmenter", load_segmenter, "models/sec/model.pt"),
        ):
            uri = f"models:/{name}/1"
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / name)))
            assert sorted(p.name for p in (local / "data").iterdir()) == ["model.pt2"]
            info = mlflow.models.get_model_info(uri)
            assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)
            assert info.saved_input_example_info is not None
            x = torch.randn(3, 3, 40, 56)
            with torch.no_grad():
                expected = loader(repo / path)[0](x)
                assert torch.allclose(mlflow.pytorch.load_model(uri)(x), expected, atol=1e-5), name
    finally:
        mlflow.set_tracking_uri(None)


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
        assert strict_json((repo / path).read_text())
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["sec_miou"] <= 1.0 and "sec_crf_miou" in metrics
    assert 0.0 <= metrics["attention_crf_miou"] <= 1.0  # the CRF-alone reference row
    assert metrics["method"] == "GAIN"
    for name in (
        "per_class_iou.csv",
        "confusion.csv",
        "confusion.png",
        "per_class_iou.png",
        "qualitative.png",
        "report.md",
    ):
        assert (repo / "reports" / name).stat().st_size > 0, name
    # Per-step training losses (GAIN: 2 epochs x 4 steps, SEC: 6 iterations), every step once.
    import pandas as pd

    for stage, steps, losses in (
        ("gain", 8, ["loss_cl", "loss_am"]),
        ("sec", 6, ["loss_seed", "loss_constrain"]),
    ):
        table = pd.read_csv(repo / f"reports/{stage}/train_loss.csv")
        assert table["step"].tolist() == list(range(1, steps + 1))
        assert {"loss_total", "lr", *losses} <= set(table.columns) and table["loss_total"].notna().all()
    assert pd.read_csv(repo / "reports/gain/history.csv")[["step", "epoch"]].values.tolist() == [
        [4, 1],
        [8, 2],
    ]


def test_report_names_command_commit_and_runs(pipeline):
    repo, _ = pipeline
    report = (repo / "reports/report.md").read_text()
    assert "SYNTHETIC" in report and "55.3" in report
    assert "| **GAIN** (this run) |" in report and "SEC (CAM" not in report  # one name per method
    (parent,) = pipeline_runs(repo).values()
    provenance = report.split("## How these numbers were produced")[1]
    assert "- command: `dvc repro`" in provenance
    assert parent.data.tags["git_commit"] in provenance and "DVC experiment: (none: dvc repro)" in provenance
    assert f"{parent.info.run_name} (`{parent.info.run_id}`)" in provenance
    for stage, (run,) in runs_by_stage(repo).items():
        assert f"| {stage} | `{run.info.run_id}` | {parent.info.run_name} |" in provenance
    assert "gain-classifier/1" in provenance and "sec-segmenter/1" in provenance


def numbers(tree) -> list:
    if isinstance(tree, dict):
        return [n for v in tree.values() for n in numbers(v)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def test_dvc_metrics_are_the_headline_only(pipeline):
    """`dvc metrics show` (and so `dvc exp show`) lists a few dozen numbers, the headline among them."""
    repo, _ = pipeline
    shown = strict_json(dvc(repo, "metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    assert set(files) == {
        "reports/gain/metrics.json",
        "reports/seeds/metrics.json",
        "reports/sec/metrics.json",
        "reports/metrics.json",
    }
    values = {k: v for f in files.values() for k, v in f["data"].items()}
    assert 10 <= len(numbers(shown)) <= 40, numbers(shown)
    assert set(HEADLINE) <= set(values)
    for path in ("reports/seeds/per_class.csv", "reports/per_class_iou.csv"):  # per-class: CSV plot data
        assert (repo / path).read_text().startswith("class,")


def test_dvc_plots_have_titles_and_axis_labels(pipeline):
    repo, _ = pipeline
    shown = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    expected = {
        "GAIN training loss": ("training step", "loss"),
        "GAIN validation": ("epoch", "mAP / exact match / attention mIoU"),
        "SEC training loss": ("training step", "loss"),
        "SEC validation": ("training step", "mIoU / pixel accuracy"),
        "SEC per-class IoU": ("IoU", "class"),
        "Seed IoU per class": ("seed IoU", "class"),
    }
    for name, (x_label, y_label) in expected.items():
        (plot,) = shown[name]
        spec = json.dumps(plot["content"])
        assert plot["content"]["title"]["text"] and f'"title": "{x_label}"' in spec, name
        assert f'"title": "{y_label}"' in spec and plot["content"]["data"]["values"], name
    images = {k for k, v in shown.items() if v[0]["type"] == "image"}
    assert images == {
        "reports/data/samples.png",
        "reports/gain/attention.png",
        "reports/seeds/grid.png",
        "reports/qualitative.png",
        "reports/confusion.png",
        "reports/per_class_iou.png",
    }
    assert not [k for k in shown if k.endswith(".csv")]  # each CSV drawn once, by its definition
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
    # params.yaml changed: validated; results changed: `track` finds no pipeline run to annotate
    assert re.findall(r"Running stage '(\w+)'", out) == ["check", "track"], out
    assert "track: no stage ran in this pipeline" in out
    assert "Stage 'sec' is cached - skipping run, checking out outputs" in out
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in out
    assert len(runs_by_stage(repo)["sec"]) == 2  # no third MLflow run: nothing ran
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."


def test_a_pipeline_run_names_the_runs_behind_stages_restored_from_the_run_cache(changed, tmp_path):
    """sec re-runs (its script changed, not its result) while evaluate comes back from DVC's run-cache: the
    pipeline run tags every stage it did not run with the run that produced its outputs and carries the
    headline metrics of the outputs now in the workspace."""
    repo = tmp_path / "repo"
    shutil.copytree(changed[0], repo, symlinks=True)
    write_params(repo, {"sec": {"lr": 0.001}})  # the workspace holds sec.lr=0.001's outputs again
    dvc(repo, "repro")
    write_params(repo, {"sec": {"lr": 0.002}})
    with open(repo / "stages/sec.py", "a") as f:
        f.write("# an edit that changes sec's code dependency, not its model\n")
    out = dvc(repo, "repro").stdout
    assert re.findall(r"Running stage '(\w+)'", out) == ["check", "sec", "track"], out
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in out
    runs = runs_by_stage(repo)
    latest = max(runs["sec"], key=lambda r: r.info.start_time)
    parent = client_of(repo).get_run(latest.data.tags["mlflow.parentRunId"])
    assert set(children(repo, parent)) == {"sec"}
    first = min(runs["evaluate"], key=lambda r: r.info.start_time)  # the first pipeline's, sec.lr=0.002
    tags = parent.data.tags
    assert tags["restored"] == "data,gain,seeds,evaluate" and "restored.sec" not in tags
    assert tags["restored.evaluate"] == first.info.run_id
    assert tags["restored.evaluate.pipeline"] == first.data.tags["pipeline_name"] != parent.info.run_name
    for stage in ("data", "gain", "seeds"):
        (run,) = runs[stage]
        assert tags[f"restored.{stage}"] == run.info.run_id, stage
    evaluate = json.loads((repo / "reports/metrics.json").read_text())
    assert set(HEADLINE) <= set(parent.data.metrics)
    assert parent.data.metrics["sec_miou"] == evaluate["sec_miou"] == first.data.metrics["sec_miou"]
    assert "restored by DVC: data (run" in out


def test_runtime_knobs_are_not_dvc_params(pipeline, tmp_path):
    """Workers, checkpoint cadence, figure counts and the MLflow experiment never re-run a stage."""
    repo = tmp_path / "repo"
    shutil.copytree(pipeline[0], repo, symlinks=True)
    write_params(repo, {"runtime": {"workers": 1, "sec_ckpt_every": 3, "vis_images": 1, "crf_workers": 1}})
    write_params(repo, {"runtime": {"mlflow": {"experiment": "elsewhere"}}})
    assert re.findall(r"Running stage '(\w+)'", dvc(repo, "repro").stdout) == ["check"]


def test_an_unknown_top_level_key_stops_dvc_repro_in_one_line(pipeline, tmp_path):
    """No stage reads `sed`, so none would run: the `check` stage validates the whole file on every change."""
    repo = tmp_path / "repo"
    shutil.copytree(pipeline[0], repo, symlinks=True)
    with open(repo / "params.yaml", "a") as f:
        f.write("sed: 1\n")
    res = dvc(repo, "repro", check=False)
    assert res.returncode != 0
    assert "error: params.yaml: sed: unknown key; did you mean seed?" in res.stderr + res.stdout
    assert re.findall(r"Running stage '(\w+)'", res.stdout) == ["check"]


def test_compare_tables_one_row_per_pipeline_run(changed):
    """Two pipeline executions with runs (the first and the sec.lr change); only sec.lr differs."""
    repo = changed[0]
    out = python(repo, "-m", "gain.report.compare", "--out", "reports/compare")
    import pandas as pd

    df = pd.read_csv(repo / "reports/compare.csv")
    assert len(df) == 2 and df["name"].str.startswith("GAIN-").all()
    assert [c for c in df.columns if "." in c] == ["sec.lr"]
    assert sorted(df["sec.lr"]) == [0.001, 0.002]
    assert df["sec_miou"].between(0, 1).all()
    assert (repo / "reports/compare.png").stat().st_size > 0
    assert "sec.lr" in out.stdout


def test_rerun_from_scratch_gives_identical_outputs(pipeline, tmp_path):
    """Same params and seed on a fresh copy: every metrics file and the dvc.lock hashes are identical, except
    report.md's provenance (run ids, commit), which names this execution."""
    repo, _ = pipeline
    other = make_repo(tmp_path / "again", PIPELINE_PARAMS)  # the same params.yaml, which `check` depends on
    dvc(other, "repro")
    for path in METRICS:
        assert (repo / path).read_text() == (other / path).read_text(), path
    report = "reports/report.md"
    assert without_provenance((repo / report).read_text()) == without_provenance((other / report).read_text())
    assert lock_without_report(repo) == lock_without_report(other)


def lock_without_report(repo: Path) -> str:
    """dvc.lock with report.md's hash and size left out."""
    text = (repo / "dvc.lock").read_text()
    cut = re.sub(r"(- path: reports/report\.md\n)(?:\s+(?:hash|md5|size): \S+\n)+", r"\1", text)
    assert cut != text
    return cut


# --- experiments the way the README prints them ----------------------------------------------------------


def bare_shell(repo: Path, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`script` in bash with a minimal environment whose PATH lacks the venv (a fresh terminal)."""
    env = [
        "env",
        "-i",
        f"HOME={os.environ.get('HOME', '/root')}",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "OMP_NUM_THREADS=1",
        f"DVC_SITE_CACHE_DIR={repo / '.dvc_site_cache'}",
    ]
    res = subprocess.run(
        [*env, "bash", "-c", f"set -e\n{script}"], cwd=repo, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, (
        f"{script}\nfailed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    )
    return res


@pytest.fixture(scope="module")
def experiments(pipeline, tmp_path_factory):
    """A committed copy of the pipeline repo (store and cache included) in which the README's ablation lines
    run as printed, then a two-task queue. -> (repo, README lines' output, queued experiment names)."""
    repo = tmp_path_factory.mktemp("experiments") / "repo"
    shutil.copytree(pipeline[0], repo, symlinks=True)
    write_params(repo, {"runtime": {"mlflow": {"log_models": False}}})  # not a DVC param: re-runs nothing
    for key, value in (("user.name", "test"), ("user.email", "test@example.com")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "pipeline run"], cwd=repo, check=True)
    readme = bare_shell(repo, "\n".join(README_EXPERIMENT))
    # `dvc queue start` runs its worker as `dvc` from PATH, hence the activated venv.
    queue = (
        "dvc exp run --queue -S evaluate.crf=false -S evaluate.split=val,seed_eval"  # re-runs evaluate only
    )
    bare_shell(repo, f"source .venv/bin/activate\n{queue}\ndvc queue start")
    deadline = time.monotonic() + 400
    while True:
        status = dvc(repo, "queue", "status").stdout
        if not re.search(r"Queued|Running", status) and "Success" in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2 and "Failed" not in status, status
    queued = re.findall(r"^\w+\s+(\S+)\s+.*Success", status, flags=re.M)
    return repo, readme.stdout, queued


def test_readme_ablation_runs_verbatim_without_the_venv_on_path(experiments):
    """`.venv/bin/dvc exp run --temp -S ...` from a shell without the venv: the stages find the project's
    interpreter (stages/python), params.yaml is left as it was, the experiment is logged under its name."""
    repo, out, _ = experiments
    assert subprocess.run(["git", "diff", "--quiet", "--", "params.yaml"], cwd=repo).returncode == 0
    assert "gradcam" in out and "gain.alpha" in out  # `dvc exp show --only-changed`
    run = pipeline_runs(repo)["gradcam"]
    assert run.info.status == "FINISHED" and run.data.params["gain.alpha"] == "0.0"
    assert run.data.tags["method"] == "Grad-CAM" and run.data.tags["dvc_exp_name"] == "gradcam"
    assert run.data.tags["command"] == "dvc exp run --temp -n gradcam -S gain.alpha=0"
    assert run.data.tags["overrides"] == "gain.alpha=0.0"
    assert set(HEADLINE) <= set(run.data.metrics)
    stages = children(repo, run)
    assert set(stages) == {"gain", "seeds", "sec", "evaluate"}  # data was up to date
    assert {r.data.tags["pipeline_name"] for r in stages.values()} == {"gradcam"}
    client = client_of(repo)
    report = client.download_artifacts(stages["evaluate"].info.run_id, "report/report.md", str(repo / "dl"))
    text = Path(report).read_text()
    assert "Seeds from: **Grad-CAM**" in text and "- DVC experiment: gradcam" in text
    assert "`dvc exp run --temp -n gradcam -S gain.alpha=0`" in text and "`gain.alpha=0.0`" in text
    assert run.info.run_id in text


def test_two_queued_experiments_each_get_a_pipeline_run(experiments):
    repo, _, queued = experiments
    runs = pipeline_runs(repo)
    assert len(queued) == 2 and set(queued) <= set(runs)
    assert sorted(runs[name].data.params["evaluate.split"] for name in queued) == ["seed_eval", "val"]
    for name in queued:
        run = runs[name]
        assert run.info.status == "FINISHED" and run.data.tags["dvc_exp_name"] == name
        assert run.data.params["evaluate.crf"] == "False" and "sec_crf_miou" not in run.data.metrics
        assert "attention_crf_miou" not in run.data.metrics
        assert set(children(repo, run)) == {"evaluate"}  # only what evaluate.* changes
        assert set(HEADLINE) - {"sec_crf_miou", "attention_crf_miou"} <= set(run.data.metrics)
        assert run.data.params["gain.alpha"] == "1.0"  # queued from the committed params, not gradcam's
    assert subprocess.run(["git", "diff", "--quiet", "--", "params.yaml"], cwd=repo).returncode == 0


def test_exp_show_lists_the_headline_and_the_ablated_params(experiments):
    repo, _, _ = experiments
    header = dvc(repo, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert {"sec_miou", "sec_crf_miou", "gain.alpha", "evaluate.split", "method"} <= set(header)
    metrics = header[header.index("parent") + 1 : header.index("seed")]
    assert set(HEADLINE) <= set(metrics) and len(metrics) <= 40, metrics
    changed = dvc(repo, "exp", "show", "--only-changed", "--csv").stdout.splitlines()[0].split(",")
    assert {"gain.alpha", "evaluate.split", "method"} <= set(changed) and "gain.lr" not in changed


def test_plots_diff_between_two_experiments_shows_both(experiments):
    repo, _, queued = experiments
    revs = ["gradcam", queued[0]]
    shown = json.loads(dvc(repo, "plots", "diff", *revs, "--json").stdout)["data"]
    for name in ("GAIN validation", "GAIN training loss", "SEC validation", "SEC per-class IoU"):
        (plot,) = shown[name]
        assert sorted(plot["revisions"]) == sorted(revs), name
        assert {v["rev"] for v in plot["content"]["data"]["values"]} == set(revs), name
    assert {p["revisions"][0] for p in shown["reports/qualitative.png"]} == set(revs)
    out = repo / "diff_html"
    dvc(repo, "plots", "diff", *revs, "-o", str(out))
    page = (out / "index.html").read_text()
    assert "/* vega-embed " in page and "cdn.jsdelivr" not in page  # .dvc/plots.html: works offline


def test_compare_labels_each_pipeline_run_by_its_name(experiments, monkeypatch):
    repo, _, queued = experiments
    import mlflow
    import pandas as pd

    from gain.report.compare import main as compare

    monkeypatch.chdir(repo)
    try:
        compare(["--out", "reports/compare"])
    finally:
        mlflow.set_tracking_uri(None)
    monkeypatch.undo()
    df = pd.read_csv(repo / "reports/compare.csv")
    assert set(df["name"]) >= {"gradcam", *queued}
    assert {"gain.alpha", "evaluate.split", "evaluate.crf"} <= set(df.columns)
    assert df["sec_miou"].between(0, 1).all()
    assert (repo / "reports/compare.png").stat().st_size > 0


# --- the default remote, prediction --------------------------------------------------------------------


def test_push_from_one_clone_and_pull_into_another(pipeline, tmp_path):
    """The default remote is a folder beside the repo: a second clone pulls the models and datasets."""
    first = tmp_path / "first"
    shutil.copytree(pipeline[0], first, symlinks=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "-A"], cwd=first, check=True)
    subprocess.run([*git, "commit", "-qm", "results"], cwd=first, check=True)
    pushed = dvc(first, "push")
    assert (tmp_path / "gain-sec-dvc-remote" / "files" / "md5").is_dir(), pushed.stdout
    second = tmp_path / "second"
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True)
    assert not (second / "models/sec/model.pt").exists()
    dvc(second, "pull")
    for path in ("models/gain/model.pt", "models/sec/model.pt", "data/dataset/index.json"):
        assert (second / path).read_bytes() == (first / path).read_bytes(), path
    seeds = sorted(p.name for p in (first / "data/seeds").iterdir())
    assert seeds and sorted(p.name for p in (second / "data/seeds").iterdir()) == seeds
    assert "up to date" in dvc(second, "status").stdout


def test_predict_on_own_images_from_workspace_models_and_a_registered_version(
    pipeline, tmp_path, monkeypatch
):
    """`python -m gain.predict` (called in-process, cwd = the repo) on two images of other sizes and format."""
    from gain.predict import main as predict
    from gain.runtime.errors import InputError

    repo, _ = pipeline
    src = sorted((repo / "data/dataset/VOC2012/JPEGImages").glob("*.jpg"))[:2]
    images = []
    for i, path in enumerate(src):
        images.append(tmp_path / f"photo{i}.png")
        Image.open(path).convert("RGB").resize((60 + 10 * i, 50)).save(images[-1])
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "pred"
    predict([*map(str, images), "--out", str(out)])
    result = json.loads((out / "predictions.json").read_text())
    classes = json.loads((repo / "data/dataset/index.json").read_text())["classes"]
    assert result["models"] == {"gain": "models/gain/model.pt", "sec": "models/sec/model.pt"}
    for image, entry in zip(images, result["images"], strict=True):
        stem, size = image.stem, Image.open(image).size
        assert entry["predicted_classes"] and set(entry["predicted_classes"]) <= set(classes[1:])
        assert sorted(entry["class_probabilities"]) == sorted(classes[1:])
        assert abs(sum(entry["segmentation_fractions"].values()) - 1) < 1e-6
        for cls in entry["predicted_classes"]:
            assert Image.open(out / f"{stem}_attention_{cls}.png").size == size
        for name in ("sec", "sec_crf"):
            assert Image.open(out / f"{stem}_{name}.png").size == size
        assert (out / f"{stem}_summary.png").stat().st_size > 0
    again = tmp_path / "registered"
    predict([str(images[0]), "--out", str(again), "--model-version", "1"])
    registered = json.loads((again / "predictions.json").read_text())
    assert registered["models"] == {"gain": "gain-classifier/1", "sec": "sec-segmenter/1"}
    assert registered["images"][0] == result["images"][0]  # the same weights
    with pytest.raises(InputError, match="gain-classifier.*version 9"):
        predict([str(images[0]), "--out", str(again), "--gain-version", "9"])
