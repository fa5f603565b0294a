"""gain/runtime/tracking.py stage_run (and through it gain/runtime/store.py's checks and reaping) against real
MLflow stores: a copied sqlite store per test, and one real `mlflow server` process (e2e)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from gain.runtime.naming import method_name
from gain.runtime.params import (
    DVC_PARAMS,
    STAGE_PARAMS,
    flatten,
    load_params,
    params_hash,
    parse_params,
    read_yaml,
    section_dict,
)
from gain.runtime.store import EXPERIMENT_KIND, TrackingError, reap_dead_runs
from gain.runtime.tracking import NullRun, StageRun, record_pipeline, stage_run
from tests.pipeline_utils import deep_update

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def all_runs(uri: str) -> list:
    client = client_for(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stage_run_logs_a_nested_tagged_run(mlflow_uri, tmp_repo, monkeypatch, params):
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-1")
    with stage_run("gain", params) as run:
        run.log_metrics({"train/loss": 0.5}, step=3)
        run.log_metrics({"train/loss": 0.25}, step=4)
        run_id = run.run_id
    client = client_for(mlflow_uri)
    r = client.get_run(run_id)
    used = section_dict(params, STAGE_PARAMS["gain"])
    assert r.info.run_name == "gain" and r.info.status == "FINISHED"
    tags = r.data.tags
    assert tags["stage"] == "gain" and tags["dvc_stage"] == "gain" and tags["kind"] == "stage"
    assert tags["pipeline_id"] == "pipe-1"
    assert tags["params_hash"] == params_hash(used)
    assert tags["git_commit"] == "unknown"  # tmp_repo is not a git repository
    # The stage's params, flat, as strings; nothing from sections the stage does not read.
    assert r.data.params == {k: str(v) for k, v in flatten(used).items()}
    assert r.data.params["gain.alpha"] == "1.0" and "sec.lr" not in r.data.params
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5), (4, 0.25)]
    # Nested under a pipeline parent run, which carries every DVC param (not the runtime knobs), is named
    # after the method and its short id, and is closed with the stage.
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["kind"] == "pipeline" and parent.data.tags["pipeline_id"] == "pipe-1"
    everything = flatten(section_dict(params, DVC_PARAMS))
    assert parent.data.params == {k: str(v) for k, v in everything.items()}
    assert "sec.lr" in parent.data.params and not any(k.startswith("runtime.") for k in parent.data.params)
    assert parent.info.run_name == f"GAIN-{parent.info.run_id[:8]}" == tags["pipeline_name"]
    assert parent.info.status == "FINISHED" and parent.data.tags["last_stage"] == "gain"
    # The experiment's artifacts live under the repo root, with the whole params file attached to the run.
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.name == params.runtime.mlflow.experiment
    assert exp.artifact_location == (tmp_repo / "mlartifacts" / params.runtime.mlflow.experiment).as_uri()
    logged = json.loads(Path(client.download_artifacts(run_id, "params.json", str(tmp_repo))).read_text())
    assert logged["sec"]["lr"] == params.sec.lr and logged["gain"]["alpha"] == params.gain.alpha
    # runs/<stage>.json points at the run, so outputs DVC restores from its cache still find their run.
    pointer = json.loads((tmp_repo / "runs" / "gain.json").read_text())
    assert pointer["run_id"] == run_id and pointer["pipeline_id"] == "pipe-1"
    assert pointer["tracking_uri"] == mlflow_uri and pointer["params_hash"] == tags["params_hash"]


def test_dvc_environment_becomes_tags(mlflow_uri, monkeypatch, params):
    monkeypatch.setenv("DVC_STAGE", "gain@alpha0")
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with stage_run("gain", params) as run:
        run_id = run.run_id
    client = client_for(mlflow_uri)
    tags = client.get_run(run_id).data.tags
    assert tags["dvc_stage"] == "gain@alpha0" and tags["stage"] == "gain"
    assert tags["dvc_exp_name"] == "lucky-exp" and tags["dvc_exp_baseline_rev"] == "a" * 40
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert (
        parent.data.tags["dvc_exp_name"] == "lucky-exp"
        and parent.data.tags["dvc_exp_baseline_rev"] == "a" * 40
    )
    assert parent.info.run_name == "lucky-exp" == tags["pipeline_name"]


def test_git_commit_tag_is_head(mlflow_uri, tmp_repo, params):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    with stage_run("data", params) as run:
        run_id = run.run_id
    assert client_for(mlflow_uri).get_run(run_id).data.tags["git_commit"] == head


def test_stages_of_one_pipeline_share_one_parent(mlflow_uri, monkeypatch, params):
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-shared")
    with stage_run("data", params) as run:
        first = run.run_id
    with stage_run("gain", params) as run:
        second = run.run_id
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-other")
    with stage_run("data", params) as run:
        third = run.run_id
    client = client_for(mlflow_uri)
    parent = {r: client.get_run(r).data.tags["mlflow.parentRunId"] for r in (first, second, third)}
    assert parent[first] == parent[second] != parent[third]
    assert client.get_run(parent[third]).data.tags["pipeline_id"] == "pipe-other"
    kinds = sorted(r.data.tags["kind"] for r in all_runs(mlflow_uri))
    assert kinds == ["pipeline", "pipeline", "stage", "stage", "stage"]


def test_failed_stage_marks_the_run_failed_and_writes_no_pointer(mlflow_uri, tmp_repo, params):
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("data", params) as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    client = client_for(mlflow_uri)
    r = client.get_run(run_id)
    assert r.info.status == "FAILED"
    assert client.get_run(r.data.tags["mlflow.parentRunId"]).info.status == "FAILED"
    assert not (tmp_repo / "runs" / "data.json").exists()


def test_an_interrupted_stage_and_its_pipeline_run_are_both_killed(mlflow_uri, tmp_repo, params):
    """Ctrl-C tells one story in MLflow: the stage run and its pipeline run are both KILLED."""
    with pytest.raises(KeyboardInterrupt):
        with stage_run("data", params) as run:
            run_id = run.run_id
            raise KeyboardInterrupt
    client = client_for(mlflow_uri)
    r = client.get_run(run_id)
    assert r.info.status == "KILLED"
    assert client.get_run(r.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert not (tmp_repo / "runs" / "data.json").exists()


def test_pipeline_run_is_running_while_a_stage_runs_and_reopened_by_the_next(mlflow_uri, monkeypatch, params):
    """Each stage reopens its pipeline run and closes it when it ends, so a pipeline stopped after any stage
    is not left RUNNING; the stage runs keep their own names."""
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-open")
    client = client_for(mlflow_uri)
    seen = []
    for stage in ("data", "gain", "seeds"):
        with stage_run(stage, params) as run:
            seen.append(client.get_run(run.parent_id).info.status)
        assert client.get_run(run.parent_id).info.status == "FINISHED"
    assert seen == ["RUNNING"] * 3
    children = client.search_runs([client.get_run(run.parent_id).info.experiment_id], "tags.kind = 'stage'")
    assert sorted(c.info.run_name for c in children) == ["data", "gain", "seeds"]
    assert {c.data.tags["pipeline_name"] for c in children} == {client.get_run(run.parent_id).info.run_name}
    assert len({c.data.tags["mlflow.parentRunId"] for c in children}) == 1


def test_killed_stage_is_reaped_with_its_pipeline_run(mlflow_uri, monkeypatch, params):
    """A stage killed outright (SIGKILL) leaves both runs RUNNING; the next stage marks both KILLED."""
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-killed")
    client = client_for(mlflow_uri)
    with stage_run("data", params) as run:
        dead, parent = run.run_id, run.parent_id
    # What a SIGKILL leaves behind: RUNNING runs whose process (pid 2**22 + 1 never exists) is gone.
    client.update_run(dead, status="RUNNING")
    client.update_run(parent, status="RUNNING")
    client.set_tag(dead, "process", f"{2**22 + 1}:1")
    exp_id = client.get_run(dead).info.experiment_id
    assert reap_dead_runs(client, exp_id) == [dead]
    assert client.get_run(dead).info.status == "KILLED" and client.get_run(parent).info.status == "KILLED"
    with stage_run("gain", params) as run:  # the live one is left alone
        assert reap_dead_runs(client, exp_id) == []
        assert client.get_run(run.run_id).info.status == "RUNNING"


def test_headline_metrics_and_dataset_reach_the_pipeline_run(mlflow_uri, tmp_repo, monkeypatch, params):
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-head")
    index = SimpleNamespace(
        root=tmp_repo / "data/dataset/VOC2012",
        source="synthetic",
        digest="ab" * 32,
        classes=("background", "disc"),
        splits={"val": ["a", "b"], "weak_train": ["c"]},
    )
    with stage_run("evaluate", params) as run:
        run.log_dataset(index)
        run.log_pipeline_metrics(
            {"sec_miou": 0.5, "method": "GAIN", "flag": True, "nan": float("nan"), "n": 3}
        )
    client = client_for(mlflow_uri)
    for r in (client.get_run(run.run_id), client.get_run(run.parent_id)):
        assert r.data.metrics == {"sec_miou": 0.5, "n": 3.0}  # strings, bools and NaN are not metrics
        (ds,) = r.inputs.dataset_inputs
        assert ds.dataset.name == "synthetic" and ds.dataset.digest == "ab" * 8
        profile = json.loads(ds.dataset.profile)
        assert profile["sha256"] == "ab" * 32 and profile["splits"] == {"val": 2, "weak_train": 1}
        assert json.loads(ds.dataset.source)["uri"] == str(index.root.resolve())
        assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "evaluate"


def test_train_log_keeps_the_latest_value_of_each_step_up_to_the_end(mlflow_uri, tmp_repo, params):
    """The per-step log behind train_loss.csv: a step replayed after a resume keeps its latest values, steps
    beyond the end (a longer earlier run) and lines torn by a kill are left out."""
    with stage_run("sec", params) as run:
        for step in (1, 2, 3, 4):
            run.log_metrics({"train/loss_total": 10.0 + step, "train/lr": 0.1, "val/miou": 0.5}, step=step)
        run.log_metrics({"train/loss_total": 99.0}, step=2)  # replayed after a resume
        run.log_metrics({"map": 0.3})  # no step: not a per-step row
        with open(run.step_log, "a") as f:
            f.write('{"step": 5, "loss_to')
        rows = run.train_log(3)
    assert rows == [
        {"step": 1, "loss_total": 11.0, "lr": 0.1},
        {"step": 2, "loss_total": 99.0},
        {"step": 3, "loss_total": 13.0, "lr": 0.1},
    ]
    assert (tmp_repo / run.step_log).is_file() and run.step_log.parts[:2] == ("checkpoints", "sec")
    other = parse_params(deep_update(read_yaml(REPO / "params.yaml"), {"sec": {"lr": 0.5}}))
    with stage_run("sec", other) as run2:
        assert run2.step_log != run.step_log and run2.train_log(3) == []  # other params: another log
    assert NullRun().train_log(3) == []


def test_method_names():
    assert method_name(1.0, False) == "GAIN"
    assert method_name(0.0, False) == "Grad-CAM"
    assert method_name(0.0, True) == "GAIN_ext" == method_name(1.0, True)


def test_only_stages_whose_params_include_gain_tag_the_method(mlflow_uri, monkeypatch):
    """The method comes from gain.alpha and gain.ext, so only a stage that reads gain.* names it: `data` opens
    the pipeline run without a `method` tag, `gain` tags its own run and the pipeline run, `seeds` neither."""
    assert [s for s, sections in STAGE_PARAMS.items() if "gain" in sections] == ["gain"]
    gradcam = parse_params(deep_update(read_yaml(REPO / "params.yaml"), {"gain": {"alpha": 0.0}}))
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-method")
    client = client_for(mlflow_uri)
    runs, parent_tags = {}, {}
    for stage in ("data", "gain", "seeds"):
        with stage_run(stage, gradcam) as run:
            runs[stage], parent_id = run.run_id, run.parent_id
        parent_tags[stage] = client.get_run(parent_id).data.tags
    tags = {stage: client.get_run(run_id).data.tags for stage, run_id in runs.items()}
    assert "method" not in tags["data"] and "method" not in parent_tags["data"]
    assert tags["gain"]["method"] == "Grad-CAM" == parent_tags["gain"]["method"]
    assert "method" not in tags["seeds"] and parent_tags["seeds"]["method"] == "Grad-CAM"


def test_provenance_finds_the_run_behind_each_output(mlflow_uri, tmp_repo, monkeypatch, params):
    """report.md names, per stage, the run whose output is in the workspace now, also when that run belongs
    to an earlier pipeline (DVC restored or kept the output)."""
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-early")
    model = tmp_repo / "models/gain/model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights A")
    with stage_run("gain", params) as run:
        early = run.run_id
    model.write_bytes(b"weights B")
    with stage_run("gain", params) as run:
        late = run.run_id
    model.write_bytes(b"weights A")  # e.g. `dvc checkout` of the earlier experiment
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-late")
    with stage_run("evaluate", params) as run:
        prov = run.provenance()
    assert late != early
    assert prov["stages"]["gain"]["run_id"] == early
    assert prov["stages"]["evaluate"]["run_id"] == run.run_id
    assert "data" not in prov["stages"]  # no output, no run
    assert prov["parent_run_id"] == run.parent_id and prov["pipeline_name"].startswith("GAIN-")
    assert prov["tracking_uri"] == mlflow_uri and prov["git_commit"] == "unknown"


def test_a_pipeline_run_names_the_run_behind_an_output_it_did_not_produce(
    mlflow_uri, tmp_repo, monkeypatch, params
):
    """gain ran in an earlier pipeline; this pipeline ran only seeds (DVC restored or kept gain's model): the
    pipeline run is tagged with gain's run and carries both stages' metrics files; `track`'s pass over every
    stage finds the same, and a pipeline in which no stage ran has no run to annotate."""
    model, reports = tmp_repo / "models/gain/model.pt", tmp_repo / "reports"
    model.parent.mkdir(parents=True)
    (reports / "gain").mkdir(parents=True)
    (reports / "seeds").mkdir(parents=True)
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-gain")
    with stage_run("gain", params) as run:
        model.write_bytes(b"weights")
        (reports / "gain/metrics.json").write_text('{"map": 0.5, "method": "GAIN"}')
        gain_run = run.run_id
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-seeds")
    with stage_run("seeds", params) as run:
        (reports / "seeds/metrics.json").write_text('{"seed_miou": 0.25}')
        parent_id, seeds_run = run.parent_id, run.run_id
    client = client_for(mlflow_uri)
    parent = client.get_run(parent_id)
    assert parent.data.tags["restored"] == "gain" and parent.data.tags["restored.gain"] == gain_run
    assert (
        parent.data.tags["restored.gain.pipeline"]
        == f"GAIN-{client.get_run(gain_run).data.tags['mlflow.parentRunId'][:8]}"
    )
    assert parent.data.metrics == {"map": 0.5, "seed_miou": 0.25}
    assert parent.data.tags["method"] == "GAIN"  # from the gain run that made the restored model
    assert (
        "restored" not in client.get_run(client.get_run(gain_run).data.tags["mlflow.parentRunId"]).data.tags
    )
    assert record_pipeline(params) == {"gain": gain_run}  # still pipe-seeds; seeds is its own
    assert client.get_run(seeds_run).data.tags["pipeline_id"] == "pipe-seeds"
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-nothing-ran")
    assert record_pipeline(params) is None
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]  # MLflow's UI shows runs, not GenAI views


def test_null_run_logs_nothing_anywhere(tmp_repo):
    run = NullRun()
    run.log_model(None, Path("x.pt"), example_size=8)
    run.log_dataset(None)
    run.log_pipeline_metrics({"a": 1.0})
    assert run.provenance() == {} and not (tmp_repo / "checkpoints").exists()
    assert not isinstance(run, StageRun)


def test_disabled_logs_nothing(mlflow_uri, tmp_repo, params):
    with stage_run("gain", params, enabled=False) as run:
        assert isinstance(run, NullRun) and run.run_id is None
        run.log_metrics({"train/loss": 1.0}, step=0)
        run.log_dict({"a": 1}, "a.json")
    assert all_runs(mlflow_uri) == []
    assert [e.name for e in client_for(mlflow_uri).search_experiments()] == ["Default"]
    assert not (tmp_repo / "runs").exists() and not (tmp_repo / "mlartifacts").exists()


@pytest.mark.timeout(30)  # without the up-front check, MLflow's own HTTP retries take minutes
def test_unreachable_server_fails_fast_naming_the_uri(tmp_repo, monkeypatch, params):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(TrackingError) as e:
        with stage_run("gain", params):
            pytest.fail("the stage body must not run without a tracking store")
    assert time.monotonic() - start < 10
    assert uri in str(e.value)
    assert not (tmp_repo / "runs").exists()


def test_params_tracking_uri_is_used_when_the_variable_is_unset(mlflow_store_template, tmp_repo, tmp_path):
    db = tmp_path / "from-params.db"
    shutil.copyfile(mlflow_store_template, db)
    uri = f"sqlite:///{db}"
    params = parse_params(
        deep_update(
            read_yaml(REPO / "params.yaml"),
            {"runtime": {"mlflow": {"experiment": "from-params", "tracking_uri": uri}}},
        )
    )
    with stage_run("data", params) as run:
        run_id = run.run_id
    assert [r.info.run_id for r in all_runs(uri) if r.data.tags["kind"] == "stage"] == [run_id]
    assert client_for(uri).get_experiment_by_name("from-params") is not None


def test_default_store_is_the_repo_root_sqlite_even_from_a_dvc_temp_copy(
    mlflow_store_template, tmp_repo, tmp_path, monkeypatch, params
):
    # `dvc exp run --temp` runs the stage in a copy of the repo and sets DVC_ROOT to the real root.
    real = tmp_path / "real-repo"
    real.mkdir()
    shutil.copyfile(mlflow_store_template, real / "mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(real))
    with stage_run("data", params) as run:
        run_id = run.run_id
    uri = f"sqlite:///{real / 'mlflow.db'}"
    r = client_for(uri).get_run(run_id)
    exp = client_for(uri).get_experiment(r.info.experiment_id)
    assert exp.artifact_location == (real / "mlartifacts" / params.runtime.mlflow.experiment).as_uri()
    assert not (tmp_repo / "mlflow.db").exists()
    # The pointer is a stage output, so it is written in the stage's own working copy.
    assert json.loads((tmp_repo / "runs" / "data.json").read_text())["run_id"] == run_id


# --- a real tracking server ------------------------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "server.log", "wb")  # closed in teardown
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
           "--default-artifact-root", str(tmp_path / "art"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 60 s:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.25)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


@pytest.mark.e2e
def test_stage_run_against_a_real_server(mlflow_server, tmp_repo, monkeypatch, params):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("GAIN_PIPELINE_ID", "pipe-server")
    stats = tmp_repo / "reports" / "stats.json"
    stats.parent.mkdir()
    stats.write_text('{"images": 5}\n')
    with stage_run("data", params) as run:
        run.log_metrics({"data/images_train": 4}, step=0)
        run.log_artifact(stats, "data")
        run_id = run.run_id
    client = client_for(mlflow_server)
    r = client.get_run(run_id)
    assert r.info.run_name == "data" and r.info.status == "FINISHED"
    assert r.data.metrics == {"data/images_train": 4.0}
    assert r.data.params["data.source"] == params.data.source and r.data.params["seed"] == str(params.seed)
    assert r.data.tags["stage"] == "data" and r.data.tags["pipeline_id"] == "pipe-server"
    parent = client.get_run(r.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["kind"] == "pipeline"
    names = {a.path for a in client.list_artifacts(run_id, "data")}
    assert names == {"data/stats.json"}
    got = Path(client.download_artifacts(run_id, "data/stats.json", str(tmp_repo / "dl")))
    assert json.loads(got.read_text()) == {"images": 5}
    assert json.loads((tmp_repo / "runs" / "data.json").read_text())["tracking_uri"] == mlflow_server


@pytest.mark.parametrize("damage", ["truncated", "not_sqlite"])
def test_a_damaged_store_is_one_line_naming_the_file_and_what_to_do(mlflow_uri, tmp_repo, params, damage):
    db = Path(mlflow_uri.removeprefix("sqlite:///"))
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>not a database</html>" * 10)
    with pytest.raises(TrackingError) as e:
        with stage_run("data", params):
            pass
    message = str(e.value)
    assert message.startswith(f"{db}: ") and "\n" not in message
    assert f"mv {db} {db}.broken" in message and "SELECT" not in message
