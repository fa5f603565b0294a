"""One MLflow run per stage execution, grouped under a parent run per pipeline execution.

The parent run is the unit of comparison: it is named after the DVC experiment (or method + short id), carries
every DVC param, the git commit and command, the dataset and the headline metrics (each stage copies its own
and earlier stages' metrics files when it ends). Stages whose outputs DVC restored from its run-cache (or
kept as up to date) run no code, so the pipeline run names the run that produced each of them
(`restored.<stage>`); the `track` stage, after `evaluate`, records the restored later stages the same way.
Each stage reopens it (RUNNING) and closes it again when it ends (FINISHED, or FAILED if the stage failed),
so a pipeline stopped after any stage is left closed; a stage killed outright leaves both runs RUNNING until
the next stage on this host marks them KILLED (gain/runtime/store.py `reap_dead_runs`).

Tag `method` is set by the stages whose params include gain.* (the method is theirs), on their run and on
the pipeline run; a pipeline that restored the gain stage's output takes it from the run that produced it.
Where the store is and how it is checked: gain/runtime/store.py; git and DVC: gain/runtime/provenance.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gain.runtime.io import file_digest, read_json, write_json
from gain.runtime.layout import CHECKPOINTS, GAIN_MODEL, INDEX, OUTPUTS, REPORTS, RUNS, SEC_MODEL
from gain.runtime.naming import REGISTERED, method_name
from gain.runtime.params import DVC_PARAMS, STAGE_PARAMS, Params, flatten, params_hash, section_dict
from gain.runtime.provenance import dvc_command, git_commit, param_overrides, pipeline_id, repo_root
from gain.runtime.store import TrackingError, checked_uri, experiment_id, process_tag, reap_dead_runs

# The file whose digest identifies what a stage run produced (tag `output_digest`): a later stage, the
# report or the `track` stage finds the run behind an output even when DVC restored that output from its
# cache (the latest run that wrote those bytes). evaluate: report.md, which names its own run, so two
# evaluations with equal metrics are still told apart.
KEY_OUTPUT = {
    "data": INDEX,
    "gain": GAIN_MODEL,
    "seeds": REPORTS / "seeds/metrics.json",
    "sec": SEC_MODEL,
    "evaluate": REPORTS / "report.md",
}


def _metric_values(metrics: dict) -> dict[str, float]:
    """The numeric entries of `metrics` (bools, strings, None and NaN left out: MLflow stores floats)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v:
            out[k] = float(v)
    return out


class NullRun:
    """Stand-in for non-zero DDP ranks: logs nothing."""

    run_id = None
    parent_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, fig, name: str) -> None:
        pass

    def log_dict(self, d: dict, name: str) -> None:
        pass

    def log_model(self, model, path: Path, *, example_size: int) -> None:
        pass

    def log_dataset(self, index) -> None:
        pass

    def log_pipeline_metrics(self, metrics: dict) -> None:
        pass

    def train_log(self, upto: int) -> list[dict]:
        return []

    def provenance(self) -> dict:
        return {}


