"""The MLflow UI on this project's store, opened at the pipeline's training runs.

    python -m gain.ui                 # prints http://127.0.0.1:5000/#/experiments/<id>/runs, runs `mlflow ui`
    python -m gain.ui --port 5001     # other options after these go to `mlflow ui` as they are

MLflow 3's start page is a GenAI overview (traces, prompts); the stage and pipeline runs are on the
experiment's Runs page, whose address this prints before starting `mlflow ui` on the store the stages log to
(sqlite:///<repo>/mlflow.db, or params `runtime.mlflow.tracking_uri` / MLFLOW_TRACKING_URI). The experiment
is created if missing and marked a machine-learning experiment (gain.runtime.store.EXPERIMENT_KIND). An
HTTP tracking URI is already a UI: its runs page is printed and nothing is started.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow.tracking import MlflowClient

from gain.runtime.params import load_params
from gain.runtime.provenance import repo_root
from gain.runtime.store import experiment_id, tracking_uri


def runs_page(base: str, exp_id: str) -> str:
    """The address of an experiment's Runs page in MLflow 3's UI (a client-side route after `#`)."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    args, rest = parse_args(argv)
    params = load_params(repo_root() / "params.yaml")
    uri = tracking_uri(params)
    exp_id = experiment_id(MlflowClient(uri), params.runtime.mlflow.experiment, repo_root())
    if uri.startswith(("http://", "https://")):
        print(f"MLflow training runs: {runs_page(uri, exp_id)}", flush=True)
        return
    print(f"MLflow training runs: {runs_page(f'http://{args.host}:{args.port}', exp_id)}", flush=True)
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    os.execv(sys.executable, [sys.executable, "-m", *command, *rest])


if __name__ == "__main__":
    main()
