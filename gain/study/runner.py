"""The method study: GAIN -> seeds -> SEC -> scores for Grad-CAM, GAIN and GAIN_ext over seeds, and SEC's loss
ablation, each run in-process through the stages' run() (stages/gain.py, seeds.py, sec.py) on its own folder
(gain.runtime.layout.run_paths), on the CPU and without MLflow; runs in parallel processes."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

import stages.gain
import stages.sec
import stages.seeds
from gain.cam.evaluate import part_hidden_recall
from gain.cam.model import load_classifier
from gain.data.dataset import DatasetIndex, VOCDataset
from gain.data.heldout import carve_heldout
from gain.data.prepare import prepare_dataset
from gain.data.transforms import eval_preset
from gain.report.evaluation import attention_crf_reference
from gain.runtime.codebase import code_fingerprint
from gain.runtime.device import CPU, seed_everything
from gain.runtime.io import write_json
from gain.runtime.layout import StagePaths, run_paths
from gain.runtime.params import Params, params_hash, parse_params
from gain.runtime.tracking import NullRun
from gain.sec.crf import CRFPool
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.model import load_segmenter
from gain.seeds.extract import score_cues
from gain.study.diagnostics import attention_ceiling, attention_diagnostics

METHODS: dict[str, dict] = {
    "gradcam": {"gain.alpha": 0.0, "gain.ext": False},
    "gain": {"gain.alpha": 1.0, "gain.ext": False},
    "gain_ext": {"gain.alpha": 1.0, "gain.ext": True},
}
ABLATIONS: dict[str, list[str]] = {
    "seed": ["seed"],
    "seed_expand": ["seed", "expand"],
    "seed_constrain": ["seed", "constrain"],
    "seed_expand_constrain": ["seed", "expand", "constrain"],
}
FULL_SEC = "seed_expand_constrain"  # the GAIN method's own SEC run
COVERAGE = ("part_coverage", "body_coverage", "body_coverage_at_half", "spill")
METRICS = (
    "attention_miou",
    *COVERAGE,
    "attention_crf_miou",
    "map",
    "seed_precision",
    "seed_recall",
    "seed_labeled_fraction",
    "seed_miou",
    "sec_miou",
    "sec_min_class_precision",
    "sec_crf_miou",
    "bias_object_only_accuracy",
    "bias_context_only_accuracy",
    "part_hidden_recall",
)
DIAG_PREFIX = "diag_"
# A configuration small enough for a test (seconds per run): fewer, the same kind of images; short training.
TINY: dict[str, object] = {
    "data.synthetic.n_train": 32,
    "data.synthetic.n_val": 12,
    "data.synthetic.n_bias_eval": 6,
    "data.synthetic.pixel_labelled": 8,
    "gain.epochs": 2,
    "gain.warmup_epochs": 1,
    "sec.iterations": 4,
    "sec.lr_step": 2,
    "sec.eval_every": 4,
    "sec.batch_size": 4,
}
# How the study runs (never what it computes): one process per run, loaders and CRF in-line, no figures.
STUDY_RUNTIME: dict[str, object] = {
    "runtime.workers": 0,
    "runtime.crf_workers": 0,
    "runtime.vis_images": 0,
    "device": "cpu",
}


def set_dotted(raw: dict, overrides: dict[str, object]) -> dict:
    """A deep copy of a params mapping with dotted keys (`gain.sigma`) set; an unknown path is an error."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = out
        for k in parents:
            if not isinstance(node.get(k), dict):
                raise KeyError(f"{dotted}: no such params section")
            node = node[k]
        if last not in node:
            raise KeyError(f"{dotted}: no such params key")
        node[last] = list(value) if isinstance(value, tuple) else value
    return out


def prepare_study_data(raw: dict, work: Path) -> Path:
    """The dataset of `raw`'s data section and seed, generated once into work/data/<hash>; -> index path."""
    params = parse_params(raw)
    key = params_hash({"seed": params.seed, "data": dataclasses.asdict(params.data)})
    root = work / "data" / key
    index_path = root / "index.json"
    if not index_path.is_file():
        index, _ = prepare_dataset(params.data, params.seed, root / "dataset", repo=Path.cwd())
        index.save(index_path)
    return index_path