class StageRun(NullRun):
    """The active MLflow stage run: metrics with steps, artifacts, figures, the handed-on model, the dataset,
    the parent's headline metrics; and a per-step log of the training metrics (`train_log`)."""

    def __init__(
        self, client, run_id: str, parent_id: str, stage: str, info: dict, *, log_models: bool = True
    ):
        self.client, self.run_id, self.parent_id = client, run_id, parent_id
        self.stage, self.info, self.log_models = stage, info, log_models
        # Training metrics of every step, kept beside the resume checkpoint so a resumed run still writes
        # the whole curve; one file per params hash, so another configuration's steps never mix in.
        self.step_log = CHECKPOINTS / stage / f"train_log-{info['params_hash']}.jsonl"

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        train = {k.removeprefix("train/"): float(v) for k, v in metrics.items() if k.startswith("train/")}
        if step is not None and train:
            self.step_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.step_log, "a") as f:
                f.write(json.dumps({"step": step, **train}) + "\n")

    def train_log(self, upto: int) -> list[dict]:
        """One row per step 1..upto of the logged `train/*` metrics (a replayed step's latest values)."""
        rows: dict[int, dict] = {}
        if self.step_log.is_file():
            for line in self.step_log.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line torn by a kill
                    continue
                if 0 < row["step"] <= upto:
                    rows[row["step"]] = row
        return [rows[s] for s in sorted(rows)]

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

    def log_model(self, model, path: Path, *, example_size: int) -> None:
        """Log `model` (the network loaded back from its stage output `path`, so exactly the weights later
        stages use) in MLflow's safe `pt2` format with a signature and an input example, register it as
        REGISTERED[stage], and keep `path` itself as artifact `checkpoint/<name>` (what `gain.predict
        --model-version` loads). Images: (N, 3, H, W) float32, ImageNet-normalised, any N, H and W.
        Skipped when params `runtime.mlflow.log_models` is false."""
        if not self.log_models:
            return
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        model = model.cpu().eval()
        # Batch 2 and a small size: torch.export fixes dimensions of size 1, and the example is stored as JSON.
        size = min(example_size, 64)
        example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model(example)
        dims = (-1, out.shape[1], *(-1,) * (out.dim() - 2))  # (N, C) logits or (N, C, h, w) scores
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), dims)]),
        )
        name = REGISTERED[self.stage]
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pt2",
            signature=signature,
            input_example=example.numpy(),
            # Explicit requirements: inferring them imports and probes the model (~10 s).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=name,
            metadata={"source_file": str(path), "sha256": file_digest(path)},
        )
        mlflow.log_artifact(str(path), artifact_path="checkpoint")
        version = str(info.registered_model_version)
        for key in ("pipeline_name", "pipeline_id", "git_commit", "dvc_exp_name"):
            self.client.set_model_version_tag(name, version, key, self.info[key])
        self.client.set_model_version_tag(name, version, "sha256", file_digest(path))
        self.client.set_tag(self.run_id, "registered_model", f"{name}/{version}")
        self.client.set_tag(self.parent_id, f"model.{name}", version)

    def log_dataset(self, index) -> None:
        """The dataset (a DatasetIndex) as an input of this run and of the pipeline run, with its digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        splits = {k: len(v) for k, v in sorted(index.splits.items())}
        entity = Dataset(
            name=index.source,
            digest=index.digest[:16] or "unknown",  # MLflow keeps at most 36 characters
            source_type="local",
            source=json.dumps({"uri": str(Path(index.root).resolve())}),
            profile=json.dumps({"sha256": index.digest, "classes": list(index.classes), "splits": splits}),
        )
        tags = [InputTag("mlflow.data.context", self.stage)]
        for run_id in (self.run_id, self.parent_id):
            self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])

    def log_pipeline_metrics(self, metrics: dict) -> None:
        """Headline metrics onto the pipeline run (and this run), where runs are compared."""
        import mlflow
        from mlflow.entities import Metric

        values = _metric_values(metrics)
        mlflow.log_metrics(values)
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])

    def provenance(self) -> dict:
        """What report.md names: command, DVC experiment, commit, param overrides, the pipeline run, and for
        each stage the run that produced its current output (found by the output's digest)."""
        exp_id = self.client.get_run(self.run_id).info.experiment_id
        stages = {}
        for stage in KEY_OUTPUT:
            if stage == self.stage:
                stages[stage] = {"run_id": self.run_id, "pipeline_name": self.info["pipeline_name"]}
                continue
            found = producing_run(self.client, exp_id, stage)
            if found is not None:
                tags = found.data.tags
                stages[stage] = {
                    "run_id": found.info.run_id,
                    "pipeline_name": tags.get("pipeline_name", ""),
                    "registered_model": tags.get("registered_model", ""),
                }
        return {**self.info, "parent_run_id": self.parent_id, "stages": stages}


def producing_run(client, exp_id: str, stage: str):
    """The latest stage run of `stage` whose key output (KEY_OUTPUT) had the digest of the file in the
    workspace now: the run that produced it, also when DVC restored the file from its run-cache. None when
    the file is missing or no run tagged it."""
    path = Path(KEY_OUTPUT[stage])
    if not path.is_file():
        return None
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.stage = '{stage}' and tags.output_digest = '{file_digest(path)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def record_outputs(client, exp_id: str, parent_id: str, stages: list[str]) -> dict[str, str]:
    """Make the pipeline run `parent_id` tell the truth about the outputs of `stages` now in the workspace.

    A stage whose output came from a run of another pipeline (DVC restored it from its run-cache, or kept it
    as up to date) is tagged `restored.<stage>` = that run's id and `restored.<stage>.pipeline` = its
    pipeline's name (and takes that run's `method` tag, if any), and `restored` lists every such stage; the
    stages' metrics files (their headline numbers) are copied onto the pipeline run, so it never shows fewer
    metrics than `dvc exp show`.
    -> {stage: producing run id} of the restored stages among `stages`."""
    from mlflow.entities import Metric, RunTag

    pipeline = client.get_run(parent_id).data.tags.get("pipeline_id", "")
    restored, tags, values = {}, [], {}
    for stage in stages:
        run = producing_run(client, exp_id, stage)
        if run is not None and run.data.tags.get("pipeline_id") != pipeline:
            restored[stage] = run.info.run_id
            tags.append(RunTag(f"restored.{stage}", run.info.run_id))
            tags.append(RunTag(f"restored.{stage}.pipeline", run.data.tags.get("pipeline_name", "")))
            if "method" in run.data.tags:  # the method behind the restored output, from the run that made it
                tags.append(RunTag("method", run.data.tags["method"]))
        for path in OUTPUTS[stage]["metrics"]:
            if Path(path).is_file():
                values |= _metric_values(read_json(path))
    if values or tags:
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()], tags=tags)
    known = client.get_run(parent_id).data.tags
    listed = [s for s in KEY_OUTPUT if f"restored.{s}" in known]
    if listed:
        client.set_tag(parent_id, "restored", ",".join(listed))
    return restored


