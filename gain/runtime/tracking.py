"""One MLflow run per stage execution, grouped under a parent run per pipeline execution.

Tracking store: `MLFLOW_TRACKING_URI` if set, else params `runtime.mlflow.tracking_uri`, else
`sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts/`. The repo root comes from DVC's
`DVC_ROOT` when set, so `dvc exp run --temp` and queued experiments log into the real store rather than
into their temporary copy.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gain.runtime.errors import StageError
from gain.runtime.io import write_json
from gain.runtime.layout import RUNS
from gain.runtime.params import STAGE_PARAMS, Params, flatten, params_hash, section_dict


class TrackingError(StageError):
    """The tracking store cannot be used; raised before any work starts."""


def repo_root() -> Path:
    """DVC_ROOT if DVC runs us (also in temp experiment folders), else the nearest folder with dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file():
            return d
    return here


def tracking_uri(params: Params) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or params.runtime.mlflow.tracking_uri
        or f"sqlite:///{repo_root() / 'mlflow.db'}"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not after training) when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered HTTP {r.status} on /health")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({e}). Start it (mlflow server ...) or unset "
            "MLFLOW_TRACKING_URI / params runtime.mlflow.tracking_uri to use the local sqlite store."
        ) from None


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def pipeline_id() -> str:
    """An id shared by every stage of one `dvc repro` / `dvc exp run`: the DVC process that spawned us.

    `GAIN_PIPELINE_ID` overrides it; a stage run by hand outside DVC gets a fresh id.
    """
    if os.environ.get("GAIN_PIPELINE_ID"):
        return os.environ["GAIN_PIPELINE_ID"]
    try:
        import psutil

        proc = psutil.Process().parent()
        while proc is not None:
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in Path(cmd.split(" ")[0]).name or " -m dvc" in cmd or "/dvc " in cmd + " ":
                return f"dvc-{proc.pid}-{int(proc.create_time() * 1000)}"
            proc = proc.parent()
    except Exception:  # psutil missing or a process vanished: fall back to a fresh id
        pass
    return f"manual-{uuid.uuid4().hex[:12]}"


class NullRun:
    """Stand-in for non-zero DDP ranks: logs nothing."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, fig, name: str) -> None:
        pass

    def log_dict(self, d: dict, name: str) -> None:
        pass

    def log_model(self, model, name: str) -> None:
        pass


class StageRun(NullRun):
    """Thin wrapper over the active MLflow run (metrics with steps, artifacts, figures)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_figure(self, fig, name: str) -> None:
        import mlflow

        mlflow.log_figure(fig, name)

    def log_dict(self, d: dict, name: str) -> None:
        import mlflow

        mlflow.log_dict(d, name)

    def log_model(self, model, name: str) -> None:
        import mlflow.pytorch

        # Explicit requirements and pickle format: the default pt2 export needs an input example and
        # pip inference takes ~10 s.
        mlflow.pytorch.log_model(
            model, name=name, serialization_format="pickle", pip_requirements=["torch", "torchvision"]
        )


def _process_tag() -> str:
    """`<pid>:<start time>` of this process: with the host, enough to tell later whether it still runs."""
    import psutil

    me = psutil.Process()
    return f"{me.pid}:{int(me.create_time())}"


def _alive(process_tag: str) -> bool:
    import psutil

    try:
        pid, started = process_tag.split(":")
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except (ValueError, psutil.Error):
        return False


def reap_dead_runs(client, exp_id: str) -> list[str]:
    """Mark KILLED the stage runs still RUNNING whose process on this host is gone (a stage killed with
    SIGKILL, a machine that lost power): they would otherwise show as running forever. -> their run ids."""
    host = socket.gethostname()
    stale = client.search_runs(
        [exp_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.kind = 'stage' and tags.host = '{host}'",
    )
    reaped = []
    for run in stale:
        tag = run.data.tags.get("process", "")
        if tag and not _alive(tag):
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
    return reaped


def _experiment_id(client, name: str, root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (root / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another stage process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def stage_run(stage: str, params: Params, *, enabled: bool = True) -> Iterator[NullRun]:
    """Open the MLflow run of one stage execution, nested under its pipeline's parent run.

    Tags: stage, git commit, params hash, pipeline id, DVC experiment name/baseline; the stage's params are
    logged flat (`gain.alpha`). Writes `runs/<stage>.json` with the run id so DVC-restored outputs still
    point at the run that produced them. `enabled=False` (non-zero DDP ranks) logs nothing.
    """
    if not enabled:
        yield NullRun()
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    root = repo_root()
    uri = tracking_uri(params)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        exp_id = _experiment_id(client, params.runtime.mlflow.experiment, root)
    except Exception as e:
        raise TrackingError(
            f"MLflow store {uri}: cannot open experiment {params.runtime.mlflow.experiment!r} ({e})"
        ) from e

    reap_dead_runs(client, exp_id)
    pid = pipeline_id()
    parents = client.search_runs(
        [exp_id], filter_string=f"tags.pipeline_id = '{pid}' and tags.kind = 'pipeline'", max_results=1
    )
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    if parents:
        parent_id = parents[0].info.run_id
    else:
        parent = client.create_run(
            exp_id,
            run_name=f"pipeline {exp_name or pid}",
            tags={"kind": "pipeline", "pipeline_id": pid, "dvc_exp_name": exp_name},
        )
        parent_id = parent.info.run_id
        client.set_terminated(parent_id)

    used = section_dict(params, STAGE_PARAMS[stage])
    tags = {
        "kind": "stage",
        "stage": stage,
        "dvc_stage": os.environ.get("DVC_STAGE", stage),
        "pipeline_id": pid,
        "git_commit": _git_commit(root),
        "params_hash": params_hash(used),
        "dvc_exp_name": exp_name,
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "host": socket.gethostname(),
        "process": _process_tag(),
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent_id, tags=tags) as run:
        mlflow.log_params(flatten(used))
        # Every stage also records the whole params file, so any run can be compared on any knob.
        client.log_dict(run.info.run_id, dataclasses.asdict(params), "params.json")
        tracker = StageRun(run.info.run_id)
        yield tracker
        write_json(
            RUNS / f"{stage}.json",
            {
                "run_id": run.info.run_id,
                "pipeline_id": pid,
                "experiment_id": exp_id,
                "tracking_uri": uri,
                "params_hash": tags["params_hash"],
            },
        )
