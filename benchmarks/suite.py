"""The benchmark sections at params.yaml's settings (`run_sections`), each returning the figures it adds to
reports/benchmarks.json, and their targets."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections import namedtuple
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE, STDOUT
from unittest import mock

import numpy as np
import torch

from benchmarks import workloads as wl
from benchmarks.timing import interleaved, median_ms, paired_ratio, raw_ms, status_kib, syncer
from gain.cam.model import Classifier
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.device import seed_everything
from gain.runtime.loaders import collate
from gain.runtime.workspace import BIN, commit_all, copy_project, project_env
from gain.sec.crf import CRFPool
from gain.sec.crf_exact import ExactCRF
from gain.sec.model import LargeFOV
from gain.sec.scale import resolve, train_crf_scale
from gain.sec.train import downscale_images, sec_step_losses
from gain.seeds.extract import image_attention

TARGETS = {  # figure -> (comparison, bound, what the bound stands for)
    "gain_step_over_floor": ("<=", 1.0, "GAIN step within 1.1x one extra forward per labelled class"),
    "speedup_vs_public_pass_structure": (">=", 1.3, "public pass structure / ours, detached weights"),
    "pipeline_wall_s": ("<", 300.0, "default `dvc repro` from a clean copy (target set for 2 CPU cores)"),
    "noop_repro_s": ("<", 5.0, "`dvc repro` with nothing to do"),
}
MEMORY_METHOD = {  # by device type
    "cpu": "peak RSS (VmHWM) minus RSS after construction",
    "cuda": "torch.cuda.max_memory_allocated over the steps minus memory_allocated before them (weights, "
    "gradients and momentum included)",
}
# Repetitions per section; rounds are interleaved rounds, each running every variant once.
Reps = namedtuple("Reps", "warmup step_rounds seed_rounds sec_rounds crf_rounds eval_rounds memory_steps")
FULL, QUICK = Reps(5, 40, 7, 20, 9, 15, 3), Reps(1, 3, 1, 3, 2, 3, 1)


def run_sections(params, rt, args) -> dict:
    """Every section in turn (the pipeline unless --skip-pipeline), with its wall time in `section_s`."""
    reps, dev = QUICK if args.quick else FULL, rt.device.type
    sections = {
        "training steps": lambda: bench_steps(params, rt, reps),
        "memory": lambda: bench_memory(params, rt, reps),
        "seeds": lambda: bench_seeds(params, rt, reps),
        "SEC step and CRF pool": lambda: bench_sec(params, rt, reps),
        "evaluation": lambda: bench_eval(params, reps),
    } | ({} if args.skip_pipeline else {"pipeline": lambda: bench_pipeline(dev)})
    res: dict = {"section_s": {}}
    for name, fn in sections.items():
        print(f"[benchmarks] {name} ...", flush=True)
        start = time.perf_counter()
        res.update(fn())
        res["section_s"][name] = time.perf_counter() - start
        print(f"[benchmarks] {name}: {res['section_s'][name]:.1f} s", flush=True)
    return res


def gain_steps(params, rt, names=wl.VARIANTS) -> tuple[dict, dict]:
    """A full training step of each variant in `names`, all from the same weights, on params' GAIN batch
    (batch_size at input_size, ~2 labels per image over the synthetic classes) -> (steps, batch)."""
    g, num_fg = params.gain, params.data.synthetic.num_classes
    batch = collate(wl.synthetic_items(g.batch_size, size=g.input_size, num_fg=num_fg, seed=params.seed))
    return wl.step_fns(wl.build_trainees(g, num_fg, rt, seed=params.seed, names=names), batch, g, rt), batch


def bench_steps(params, rt, reps: Reps) -> dict:
    """GAIN vs plain classifier step, and ours vs the public pass structure, interleaved."""
    (fns, batch), g, num_fg = gain_steps(params, rt), params.gain, params.data.synthetic.num_classes
    times = interleaved(fns, reps.step_rounds, rt.device, reps.warmup)
    labels, over_plain = float(batch["label"].sum(dim=1).mean()), paired_ratio(times, "gain", "plain")
    setup = {k: getattr(g, k) for k in ("batch_size", "input_size", "backbone", "grad_weights", "alpha")}
    per_image = batch["label"].sum(dim=1)
    setup |= {"num_fg": num_fg, "class_ranks": int(per_image.max()), "pairs": int(per_image.sum())}
    return {
        "mean_labels_per_image": labels,
        "gain_step_over_plain": over_plain,
        "gain_step_over_floor": over_plain / ((1.0 + labels) * 1.1),
        "speedup_vs_public_pass_structure": paired_ratio(times, "public", "gain_detached"),
        "speedup_vs_public_differentiable": paired_ratio(times, "public", "gain"),
        "gain_detached_step_over_plain": paired_ratio(times, "gain_detached", "plain"),
        "step_ms": median_ms(times),
        "step_setup": setup,
        "raw_step_ms": raw_ms(times),
    }


def memory_child(params, rt, variant: str, steps: int, threads: int) -> dict:
    """In a fresh process: peak memory (MiB) of `steps` training steps of one variant above the memory after
    construction (MEMORY_METHOD). On the CPU the RSS high-water mark is reset after freed heap went back to
    the system (malloc_trim), so import-time peaks and free lists hide nothing."""
    torch.set_num_threads(threads)
    seed_everything(params.seed, params.deterministic)
    fn = gain_steps(params, rt, names=(variant,))[0][variant]
    cuda = rt.device.type == "cuda"
    if cuda:
        fn()  # gradients and momentum buffers exist from here on: part of the baseline
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = torch.cuda.memory_allocated() / 1024 if cuda else status_kib("VmRSS")
    if not cuda:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    for _ in range(steps):
        fn()
    syncer(rt.device)()
    peak = torch.cuda.max_memory_allocated() / 1024 if cuda else status_kib("VmHWM")
    return {"baseline_mib": before / 1024, "peak_mib": peak / 1024}


def bench_memory(params, rt, reps: Reps) -> dict:
    """Peak memory of training steps per variant (MiB above the model's own footprint), a fresh process each."""
    out = {}
    for v in ("plain", "gain", "public"):
        with multiprocessing.get_context("spawn").Pool(1) as child:
            out[v] = child.apply(memory_child, (params, rt, v, reps.memory_steps, torch.get_num_threads()))
    mib = {k: v["peak_mib"] - v["baseline_mib"] for k, v in out.items()}
    return {
        "memory_mib": mib,
        "gain_memory_over_plain": mib["gain"] / mib["plain"],
        "public_memory_over_plain": mib["public"] / mib["plain"],
        "memory_detail": out,
        "memory_method": "a fresh process per variant: " + MEMORY_METHOD[rt.device.type],
    }


def per_class(classifier, items: list[dict], rt, **kw) -> list:
    """The seed pass with one attention_maps call per class (benchmarks.workloads.attention_per_class)."""
    with mock.patch("gain.seeds.extract.attention_maps", wl.attention_per_class):
        return [(a, c) for _, a, c in image_attention(classifier, items, rt, **kw)]


def bench_seeds(params, rt, reps: Reps) -> dict:
    """Seed extraction: all classes of a batch in one pass (the library) vs one pass per class."""
    g, num_fg = params.gain, params.data.synthetic.num_classes
    items = wl.synthetic_items(64, size=g.input_size, num_fg=num_fg, seed=params.seed + 1)
    torch.manual_seed(params.seed)
    classifier = rt.place(Classifier(g.backbone, num_fg, weights="none", head=g.head)).eval()
    kw = {"batch_size": params.runtime.seeds_batch_size, "flip": params.seeds.flip}
    fns = {
        "batched": lambda: [(a, c) for _, a, c in image_attention(classifier, items, rt, **kw)],
        "per_class": lambda: per_class(classifier, items, rt, **kw),
    }  # the same maps (tests/benchmarks/test_workloads.py)
    times = interleaved(fns, reps.seed_rounds, rt.device, warmup=1)
    pairs = int(sum(item["label"].sum() for item in items))
    return {
        "seed_images_per_s": len(items) / statistics.median(times["batched"]),
        "seed_per_class_images_per_s": len(items) / statistics.median(times["per_class"]),
        "seed_batched_speedup": paired_ratio(times, "per_class", "batched"),
        "seed_setup": {"images": len(items), **kw, "pairs": pairs},
        "raw_seed_ms": raw_ms(times),
    }


def bench_sec(params, rt, reps: Reps) -> dict:
    """The SEC step with the CRF pool, inline and exact, interleaved; then CRFs per second of every backend
    (pydensecrf inline, in 1 .. cores processes, the exact CRF) on the step's grid. The paper-scale run
    times them at VOC's 41 x 41 x 21."""
    p, num_fg, workers = params.sec, params.data.synthetic.num_classes, params.runtime.crf_workers
    batch = collate(wl.synthetic_items(p.batch_size, size=p.input_size, num_fg=num_fg, seed=params.seed))
    torch.manual_seed(params.seed)
    with CRFPool(workers) as pool, CRFPool(0) as inline:
        crfs = {"pool": pool, "inline": inline, "exact": ExactCRF()}
        trainees = {k: wl.trainee(LargeFOV(p.backbone, num_fg + 1), p, rt) for k in crfs}
        fns = {k: (lambda k=k: wl.step(trainees[k], sec_step_losses, batch, crfs[k], p, rt=rt)) for k in crfs}
        times = interleaved(fns, reps.sec_rounds, rt.device, reps.warmup)
        with torch.no_grad():
            grid = tuple(trainees["pool"].model(rt.to_device(batch["image"][:1])).shape[-2:])
    # the scale the step used: params' value, or gain.sec.scale's rule on the step's grid
    scale, images = resolve(p.crf_scale, train_crf_scale, grid), downscale_images(batch["image"], grid)
    log_probs = wl.random_log_probs(np.random.default_rng(params.seed + 2), (len(images), num_fg + 1, *grid))
    cores = range(1, (os.cpu_count() or 1) + 1)
    rates, raw = wl.crf_rates(images, log_probs, scale, cores, rt.device, reps.crf_rounds)
    setup = {"batch_size": p.batch_size, "input_size": p.input_size, "crf_workers": workers}
    return {
        "crf_pool_speedup": paired_ratio(times, "inline", "pool"),
        "sec_exact_over_inline": paired_ratio(times, "exact", "inline"),
        "sec_exact_over_pool": paired_ratio(times, "exact", "pool"),
        "sec_step_ms": median_ms(times),
        "sec_setup": setup | {"grid": grid, "crf_scale": scale, "classes": num_fg + 1},
        "crf_per_s": rates,
        "raw_sec_ms": raw_ms(times),
        "raw_crf_ms": raw,
    }


def bench_eval(params, reps: Reps) -> dict:
    """ConfusionMatrix.update on 21-class 500 x 375 label maps (5% void in the ground truth)."""
    rng, pairs, cm = np.random.default_rng(params.seed), [], ConfusionMatrix(21)
    for _ in range(8):
        gt = rng.integers(0, 21, size=(375, 500)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.05] = 255
        pred = np.where(rng.random(gt.shape) < 0.3, rng.integers(0, 21, size=gt.shape), gt).astype(np.uint8)
        pred[pred == 255] = 0
        pairs.append((gt, pred))
    update = {"update": lambda: [cm.update(gt, pred) for gt, pred in pairs]}
    times = interleaved(update, reps.eval_rounds, torch.device("cpu"), warmup=1)
    return {
        "eval_mpix_per_s": len(pairs) * 500 * 375 / 1e6 / statistics.median(times["update"]),
        "eval_setup": {"maps_per_call": len(pairs), "height": 375, "width": 500, "classes": 21},
        "raw_eval_ms": raw_ms(times),
    }


def bench_pipeline(device: str) -> dict:
    """Default `dvc repro` in a fresh copy of the project (stage by stage), then a no-op `dvc repro`."""
    dvc = str(BIN / "dvc")
    with tempfile.TemporaryDirectory(prefix="gain-bench-") as tmp:
        repo = Path(tmp)
        # the stages use every core, whatever this shell says
        env = project_env(copy_project(repo), threads=os.cpu_count() or 1, who="bench")
        env |= {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
        commit_all(repo, env, "benchmark copy")
        starts, log, load_start = {}, [], os.getloadavg()[0]
        cpu_start, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.Popen([dvc, "repro"], cwd=repo, env=env, stdout=PIPE, stderr=STDOUT, text=True)
        for line in proc.stdout:
            log.append(line)
            if line.startswith("Running stage '"):  # a stage runs until the next one starts
                starts[line.split("'")[1]] = time.perf_counter()
        if proc.wait() != 0:
            raise RuntimeError("dvc repro failed:\n" + "".join(log[-60:]))
        ends = [*list(starts.values())[1:], time.perf_counter()]  # the last stage with dvc's lock writing
        wall, stages = ends[-1] - start, {k: e - s for (k, s), e in zip(starts.items(), ends, strict=True)}
        # CPU time of dvc and, through it, every stage process
        cpu_end, load_end = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
        start = time.perf_counter()
        noop = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
        noop_s = time.perf_counter() - start
        if noop.returncode != 0:
            raise RuntimeError(f"no-op dvc repro failed:\n{noop.stdout}\n{noop.stderr}")
    return {
        "pipeline_wall_s": wall,
        "noop_repro_s": noop_s,
        "pipeline_stage_s": stages,
        "noop_reran_stages": [ln for ln in noop.stdout.splitlines() if ln.startswith("Running stage")],
        "pipeline_cpu_s": sum(getattr(cpu_end, f) - getattr(cpu_start, f) for f in ("ru_utime", "ru_stime")),
        "pipeline_loadavg": [load_start, load_end],
        "pipeline_measured_on": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def verdicts(res: dict) -> dict:
    out = {}
    for key, (op, bound, meaning) in TARGETS.items():
        value = res.get(key)
        ok = None if value is None else {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[key] = {"target": f"{op} {bound:g}", "pass": ok, "meaning": meaning}
    return out