def record_pipeline(params: Params) -> dict[str, str] | None:
    """For the `track` stage, which runs after `evaluate` whenever a stage's results changed: record every
    stage's outputs on this pipeline's run (record_outputs). -> the restored stages and their runs, or None
    when no stage of this pipeline logged a run (everything came from DVC's cache: nothing to annotate)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(checked_uri(params))
    exp = client.get_experiment_by_name(params.runtime.mlflow.experiment)
    if exp is None:
        return None
    parents = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.pipeline_id = '{pipeline_id()}' and tags.kind = 'pipeline'"
    )
    if not parents:
        return None
    return record_outputs(client, exp.experiment_id, parents[0].info.run_id, list(KEY_OUTPUT))


def _pipeline_run(client, exp_id: str, info: dict, params: Params) -> str:
    """Find this pipeline's parent run and reopen it, or create it (named, tagged, every DVC param). It is
    named after the method of the params it carries, whichever stage opens it; tag `method` comes from a
    stage whose params include gain.* (info["method"])."""
    parents = client.search_runs(
        [exp_id], filter_string=f"tags.pipeline_id = '{info['pipeline_id']}' and tags.kind = 'pipeline'"
    )
    if parents:
        parent_id = parents[0].info.run_id
        client.update_run(parent_id, status="RUNNING")
        if "method" in info:
            client.set_tag(parent_id, "method", info["method"])
        info["pipeline_name"] = parents[0].info.run_name
        return parent_id
    tags = {k: info[k] for k in ("pipeline_id", "git_commit", "dvc_exp_name", "dvc_exp_baseline_rev")}
    tags |= {"kind": "pipeline", "command": info["command"][:5000], "overrides": info["overrides"][:5000]}
    tags |= {"method": info["method"]} if "method" in info else {}
    parent = client.create_run(exp_id, tags=tags)
    parent_id = parent.info.run_id
    method = method_name(params.gain.alpha, params.gain.ext)
    info["pipeline_name"] = info["dvc_exp_name"] or f"{method}-{parent_id[:8]}"
    client.update_run(parent_id, name=info["pipeline_name"])
    entities = _params_entities(flatten(section_dict(params, DVC_PARAMS)))
    for i in range(0, len(entities), 100):  # MLflow takes at most 100 params per call
        client.log_batch(parent_id, params=entities[i : i + 100])
    return parent_id


def _params_entities(flat: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flat.items()]


def _open_experiment(params: Params, root: Path):
    """The checked store (checked_uri), made mlflow's current one, and the experiment's id in it: -> (uri,
    client, experiment id). Runs of this host's killed stages are reaped first (reap_dead_runs)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = checked_uri(params)
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        exp_id = experiment_id(client, params.runtime.mlflow.experiment, root)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"MLflow store {uri}: cannot open experiment {params.runtime.mlflow.experiment!r} ({first[:300]})"
        ) from e
    reap_dead_runs(client, exp_id)
    return uri, client, exp_id


