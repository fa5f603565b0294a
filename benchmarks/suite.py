"""The benchmark sections at params.yaml's settings: GAIN step against the plain step and the public pass
structure, peak step memory, seed extraction, the SEC step with the CRF pool, the confusion matrix, and the
default pipeline's `dvc repro`. Each returns the figures it adds to reports/benchmarks.json."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import interleaved, median_ms, paired_ratio, raw_ms, status_kib, syncer, warm
from benchmarks.workloads import (
    REPO,
    build_trainees,
    mean_labels,
    pipeline_copy,
    public_vs_ours,
    sec_step,
    sec_trainee,
    seeds_batched,
    seeds_per_class,
    step_fns,
    synthetic_items,
)
from gain.cam.model import Classifier
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.device import seed_everything, setup_runtime
from gain.runtime.loaders import collate
from gain.runtime.params import load_params
from gain.sec.crf import CRFPool
from gain.sec.crf_exact import ExactCRF
from gain.sec.scale import resolve, train_crf_scale
from gain.sec.train import downscale_images

# figure -> (comparison, bound, what the bound stands for)
TARGETS = {
    "gain_step_over_floor": (
        "<=",
        1.0,
        "GAIN step within 1.1x the cost of one extra forward per labelled class",
    ),
    "speedup_vs_public_pass_structure": (">=", 1.3, "public pass structure / ours, detached weights"),
    "pipeline_wall_s": ("<", 300.0, "default `dvc repro` from a clean copy (target set for 2 CPU cores)"),
    "noop_repro_s": ("<", 5.0, "`dvc repro` with nothing to do"),
}


@dataclass(frozen=True)
class Reps:
    """Repetitions per section; `rounds` are interleaved rounds, each running every variant once."""

    warmup: int
    step_rounds: int
    seed_rounds: int
    sec_rounds: int
    crf_rounds: int
    eval_rounds: int
    memory_steps: int


FULL = Reps(
    warmup=5, step_rounds=40, seed_rounds=7, sec_rounds=20, crf_rounds=9, eval_rounds=15, memory_steps=3
)
QUICK = Reps(
    warmup=1, step_rounds=3, seed_rounds=1, sec_rounds=3, crf_rounds=2, eval_rounds=3, memory_steps=1
)


def gain_batch(params) -> tuple[dict, int]:
    """params' GAIN batch (batch_size at input_size, ~2 labels per image over the synthetic classes)."""
    num_fg = params.data.synthetic.num_classes
    g = params.gain
    return collate(synthetic_items(g.batch_size, size=g.input_size, num_fg=num_fg, seed=params.seed)), num_fg


