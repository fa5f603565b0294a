"""The MLflow store the stages log to: where it is, the checks that fail in seconds when it cannot be used
(an HTTP server that does not answer, a damaged sqlite file), the experiment the runs go into, and the upkeep
of runs whose stage was killed outright (`reap_dead_runs`).

Tracking store: `MLFLOW_TRACKING_URI` if set, else params `runtime.mlflow.tracking_uri`, else
`sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts/`. The repo root comes from DVC's
`DVC_ROOT` when set, so `dvc exp run --temp` and queued experiments log into the real store rather than
into their temporary copy.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from gain.runtime.errors import StageError
from gain.runtime.params import Params
from gain.runtime.provenance import repo_root

# The experiment tag by which MLflow 3's UI tells a machine-learning experiment (runs, metrics, models) from a
# GenAI one (traces, evaluations); without it the UI may guess GenAI and open on traces.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class TrackingError(StageError):
    """The tracking store cannot be used; raised before any work starts."""


def tracking_uri(params: Params) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or params.runtime.mlflow.tracking_uri
        or f"sqlite:///{repo_root() / 'mlflow.db'}"
    )


def checked_uri(params: Params) -> str:
    """tracking_uri(params), once it passed the checks that fail fast (check_reachable, check_sqlite_store)."""
    uri = tracking_uri(params)
    check_reachable(uri)
    check_sqlite_store(uri)
    return uri


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


def check_sqlite_store(uri: str) -> None:
    """Fail in one line naming the file when a `sqlite:///` store exists but is not a whole sqlite
    database (truncated by a full disk or a copy cut short, or another file under that name)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file() or path.stat().st_size == 0:
        return
    advice = f"move it aside (mv {path} {path}.broken) to start a new store, or put back a copy from a backup"
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(b"SQLite format 3\0") or len(header) < 100:
        raise TrackingError(f"{path}: not an SQLite database, so not an MLflow store; {advice}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[92:96] == header[24:28]  # the header's page count is current (SQLite >= 3.7.0 writers)
    if valid and pages and path.stat().st_size < page_size * pages:
        raise TrackingError(
            f"{path}: truncated MLflow store ({path.stat().st_size:,} of {page_size * pages:,} bytes); {advice}"
        )


def experiment_id(client, name: str, root: Path) -> str:
    """The id of experiment `name`, created with its artifacts under `root`/mlartifacts if missing, and marked
    as a machine-learning experiment (EXPERIMENT_KIND), so MLflow's UI shows its runs, not a GenAI view."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = (root / "mlartifacts" / name).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except Exception:  # another stage process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # created before the tag was set
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def process_tag() -> str:
    """`<pid>:<start time>` of this process: with the host, enough to tell later whether it still runs
    (a stage run's `process` tag, read back by reap_dead_runs)."""
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
    SIGKILL, a machine that lost power), and their pipeline runs: they would otherwise show as running
    forever. -> the stage run ids."""
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
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent and client.get_run(parent).info.status == "RUNNING":
                client.set_terminated(parent, status="KILLED")
    return reaped