def _run_info(stage: str, params: Params, root: Path, uri: str) -> dict:
    """What a stage run is tagged with and report.md names: the pipeline, commit, DVC experiment, command,
    param overrides, params hash, store, and `method` for a stage whose params include gain.*."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "")
    commit = git_commit(root)
    info = {
        "pipeline_id": pipeline_id(),
        "git_commit": commit,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": baseline,
        "command": dvc_command(),
        "overrides": " ".join(param_overrides(params, root, baseline or "HEAD"))
        if commit != "unknown"
        else "",
        "params_hash": params_hash(section_dict(params, STAGE_PARAMS[stage])),
        "tracking_uri": uri,
    }
    if "gain" in STAGE_PARAMS[stage]:
        info["method"] = method_name(params.gain.alpha, params.gain.ext)
    return info


def _stage_tags(stage: str, info: dict) -> dict:
    tags = {
        "kind": "stage",
        "stage": stage,
        "dvc_stage": os.environ.get("DVC_STAGE", stage),
        "host": socket.gethostname(),
        "process": process_tag(),
        **{k: info[k] for k in info if k not in ("overrides", "tracking_uri")},
    }
    tags["command"] = tags["command"][:5000]
    return tags


def _close_stage(client, run_id: str, exp_id: str, parent_id: str, stage: str, info: dict) -> None:
    """A successful stage: tag its key output's digest, bring the pipeline run up to date on the outputs final
    now (this and earlier stages': their metrics and which came from earlier runs; later ones are not yet),
    and write the pointer `runs/<stage>.json`."""
    if Path(KEY_OUTPUT[stage]).is_file():
        client.set_tag(run_id, "output_digest", file_digest(KEY_OUTPUT[stage]))
    record_outputs(client, exp_id, parent_id, list(KEY_OUTPUT)[: list(KEY_OUTPUT).index(stage) + 1])
    pointer = {"run_id": run_id, "parent_run_id": parent_id, "pipeline_id": info["pipeline_id"]}
    pointer |= {"pipeline_name": info["pipeline_name"], "experiment_id": exp_id}
    pointer |= {k: info[k] for k in ("tracking_uri", "params_hash")}
    write_json(RUNS / f"{stage}.json", pointer)


@contextmanager
def stage_run(stage: str, params: Params, *, enabled: bool = True) -> Iterator[NullRun]:
    """Open the MLflow run of one stage execution (run name = stage), nested under its pipeline's run.

    Tags: stage, git commit, params hash, pipeline id and name, DVC experiment name/baseline, the command,
    and `method` where the stage's params include gain.*; the stage's params are logged flat (`gain.alpha`),
    the pipeline run carries all of them. When the block ends the stage run and the pipeline run are closed
    with the same status; a successful stage tags the digest of its key output (KEY_OUTPUT) and writes
    `runs/<stage>.json` with the run id. `enabled=False` (non-zero DDP ranks) logs nothing.
    """
    if not enabled:
        yield NullRun()
        return
    import mlflow

    root = repo_root()
    uri, client, exp_id = _open_experiment(params, root)
    info = _run_info(stage, params, root, uri)
    parent_id = _pipeline_run(client, exp_id, info, params)
    status = "FAILED"
    try:
        with mlflow.start_run(
            experiment_id=exp_id, run_name=stage, parent_run_id=parent_id, tags=_stage_tags(stage, info)
        ) as run:
            client.set_tag(parent_id, "last_stage", stage)
            mlflow.log_params(flatten(section_dict(params, STAGE_PARAMS[stage])))
            # Every stage also records the whole params file, so any run can be compared on any knob.
            client.log_dict(run.info.run_id, dataclasses.asdict(params), "params.json")
            tracker = StageRun(
                client, run.info.run_id, parent_id, stage, info, log_models=params.runtime.mlflow.log_models
            )
            try:
                yield tracker
            except KeyboardInterrupt:
                # mlflow's context would close an interrupted run as FAILED: one status, KILLED, for both
                mlflow.end_run(status="KILLED")
                raise
            _close_stage(client, run.info.run_id, exp_id, parent_id, stage, info)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent_id, status=status)