def heldout_index(index: DatasetIndex, fraction: float, seed: int) -> DatasetIndex:
    """Training ids split into training and held-out ids (gain.data.heldout), the held-out ones put in the
    role of val: every score of a run on this index comes from training images, never from val."""
    train, held = carve_heldout(
        index.splits["weak_train"], fraction, seed, eligible=index.splits["seed_eval"], what="ids with masks"
    )
    keep = set(train)
    splits = dict(index.splits)
    splits["weak_train"] = train
    splits["seed_eval"] = [i for i in index.splits["seed_eval"] if i in keep]
    splits["pixel"] = [i for i in index.splits.get("pixel", []) if i in keep]
    splits["val"] = held
    return index.with_meta(splits=splits)


@dataclass
class Job:
    """One run: `stages` of the pipeline for one configuration and seed, written to run_dir/result.json.
    A SEC-only job ("sec" alone) trains on the seeds and GAIN model of `source` (another run's folder)."""

    name: str
    group: str  # "methods", "ablation" or "variants"
    key: str  # method, ablation or variant name
    seed: int
    raw: dict
    index_path: str
    run_dir: str
    stages: tuple[str, ...] = ("gain", "seeds", "sec")
    source: str = ""
    diagnose: bool = False
    holdout: float = 0.0
    data_seed: int = 0
    after: str = ""  # name of the job whose outputs this one needs
    extra: dict = field(default_factory=dict)


def job_dir(
    work: Path, name: str, raw: dict, stages: tuple[str, ...], holdout: float, diagnose: bool
) -> Path:
    """Each run's folder is named by what determines its result (params, stages, held-out share, code), so a
    rerun of the study reuses finished runs and recomputes changed ones."""
    key = params_hash(
        {
            "raw": raw,
            "stages": list(stages),
            "holdout": holdout,
            "diagnose": diagnose,
            "code": code_fingerprint("gain.study.runner"),  # the code a run imports
        }
    )
    return work / "runs" / f"{name}-{key}"


def score_seeds(classifier, dataset: VOCDataset, params: Params) -> dict:
    """Seed quality (precision, recall, labeled fraction, mIoU) of the cues made by `params.seeds` from
    `classifier` on `dataset` (keep_original=True, images with masks)."""
    q = score_cues(classifier, dataset, params.seeds, CPU, batch_size=params.runtime.seeds_batch_size)
    return {
        "seed_precision": q["precision"],
        "seed_recall": q["recall"],
        "seed_labeled_fraction": q["labeled_fraction"],
        "seed_miou": q["miou"],
    }


def run_gain_stages(
    params: Params, index: DatasetIndex, paths: StagePaths, *, diagnose: bool, heldout: bool = False
) -> dict:
    """The gain stage's run() (stages/gain.py) and the study's scores on index's val role: mAP, attention
    mIoU and coverage of the last epoch, Table 4's bias accuracies and the part_hidden recall (not for a
    `heldout` run, which must score no reported split), and (diagnose) per-epoch diagnostics in `history`;
    the model is paths.gain_model (run_dir/gain.pt)."""
    extra: Callable | None = None
    diag_set = VOCDataset(index, index.splits["val"], eval_preset(params.gain.input_size))
    if diagnose:

        def extra(gain) -> dict:
            return {DIAG_PREFIX + k: v for k, v in attention_diagnostics(gain, diag_set, CPU).items()}

    metrics = stages.gain.run(params, index, paths=paths, rt=CPU, tracker=NullRun(), extra_eval=extra)
    classifier, gain_p = load_classifier(paths.gain_model)
    out = {
        "attention_miou": metrics["attn_miou"],
        "map": metrics["map"],
        **{k: v for k, v in metrics.items() if k.startswith(DIAG_PREFIX) or k in COVERAGE},
    }
    if not heldout:  # the Table 4 and part_hidden splits are reported ones
        out |= {k: v for k, v in metrics.items() if k.startswith("bias_")}
        out |= part_hidden_recall(classifier, index, CPU, input_size=gain_p["input_size"])
    if diagnose:
        with torch.no_grad():
            grid = tuple(classifier.features(diag_set[0]["image"][None]).shape[-2:])
        out["attention_ceiling"] = attention_ceiling(diag_set, grid)
    keep = ("epoch", "attn_miou", "map", *COVERAGE)
    out["history"] = [
        {k: v for k, v in h.items() if k in keep or k.startswith(DIAG_PREFIX)} for h in metrics["history"]
    ]
    return out


