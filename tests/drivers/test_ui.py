"""gain/ui.py: `python -m gain.ui` prints the address of the experiment's Runs page and serves it with a real
`mlflow ui` on 127.0.0.1; the page, the route and the runs behind it are fetched from that server (e2e)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gain.runtime.params import load_params
from gain.runtime.store import EXPERIMENT_KIND
from gain.runtime.tracking import stage_run
from gain.ui import runs_page
from tests.runtime.test_tracking import free_port

REPO = Path(__file__).resolve().parents[2]


def get(url: str, data: dict | None = None) -> bytes:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200, url
        return r.read()


def wait_healthy(proc: subprocess.Popen, base: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"gain.ui exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if get(f"{base}/health"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow ui not healthy after {timeout} s:\n{log.read_text()}")
        time.sleep(0.25)


def test_runs_page_is_the_experiments_runs_route():
    assert runs_page("http://127.0.0.1:5000/", "7") == "http://127.0.0.1:5000/#/experiments/7/runs"


@pytest.fixture
def ui(mlflow_store_template, tmp_repo):
    """`python -m gain.ui --port N` in a repo whose store holds one logged stage run.
    -> (printed line, base address, run id)."""
    shutil.copyfile(REPO / "params.yaml", tmp_repo / "params.yaml")
    shutil.copyfile(mlflow_store_template, tmp_repo / "mlflow.db")  # the default store: <repo>/mlflow.db
    with stage_run("data", load_params(tmp_repo / "params.yaml")) as run:
        run_id = run.run_id
    port = free_port()
    log = tmp_repo / "ui.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONPATH=str(REPO))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gain.ui", "--port", str(port), "--workers", "1"],
            cwd=tmp_repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, log)
        line = next(x for x in log.read_text().splitlines() if x.startswith("MLflow training runs: "))
        yield line, base, run_id
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_gain_ui_prints_the_runs_page_of_a_real_mlflow_ui(ui):
    line, base, run_id = ui
    url = line.removeprefix("MLflow training runs: ")
    exp_id = re.fullmatch(re.escape(base) + r"/#/experiments/(\d+)/runs", url).group(1)
    experiment = json.loads(get(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}"))[
        "experiment"
    ]
    assert experiment["name"] == load_params(REPO / "params.yaml").runtime.mlflow.experiment
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]  # the UI shows it as machine learning, not GenAI
    found = json.loads(get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]}))["runs"]
    assert run_id in {r["info"]["run_id"] for r in found}
    # The page before '#' is the UI itself, and its code routes the part after '#' to the Runs page.
    page = get(url.split("#")[0]).decode()
    scripts = re.findall(r'<script[^>]+src="([^"]+\.js)"', page)
    assert scripts, page[:500]
    code = b"".join(get(base + "/" + src.lstrip("./").removeprefix(base)) for src in scripts)
    assert b'"/experiments/:experimentId/runs"' in code