def bench_steps(params, rt, reps: Reps, *, profile_steps: bool | None, default_threads: int) -> dict:
    """GAIN vs plain classifier step, and ours vs the public pass structure, interleaved."""
    g = params.gain
    batch, num_fg = gain_batch(params)
    check = public_vs_ours(g, num_fg, batch, rt, seed=params.seed)
    fns = step_fns(build_trainees(g, num_fg, rt, seed=params.seed), batch, g, rt)
    warm(fns, reps.warmup)
    times = interleaved(fns, reps.step_rounds, syncer(rt.device))
    labels = mean_labels(batch["label"])
    over_plain = paired_ratio(times, "gain", "plain")
    res = {
        "mean_labels_per_image": labels,
        "gain_step_over_plain": over_plain,
        "gain_step_over_floor": over_plain / ((1.0 + labels) * 1.1),
        "speedup_vs_public_pass_structure": paired_ratio(times, "public", "gain_detached"),
        "speedup_vs_public_differentiable": paired_ratio(times, "public", "gain"),
        "gain_detached_step_over_plain": paired_ratio(times, "gain_detached", "plain"),
        "step_ms": median_ms(times),
        "step_setup": {
            "batch_size": g.batch_size,
            "input_size": g.input_size,
            "num_fg": num_fg,
            "backbone": g.backbone,
            "grad_weights": g.grad_weights,
            "alpha": g.alpha,
            "class_ranks": int(batch["label"].sum(dim=1).max()),
            "pairs": int(batch["label"].sum()),
        },
        "public_equivalence": check,
        "raw_step_ms": raw_ms(times),
    }
    threads = torch.get_num_threads()
    if rt.device.type == "cpu" and threads != default_threads:
        # The plain step at torch's default thread count too (what the pipeline's stages use): on a CPU
        # shared with other jobs, spinning OpenMP workers can make several threads far slower than one.
        def default():
            torch.set_num_threads(default_threads)
            try:
                fns["plain"]()
            finally:
                torch.set_num_threads(threads)

        t = interleaved(
            {str(threads): fns["plain"], str(default_threads): default},
            max(3, reps.step_rounds // 4),
            syncer(rt.device),
        )
        res["plain_step_ms_by_threads"] = median_ms(t)
    missed = not (res["gain_step_over_floor"] <= 1.0 and res["speedup_vs_public_pass_structure"] >= 1.3)
    res["profile"] = (
        profile_fns(fns, rt, steps=max(3, reps.warmup))
        if profile_steps or (missed and profile_steps is None)
        else None
    )
    return res


def profile_fns(fns: dict, rt, *, steps: int) -> dict:
    """torch.profiler per step variant: self time per operator and conv passes per step."""
    cuda = rt.device.type == "cuda"
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    out = {}
    for name, fn in fns.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(steps):
                fn()
            syncer(rt.device)()
        events = prof.key_averages()
        total = sum(getattr(e, attr) for e in events) or 1.0
        counts = {e.key: e.count / steps for e in events}
        out[name] = {
            "total_ms_per_step": total / 1e3 / steps,
            "ms_by_op": {
                e.key: getattr(e, attr) / 1e3 / steps for e in events if getattr(e, attr) >= 1e-2 * total
            },
            "conv_forward_per_step": counts.get("aten::convolution", 0.0),
            "conv_backward_per_step": counts.get(
                "autograd::engine::evaluate_function: ConvolutionBackward0", 0.0
            ),
        }
    return out


def memory_child(variant: str, device: str, steps: int, threads: int) -> None:
    """In a fresh process: peak resident memory (MiB) of `steps` training steps of one variant above the
    resident memory after construction; prints one JSON line.

    VmHWM is the kernel's high-water mark of this process's RSS; ru_maxrss is not used because a child
    inherits its parent's value at exec. Freed heap goes back to the system (malloc_trim) and the mark is
    reset (clear_refs) after construction, so import-time peaks and free lists hide nothing.
    """
    if threads:
        torch.set_num_threads(threads)
    params = load_params(REPO / "params.yaml")
    rt = setup_runtime(device)
    seed_everything(params.seed, params.deterministic)
    batch, num_fg = gain_batch(params)
    fn = step_fns(
        build_trainees(params.gain, num_fg, rt, seed=params.seed, names=(variant,)), batch, params.gain, rt
    )[variant]
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    for _ in range(steps):
        fn()
    peak = status_kib("VmHWM")
    print(
        json.dumps(
            {
                "baseline_mib": before / 1024,
                "peak_mib": peak / 1024,
                "peak_minus_baseline_mib": (peak - before) / 1024,
            }
        )
    )


def bench_memory(params, rt, reps: Reps, device: str, threads: int) -> dict:
    """Peak memory of training steps per variant (MiB above the model's own footprint)."""
    variants = ("plain", "gain", "public")
    out = {}
    if rt.device.type == "cuda":
        batch, num_fg = gain_batch(params)
        for v in variants:
            fn = step_fns(
                build_trainees(params.gain, num_fg, rt, seed=params.seed, names=(v,)), batch, params.gain, rt
            )[v]
            fn()  # gradients and momentum buffers exist from here on: part of the baseline
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(reps.memory_steps):
                fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            out[v] = {
                "baseline_mib": base / 2**20,
                "peak_mib": peak / 2**20,
                "peak_minus_baseline_mib": (peak - base) / 2**20,
            }
            del fn
            torch.cuda.empty_cache()
        method = "torch.cuda.max_memory_allocated over the steps minus memory_allocated before them (weights, gradients and momentum in the baseline)"
    else:  # one fresh process per variant, all at once (memory does not depend on the CPU share)
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--device",
            device,
            "--memory-steps",
            str(reps.memory_steps),
            "--threads",
            str(threads),
        ]
        procs = {
            v: subprocess.Popen(
                [*cmd, "--memory-child", v],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for v in variants
        }
        for v, proc in procs.items():
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {v} failed:\n{stderr[-3000:]}")
            out[v] = json.loads(stdout.strip().splitlines()[-1])
        method = "a fresh process per variant: peak RSS (VmHWM, reset after construction) minus the RSS after model construction"
    plain = out["plain"]["peak_minus_baseline_mib"]
    return {
        "memory_mib": {k: v["peak_minus_baseline_mib"] for k, v in out.items()},
        "gain_memory_over_plain": out["gain"]["peak_minus_baseline_mib"] / plain,
        "public_memory_over_plain": out["public"]["peak_minus_baseline_mib"] / plain,
        "memory_detail": out,
        "memory_method": method,
    }


def bench_seeds(params, rt, reps: Reps) -> dict:
    """Seed extraction: all classes of a batch in one pass (the library) vs one pass per class."""
    g, num_fg = params.gain, params.data.synthetic.num_classes
    items = synthetic_items(64, size=g.input_size, num_fg=num_fg, seed=params.seed + 1)
    torch.manual_seed(params.seed)
    classifier = Classifier(g.backbone, num_fg, weights="none", head=g.head).to(rt.device).eval()
    if rt.channels_last:
        classifier = classifier.to(memory_format=torch.channels_last)
    kw = {"batch_size": params.runtime.seeds_batch_size, "flip": params.seeds.flip}
    fns = {
        "batched": lambda: seeds_batched(classifier, items, rt, **kw),
        "per_class": lambda: seeds_per_class(classifier, items, rt, **kw),
    }
    a, b = fns["batched"](), fns["per_class"]()  # also the warm-up
    same = all(np.array_equal(ca, cb) for (_, ca), (_, cb) in zip(a, b, strict=True))
    diff = max(float(np.abs(ma - mb).max(initial=0.0)) for (ma, _), (mb, _) in zip(a, b, strict=True))
    times = interleaved(fns, reps.seed_rounds, syncer(rt.device))
    return {
        "seed_images_per_s": len(items) / statistics.median(times["batched"]),
        "seed_per_class_images_per_s": len(items) / statistics.median(times["per_class"]),
        "seed_batched_speedup": paired_ratio(times, "per_class", "batched"),
        "seed_setup": {"images": len(items), **kw, "pairs": int(sum(len(c) for _, c in a))},
        "seed_equivalence": {"same_classes": same, "max_abs_diff": diff},
        "raw_seed_ms": raw_ms(times),
    }


# CRF throughput cases: (images per call, grid side, classes). The default grid (14 x 14, 6 classes +
# background, params' SEC batch) and SEC's (41 x 41 x 21, batch 15).
CRF_CASES = {"14x14x7": (None, 14, 7), "41x41x21": (15, 41, 21)}


def crf_case(params, n: int, side: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, side, side, 3) uint8 synthetic images at CRF resolution and (n, classes, side, side) float32
    log-softmax of confident random logits."""
    items = synthetic_items(
        n, size=params.sec.input_size, num_fg=params.data.synthetic.num_classes, seed=seed
    )
    images = downscale_images(torch.stack([it["image"] for it in items]), (side, side))
    logits = torch.from_numpy(3.0 * np.random.default_rng(seed).standard_normal((n, classes, side, side)))
    return images, torch.log_softmax(logits, dim=1).float().numpy()


def crf_backends() -> dict:
    """name -> training CRF: pydensecrf inline, in pools of 1 .. cores processes, and the exact CRF."""
    cores = os.cpu_count() or 1
    return {"inline": CRFPool(0), **{str(n): CRFPool(n) for n in range(1, cores + 1)}, "exact": ExactCRF()}


def bench_sec(params, rt, reps: Reps) -> dict:
    """The SEC step with the CRF pool, inline and exact; CRFs per second of every backend at the default
    grid and at SEC's 41 x 41 x 21, all interleaved in one run."""
    p, num_fg = params.sec, params.data.synthetic.num_classes
    batch = collate(synthetic_items(p.batch_size, size=p.input_size, num_fg=num_fg, seed=params.seed))
    torch.manual_seed(params.seed)
    with CRFPool(params.runtime.crf_workers) as pool, CRFPool(0) as inline:
        crfs = {"pool": pool, "inline": inline, "exact": ExactCRF()}
        trainees = {k: sec_trainee(p, num_fg + 1, rt) for k in crfs}
        fns = {k: (lambda k=k: sec_step(trainees[k], crfs[k], batch, p, rt)) for k in crfs}
        warm(fns, reps.warmup)
        times = interleaved(fns, reps.sec_rounds, syncer(rt.device))
    res = {
        "crf_pool_speedup": paired_ratio(times, "inline", "pool"),
        "sec_exact_over_inline": paired_ratio(times, "exact", "inline"),
        "sec_exact_over_pool": paired_ratio(times, "exact", "pool"),
        "sec_step_ms": median_ms(times),
        "sec_setup": {
            "batch_size": p.batch_size,
            "input_size": p.input_size,
            "crf_workers": params.runtime.crf_workers,
            # the scale the step used: params' value, or gain.sec.scale's rule on the default 14x14 grid
            "crf_scale": resolve(p.crf_scale, train_crf_scale, (CRF_CASES["14x14x7"][1],) * 2),
            "classes": num_fg + 1,
        },
        "raw_sec_ms": raw_ms(times),
    }
    cases = {
        k: crf_case(params, n or p.batch_size, side, c, params.seed + 2)
        for k, (n, side, c) in CRF_CASES.items()
    }
    backends = crf_backends()
    dev = {
        k: (torch.from_numpy(im).to(rt.device), torch.from_numpy(lp).to(rt.device))
        for k, (im, lp) in cases.items()
    }

    scales = {k: resolve(p.crf_scale, train_crf_scale, (side, side)) for k, (_, side, _) in CRF_CASES.items()}

    def call(backend, case: str):
        if isinstance(backend, ExactCRF):
            return backend.run(*dev[case], scales[case])
        return backend.map(*cases[case], scales[case])

    try:
        fns = {f"{c}/{k}": (lambda b=b, c=c: call(b, c)) for c in cases for k, b in backends.items()}
        warm(fns, 1)
        times = interleaved(fns, reps.crf_rounds, syncer(rt.device))
    finally:
        for b in backends.values():
            b.__exit__()
    rate = {k: len(cases[k.split("/")[0]][0]) / statistics.median(t) for k, t in times.items()}
    res["crf_per_s"] = {c: {k: rate[f"{c}/{k}"] for k in backends} for c in cases}
    res["crf_setup"] = {c: {"images": len(cases[c][0]), "scale": scales[c]} for c in cases}
    res["raw_crf_ms"] = raw_ms(times)
    return res


def bench_eval(params, reps: Reps) -> dict:
    """ConfusionMatrix.update on 21-class 500 x 375 label maps (5% void in the ground truth)."""
    rng = np.random.default_rng(params.seed)
    pairs = []
    for _ in range(8):
        gt = rng.integers(0, 21, size=(375, 500)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.05] = 255
        pred = np.where(rng.random(gt.shape) < 0.3, rng.integers(0, 21, size=gt.shape), gt).astype(np.uint8)
        pred[pred == 255] = 0
        pairs.append((gt, pred))
    cm = ConfusionMatrix(21)

    def update_all():
        for gt, pred in pairs:
            cm.update(gt, pred)

    update_all()
    times = interleaved({"update": update_all}, reps.eval_rounds, lambda: None)
    return {
        "eval_mpix_per_s": len(pairs) * 500 * 375 / 1e6 / statistics.median(times["update"]),
        "eval_setup": {"maps_per_call": len(pairs), "height": 375, "width": 500, "classes": 21},
        "raw_eval_ms": raw_ms(times),
    }


def bench_pipeline(device: str) -> dict:
    """Default `dvc repro` in a fresh copy of the repo (stage by stage), then a no-op `dvc repro`."""
    dvc = str(Path(sys.executable).parent / "dvc")
    with tempfile.TemporaryDirectory(prefix="gain-bench-") as tmp:
        repo, env = pipeline_copy(Path(tmp))
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        stages, log, current = {}, [], None
        load_start = os.getloadavg()[0]
        cpu_start = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = since = time.perf_counter()
        proc = subprocess.Popen(
            [dvc, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.append(line)
            if line.startswith("Running stage '"):
                now = time.perf_counter()
                if current:
                    stages[current] = now - since
                current, since = line.split("'")[1], now
        if proc.wait() != 0:
            raise RuntimeError("dvc repro failed:\n" + "".join(log[-60:]))
        wall = time.perf_counter() - start
        if current:
            stages[current] = time.perf_counter() - since  # the last stage (plus dvc's lock writing)
        cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)  # dvc and, through it, every stage process
        load_end = os.getloadavg()[0]
        start = time.perf_counter()
        noop = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
        noop_s = time.perf_counter() - start
        if noop.returncode != 0:
            raise RuntimeError(f"no-op dvc repro failed:\n{noop.stdout}\n{noop.stderr}")
    return {
        "pipeline_wall_s": wall,
        "noop_repro_s": noop_s,
        "pipeline_stage_s": stages,
        "noop_reran_stages": [line for line in noop.stdout.splitlines() if line.startswith("Running stage")],
        "pipeline_cpu_s": (cpu_end.ru_utime + cpu_end.ru_stime) - (cpu_start.ru_utime + cpu_start.ru_stime),
        "pipeline_loadavg": [load_start, load_end],
    }


def verdicts(res: dict) -> dict:
    out = {}
    for key, (op, bound, meaning) in TARGETS.items():
        value = res.get(key)
        ok = None if value is None else {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[key] = {"target": f"{op} {bound:g}", "pass": ok, "meaning": meaning}
    return out