def run_seed_stage(params: Params, index: DatasetIndex, paths: StagePaths) -> dict:
    """The seeds stage's run() (paths.seeds: what SEC trains on) and the seeds' quality on index's val role
    (score_seeds), with the CRF on their attention alone (the attention_crf_miou reference)."""
    stages.seeds.run(params, index, paths=paths, rt=CPU, tracker=NullRun())
    classifier, gain_p = load_classifier(paths.gain_model)
    val = VOCDataset(index, index.splits["val"], eval_preset(gain_p["input_size"]), keep_original=True)
    out = score_seeds(classifier, val, params)
    out |= attention_crf_reference(
        classifier, val, params.seeds, CPU, crf_scale=params.evaluate.crf_scale, knobs=params.runtime
    )
    return out


def run_sec_stage(params: Params, index: DatasetIndex, paths: StagePaths) -> dict:
    """The sec stage's run() (on paths.seeds, initialised from paths.gain_model; the model is
    paths.sec_model), scored on index's val role without and with the CRF."""
    stages.sec.run(params, index, paths=paths, rt=CPU, tracker=NullRun())
    model, _ = load_segmenter(paths.sec_model)
    val = VOCDataset(index, index.splits["val"], eval_preset(params.sec.input_size), keep_original=True)
    with CRFPool(params.runtime.crf_workers) as pool:
        scores = evaluate_segmenter(model, val, CPU, crf_pool=pool, crf_scale=params.evaluate.crf_scale)
    s = scores.summary()
    return {"sec_miou": s["miou"], "sec_crf_miou": s["crf_miou"], **class_precision(scores.plain, index)}


def class_precision(cm, index: DatasetIndex) -> dict:
    """{"sec_min_class_precision"}: the lowest per-class precision of raw SEC (no CRF) over the classes it
    predicts (a blob-predicting net has low precision where its recall is high)."""
    precision = np.asarray(cm.compute(index.classes)["precision"], dtype=float)
    return {"sec_min_class_precision": float(np.nanmin(precision))}


def backfill(result: dict, job: Job) -> dict:
    """A finished run recorded before `sec_min_class_precision` existed: scored from its final SEC
    checkpoint (run_dir/ckpt_sec/last.pt, the last step's weights) without retraining."""
    if "sec" not in job.stages or "sec_min_class_precision" in result["metrics"]:
        return result
    model, p = load_segmenter(run_paths(Path(job.run_dir)).sec_ckpt / "last.pt")
    index = DatasetIndex.load(job.index_path)
    if job.holdout:
        index = heldout_index(index, job.holdout, job.data_seed)
    val = VOCDataset(index, index.splits["val"], eval_preset(p["input_size"]), keep_original=True)
    result["metrics"] |= class_precision(evaluate_segmenter(model, val, CPU).plain, index)
    write_json(Path(job.run_dir) / "result.json", result)
    return result


