"""gain/tracking.py stage_run against real MLflow stores: a copied sqlite store per test, and one real
`mlflow server` process (e2e)."""

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

import pytest

from gain.runtime.params import (
    STAGE_PARAMS,
    flatten,
    load_params,
    params_hash,
    parse_params,
    read_yaml,
    section_dict,
)
from gain.runtime.tracking import NullRun, TrackingError, repo_root, stage_run
from tests.pipeline_utils import deep_update

REPO = Path(__file__).resolve().parents[1]


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


def test_repo_root_is_the_folder_with_dvc_yaml(tmp_repo, monkeypatch):
    (tmp_repo / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_repo / "sub" / "dir")
    assert repo_root() == tmp_repo.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_repo / "sub"))
    assert repo_root() == (tmp_repo / "sub").resolve()


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
    # Nested under a pipeline parent run.
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["kind"] == "pipeline" and parent.data.tags["pipeline_id"] == "pipe-1"
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
    assert parent.data.tags["dvc_exp_name"] == "lucky-exp"
    assert parent.info.run_name == "pipeline lucky-exp"


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
    assert client_for(mlflow_uri).get_run(run_id).info.status == "FAILED"
    assert not (tmp_repo / "runs" / "data.json").exists()


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