def run_job(job: Job) -> dict:
    """Run one job (in a worker process: one torch thread) -> its result dict, also run_dir/result.json."""
    run_dir = Path(job.run_dir)
    done = run_dir / "result.json"
    if done.is_file():
        return backfill(json.loads(done.read_text()), job)
    torch.set_num_threads(1)
    params = parse_params(job.raw)
    index = DatasetIndex.load(job.index_path)
    if job.holdout:
        index = heldout_index(index, job.holdout, job.data_seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    out: dict = {}
    paths = run_paths(run_dir, Path(job.source) if job.source else None)
    # Each stage seeds itself, as `dvc repro` runs them (training_stage).
    if "gain" in job.stages:
        seed_everything(params.seed, params.deterministic)
        out |= run_gain_stages(params, index, paths, diagnose=job.diagnose, heldout=bool(job.holdout))
    if "seeds" in job.stages:
        seed_everything(params.seed, params.deterministic)
        out |= run_seed_stage(params, index, paths)
    if "sec" in job.stages:
        seed_everything(params.seed, params.deterministic)
        out |= run_sec_stage(params, index, paths)
    result = {
        "name": job.name,
        "group": job.group,
        "key": job.key,
        "seed": job.seed,
        "seconds": time.perf_counter() - start,
        "metrics": out,
    }
    write_json(done, result)
    return result


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run_jobs(
    jobs: list[Job],
    workers: int,
    log: Callable[[str], None] = print,
    on_done: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Run `jobs` in `workers` processes (spawned, one torch thread each), a job once the one it needs
    (`after`) has finished; `on_done(results so far)` after each. -> results in the order of `jobs`."""
    by_name = {j.name: j for j in jobs}
    results: dict[str, dict] = {}
    waiting = [j for j in jobs if j.after]
    if workers <= 0:
        for j in jobs:
            results[j.name] = run_job(j)
            if on_done is not None:
                on_done([results[k.name] for k in jobs if k.name in results])
        return [results[j.name] for j in jobs]
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker
    ) as ex:
        pending = {ex.submit(run_job, j): j.name for j in jobs if not j.after}
        while pending:
            for fut in as_completed(list(pending)):
                name = pending.pop(fut)
                results[name] = fut.result()
                log(f"study: {name} done in {results[name]['seconds']:.0f} s ({len(results)}/{len(jobs)})")
                if on_done is not None:
                    on_done([results[j.name] for j in jobs if j.name in results])
                for j in [w for w in waiting if w.after == name]:
                    waiting.remove(j)
                    pending[ex.submit(run_job, j)] = j.name
                break
    missing = [n for n in by_name if n not in results]
    if missing:
        raise RuntimeError(f"jobs never ran (missing dependency): {missing}")
    return [results[j.name] for j in jobs]


def aggregate(values: list[float]) -> dict:
    """{"n", "mean", "std" (sample std, ddof = 1; 0 for n = 1), "values"} of finite floats (None, NaN and inf
    are errors: the summary is strict JSON)."""
    vals = [float(v) for v in values]
    if not vals or not all(np.isfinite(vals)):
        raise ValueError(f"cannot aggregate {values}")
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"n": len(vals), "mean": float(np.mean(vals)), "std": std, "values": vals}


def summarise(results: list[dict], seeds: list[int], metrics: tuple[str, ...] = METRICS) -> dict:
    """summary.json: n_seeds; per method every metric (and final-epoch diagnostics) over the seeds; SEC's
    loss ablation's sec_miou over the seeds."""
    summary: dict = {"n_seeds": len(seeds), "methods": {}, "sec_ablation": {}}
    for group, key_out in (("methods", "methods"), ("ablation", "sec_ablation")):
        keys = list(dict.fromkeys(r["key"] for r in results if r["group"] == group))
        for key in keys:
            runs = sorted(
                (r for r in results if r["group"] == group and r["key"] == key), key=lambda r: r["seed"]
            )
            names = metrics if group == "methods" else ("sec_miou",)
            extra = sorted({k for r in runs for k in r["metrics"] if k.startswith(DIAG_PREFIX)})
            extra += ["attention_ceiling"] if all("attention_ceiling" in r["metrics"] for r in runs) else []
            if group == "ablation":
                extra = []
            summary[key_out][key] = {m: aggregate([r["metrics"][m] for r in runs]) for m in (*names, *extra)}
    return summary


def history_table(results: list[dict]) -> list[dict]:
    """Per-epoch rows (group, key, seed, epoch, metrics) of every run that has a history."""
    rows = []
    for r in results:
        for h in r["metrics"].get("history", []):
            rows.append({"group": r["group"], "key": r["key"], "seed": r["seed"], **h})
    return rows
