"""Speed and memory of the pipeline's hot paths on this machine, in one run.

    python -m benchmarks.run [--quick] [--device auto|cpu|cuda] [--skip-pipeline] [--out-dir reports]

Writes <out-dir>/benchmarks.json and <out-dir>/benchmarks.md. Variants that are compared run side by side:
their repetitions alternate (ABC, CBA, ...) and each ratio is the median of the per-round ratios, so load
from other processes falls on both sides of a ratio alike. Training steps use params.yaml's values.

Only the standard library and numpy are imported at module level: the CRF pools start their workers with
"spawn", which re-imports this module in every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

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
STEP_VARIANTS = ("plain", "gain", "gain_detached", "public")  # benchmarks.workloads.VARIANTS


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


# ------------------------------------------------------------------------------------------- timing
def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per call of each function; rounds alternate the order (forward, then reversed)."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def warm(fns: dict[str, Callable[[], object]], n: int) -> None:
    for _ in range(n):
        for fn in fns.values():
            fn()


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den] (same round: same background load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median_ms(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def raw_ms(times: dict[str, list[float]]) -> dict[str, list[float]]:
    return {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()}


def syncer(rt) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)


# ------------------------------------------------------------------------------------------- sections
def gain_inputs(params, rt):
    """The GAIN batch (params' batch_size and input_size, ~2 labels per image over the synthetic classes)."""
    import torch

    from benchmarks.workloads import synthetic_items
    from gain.runtime.engine import collate

    g = params.gain
    num_fg = params.data.synthetic.num_classes
    batch = collate(synthetic_items(g.batch_size, size=g.input_size, num_fg=num_fg, seed=params.seed))
    x, y = batch["image"].to(rt.device), batch["label"].to(rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, num_fg


def bench_steps(params, rt, reps: Reps, *, profile: bool | None, default_threads: int) -> dict:
    """Sections 1-2: GAIN vs plain classifier step, and ours vs the public pass structure."""
    import torch

    from benchmarks.workloads import build_trainees, mean_labels, public_vs_ours, step_fns
    from gain.cam.model import Classifier

    g = params.gain
    x, y, num_fg = gain_inputs(params, rt)
    torch.manual_seed(params.seed)
    classifier = Classifier(g.backbone, num_fg, weights="none")
    check = public_vs_ours(classifier, g, x, y, rt)
    fns = step_fns(build_trainees(classifier, g, rt), x, y, rt, g.alpha)
    warm(fns, reps.warmup)
    times = interleaved(fns, reps.step_rounds, syncer(rt))
    labels = mean_labels(y)
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
            "class_ranks": int(y.sum(dim=1).max()),
            "pairs": int(y.sum()),
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
            syncer(rt),
        )
        res["plain_step_ms_by_threads"] = median_ms(t)
    missed = not (res["gain_step_over_floor"] <= 1.0 and res["speedup_vs_public_pass_structure"] >= 1.3)
    if profile or (missed and profile is None):
        res["profile"] = profile_steps(fns, rt, steps=max(3, reps.warmup))
    else:
        res["profile"] = None
    return res


def profile_steps(fns: dict[str, Callable[[], None]], rt, *, steps: int) -> dict:
    """torch.profiler per step variant: top operators by self time, and conv passes per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = rt.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out = {}
    for name, fn in fns.items():
        fn()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            syncer(rt)()
        events = prof.key_averages()
        attr = "self_device_time_total" if cuda else "self_cpu_time_total"
        total = sum(getattr(e, attr) for e in events) or 1.0
        ranked = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:10]
        counts = {e.key: e.count / steps for e in events}
        out[name] = {
            "total_ms_per_step": total / 1e3 / steps,
            "ms_by_op": {
                e.key: getattr(e, attr) / 1e3 / steps for e in events if getattr(e, attr) >= 1e-3 * total
            },
            "top_ops": [
                {
                    "op": e.key,
                    "ms_per_step": getattr(e, attr) / 1e3 / steps,
                    "share": getattr(e, attr) / total,
                    "calls_per_step": e.count / steps,
                }
                for e in ranked
            ],
            "conv_forward_per_step": counts.get("aten::convolution", 0.0),
            "conv_backward_per_step": counts.get(
                "autograd::engine::evaluate_function: ConvolutionBackward0", 0.0
            ),
        }
    return out


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(variant: str, device: str, steps: int, threads: int) -> None:
    """Run in a fresh process: the peak resident memory (MiB) of `steps` training steps of one variant above
    the resident memory after construction (model, optimizer, inputs). Prints one JSON line.

    The peak is the kernel's high-water mark of this process's RSS, the number ru_maxrss reports, read as
    VmHWM: getrusage(RUSAGE_SELF).ru_maxrss also counts the parent's peak (a vfork'd child inherits it at
    exec), which makes it useless in a child of this big process. Freed heap is handed back to the system
    (malloc_trim) and the high-water mark reset (clear_refs) after construction, so neither import-time
    peaks nor reused free lists hide what the steps need.
    """
    import ctypes

    import torch

    from benchmarks.workloads import build_trainees, step_fns
    from gain.cam.model import Classifier
    from gain.runtime.engine import seed_everything, setup_runtime
    from gain.runtime.params import load_params

    if threads:
        torch.set_num_threads(threads)
    params = load_params(REPO / "params.yaml")
    rt = setup_runtime(device)
    seed_everything(params.seed, params.deterministic)
    x, y, num_fg = gain_inputs(params, rt)
    classifier = Classifier(params.gain.backbone, num_fg, weights="none")
    trainees = build_trainees(classifier, params.gain, rt, names=(variant,))
    fn = step_fns(trainees, x, y, rt, params.gain.alpha)[variant]
    del classifier
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    for _ in range(steps):
        fn()
    peak = _status_kib("VmHWM")
    record = {
        "variant": variant,
        "rss_after_construction_mib": before / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_minus_construction_mib": (peak - before) / 1024,
    }
    print(json.dumps(record))


def bench_memory(params, rt, reps: Reps, device: str, threads: int) -> dict:
    """Section 3: peak memory of training steps per variant (MiB above the model's own footprint)."""
    variants = ("plain", "gain", "public")
    if rt.device.type == "cuda":
        import torch

        from benchmarks.workloads import build_trainees, step_fns
        from gain.cam.model import Classifier

        x, y, num_fg = gain_inputs(params, rt)
        classifier = Classifier(params.gain.backbone, num_fg, weights="none")
        out = {}
        for variant in variants:
            trainees = build_trainees(classifier, params.gain, rt, names=(variant,))
            fn = step_fns(trainees, x, y, rt, params.gain.alpha)[variant]
            fn()  # grads and momentum buffers exist from here on: part of the baseline
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(reps.memory_steps):
                fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            out[variant] = {
                "baseline_mib": base / 2**20,
                "peak_mib": peak / 2**20,
                "peak_minus_baseline_mib": (peak - base) / 2**20,
            }
            del trainees, fn
            torch.cuda.empty_cache()
        method = (
            "torch.cuda.max_memory_allocated over the steps minus memory_allocated before them "
            "(weights, gradients and momentum in the baseline)"
        )
    else:
        # One fresh process per variant, run at the same time (memory does not depend on the CPU share).
        procs = {
            v: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.run",
                    "--memory-child",
                    v,
                    "--device",
                    device,
                    "--memory-steps",
                    str(reps.memory_steps),
                    "--threads",
                    str(threads),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for v in variants
        }
        out = {}
        for v, proc in procs.items():
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {v} failed:\n{stderr[-3000:]}")
            child = json.loads(stdout.strip().splitlines()[-1])
            out[v] = {
                "baseline_mib": child["rss_after_construction_mib"],
                "peak_mib": child["peak_rss_mib"],
                "peak_minus_baseline_mib": child["peak_minus_construction_mib"],
            }
        method = (
            "a fresh process per variant: peak RSS (the kernel's high-water mark, VmHWM, reset after "
            "construction) minus the RSS after model construction; ru_maxrss itself is not used because "
            "a child inherits its parent's value"
        )
    plain = out["plain"]["peak_minus_baseline_mib"]
    return {
        "memory_mib": {k: v["peak_minus_baseline_mib"] for k, v in out.items()},
        "gain_memory_over_plain": out["gain"]["peak_minus_baseline_mib"] / plain,
        "public_memory_over_plain": out["public"]["peak_minus_baseline_mib"] / plain,
        "memory_detail": out,
        "memory_method": method,
    }


def bench_seeds(params, rt, reps: Reps) -> dict:
    """Section 4: seed extraction, all classes of a batch in one pass vs one pass per class."""
    import torch

    from benchmarks.workloads import seeds_batched, seeds_per_class, synthetic_items
    from gain.cam.model import Classifier

    s, g = params.seeds, params.gain
    num_fg = params.data.synthetic.num_classes
    items = synthetic_items(64, size=g.input_size, num_fg=num_fg, seed=params.seed + 1)
    torch.manual_seed(params.seed)
    classifier = Classifier(g.backbone, num_fg, weights="none").to(rt.device).eval()
    if rt.channels_last:
        classifier = classifier.to(memory_format=torch.channels_last)
    kw = {"batch_size": params.runtime.seeds_batch_size, "flip": s.flip}
    fns = {
        "batched": lambda: seeds_batched(classifier, items, rt, **kw),
        "per_class": lambda: seeds_per_class(classifier, items, rt, **kw),
    }
    a, b = fns["batched"](), fns["per_class"]()  # also the warm-up
    same_classes = all(np.array_equal(ca, cb) for (_, ca), (_, cb) in zip(a, b, strict=True))
    diff = max(float(np.abs(ma - mb).max(initial=0.0)) for (ma, _), (mb, _) in zip(a, b, strict=True))
    times = interleaved(fns, reps.seed_rounds, syncer(rt))
    return {
        "seed_images_per_s": len(items) / statistics.median(times["batched"]),
        "seed_per_class_images_per_s": len(items) / statistics.median(times["per_class"]),
        "seed_batched_speedup": paired_ratio(times, "per_class", "batched"),
        "seed_setup": {
            "images": len(items),
            "batch_size": params.runtime.seeds_batch_size,
            "flip": s.flip,
            "pairs": int(sum(len(c) for _, c in a)),
        },
        "seed_equivalence": {"same_classes": same_classes, "max_abs_diff": diff},
        "raw_seed_ms": raw_ms(times),
    }


def bench_sec(params, rt, reps: Reps) -> dict:
    """Section 5: the CRF-constrained SEC step with the CRF pool vs inline, and the pool's scaling."""
    import torch

    from benchmarks.workloads import sec_step, sec_trainee, synthetic_items
    from gain.runtime.engine import collate
    from gain.sec.crf import CRFPool
    from gain.sec.train import downscale_images

    p = params.sec
    num_fg = params.data.synthetic.num_classes
    batch = collate(synthetic_items(p.batch_size, size=p.input_size, num_fg=num_fg, seed=params.seed))
    torch.manual_seed(params.seed)
    pools = {"pool": CRFPool(params.runtime.crf_workers), "inline": CRFPool(0)}
    try:
        trainees = {k: sec_trainee(num_fg + 1, p, rt) for k in pools}
        fns = {k: (lambda k=k: sec_step(trainees[k], pools[k], batch, p, rt)) for k in pools}
        warm(fns, reps.warmup)
        times = interleaved(fns, reps.sec_rounds, syncer(rt))
    finally:
        for pool in pools.values():
            pool.close()
    res = {
        "crf_pool_speedup": paired_ratio(times, "inline", "pool"),
        "sec_step_ms": median_ms(times),
        "sec_setup": {
            "batch_size": p.batch_size,
            "input_size": p.input_size,
            "crf_workers": params.runtime.crf_workers,
            "crf_scale": p.crf_scale,
            "classes": num_fg + 1,
        },
        "raw_sec_ms": raw_ms(times),
    }

    # CRF alone: 16 images at SEC's VGG16 output size (41 x 41), 21 VOC classes.
    items = synthetic_items(16, size=p.input_size, num_fg=num_fg, seed=params.seed + 2)
    images = downscale_images(torch.stack([it["image"] for it in items]), (41, 41))
    rng = np.random.default_rng(params.seed)
    logits = 3.0 * rng.standard_normal((16, 21, 41, 41))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    configs = {"inline": 0, **{str(n): n for n in range(1, (os.cpu_count() or 1) + 1)}}
    pools = {}
    try:
        for name, n in configs.items():
            pools[name] = CRFPool(n)
        fns = {name: (lambda pool=pool: pool.map(images, probs, p.crf_scale)) for name, pool in pools.items()}
        warm(fns, 1)
        times = interleaved(fns, reps.crf_rounds, lambda: None)
    finally:
        for pool in pools.values():
            pool.close()
    res["crf_pool_scaling"] = {name: len(images) / statistics.median(t) for name, t in times.items()}
    res["crf_scaling_setup"] = {
        "images": len(images),
        "size": [41, 41],
        "classes": 21,
        "scale": p.crf_scale,
        "unit": "CRFs per second",
    }
    res["raw_crf_ms"] = raw_ms(times)
    return res


def bench_eval(params, reps: Reps) -> dict:
    """Section 6: ConfusionMatrix.update on 21-class 500 x 375 label maps (5% void in the ground truth)."""
    from gain.evaluation.metrics import ConfusionMatrix

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
    mpix = len(pairs) * 500 * 375 / 1e6
    return {
        "eval_mpix_per_s": mpix / statistics.median(times["update"]),
        "eval_setup": {"maps_per_call": len(pairs), "height": 375, "width": 500, "classes": 21},
        "raw_eval_ms": raw_ms(times),
    }


def bench_pipeline(device: str) -> dict:
    """Section 7: default `dvc repro` in a fresh copy of the repo, then a no-op `dvc repro`."""
    sys.path.insert(0, str(REPO))  # tests/ is a plain folder on the repo root, not an installed package
    from tests.pipeline_utils import BIN, env_for, make_repo

    with tempfile.TemporaryDirectory(prefix="gain-bench-") as tmp:
        repo = make_repo(Path(tmp) / "repo")
        shutil.copy2(REPO / "params.yaml", repo / "params.yaml")  # make_repo applies the tiny test config
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
        subprocess.run([*git, "commit", "-qam", "default params"], cwd=repo, check=True)
        env = env_for(repo)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        stages, log = {}, []
        load_start = os.getloadavg()[0]
        cpu_start = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        current, since = None, start
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
        cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)  # dvc and, through it, every stage process
        cpu_s = (cpu_end.ru_utime + cpu_end.ru_stime) - (cpu_start.ru_utime + cpu_start.ru_stime)
        load_end = os.getloadavg()[0]
        if current:
            stages[current] = time.perf_counter() - since  # the last stage (plus dvc's lock writing)
        start = time.perf_counter()
        noop = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
        noop_s = time.perf_counter() - start
        if noop.returncode != 0:
            raise RuntimeError(f"no-op dvc repro failed:\n{noop.stdout}\n{noop.stderr}")
        ran = [line for line in noop.stdout.splitlines() if line.startswith("Running stage")]
        return {
            "pipeline_wall_s": wall,
            "noop_repro_s": noop_s,
            "pipeline_stage_s": stages,
            "noop_reran_stages": ran,
            "pipeline_cpu_s": cpu_s,
            "pipeline_loadavg": [load_start, load_end],
        }


# ------------------------------------------------------------------------------------------- report
def machine_info(rt, default_threads: int) -> dict:
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or None,
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_default_threads": default_threads,
        "cuda": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


def verdicts(res: dict) -> dict:
    out = {}
    for key, (op, bound, meaning) in TARGETS.items():
        value = res.get(key)
        ok = None
        if value is not None:
            ok = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[key] = {"target": f"{op} {bound:g}", "pass": ok, "meaning": meaning}
    return out


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


FIGURES = [  # (key, unit, what)
    ("gain_step_over_plain", "x", "GAIN step / plain classifier step"),
    ("gain_step_over_floor", "", "that ratio / ((1 + mean labels per image) x 1.1)"),
    ("speedup_vs_public_pass_structure", "x", "public pass structure / ours (both detached weights)"),
    (
        "speedup_vs_public_differentiable",
        "x",
        "public pass structure / ours with differentiable weights (info)",
    ),
    ("gain_memory_over_plain", "x", "peak step memory, GAIN / plain"),
    ("public_memory_over_plain", "x", "peak step memory, public / plain"),
    ("seed_images_per_s", "img/s", "seed extraction, all classes of a batch in one pass"),
    ("seed_batched_speedup", "x", "one pass per class / one pass per batch"),
    ("crf_pool_speedup", "x", "SEC step with the CRF inline / with the CRF pool"),
    ("eval_mpix_per_s", "Mpx/s", "ConfusionMatrix.update"),
    ("pipeline_wall_s", "s", "default `dvc repro` from a clean copy"),
    ("noop_repro_s", "s", "no-op `dvc repro` right after"),
]


def busy_note(res: dict) -> list[str]:
    m = res["machine"]
    load = max(m["loadavg_start"][0], m["loadavg_end"][0])
    # This run itself adds up to a core or two by its end.
    if m["loadavg_start"][0] <= 0.5 * m["cores"] and m["loadavg_end"][0] <= 1.25 * m["cores"]:
        return []
    return [
        f"The machine was busy (1-minute load average up to {load:.1f} on {m['cores']} cores, this run "
        "included): absolute times and throughputs are inflated by other processes, more so with several "
        "intra-op threads; the paired ratios are the figures to trust.",
        "",
    ]


def render_md(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{res['command']}` on {m['date']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} intra-op "
        f"threads in the timed sections, torch's default {m['torch_default_threads']}), "
        f"CUDA: {m['cuda'] or 'none'}; device `{res['device']}`; load average "
        f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end"
        f"{' (quick run: few repetitions)' if res['quick'] else ''}.",
        "",
        "Compared variants run interleaved in the same process (order alternating each round); every ratio "
        "is the median of the per-round ratios.",
        "",
        *busy_note(res),
        "| figure | value | unit | target | result | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, unit, what in FIGURES:
        t = res["targets"].get(key)
        target = t["target"] if t else "-"
        result = "info" if not t else {True: "pass", False: "**FAIL**", None: "n/a"}[t["pass"]]
        lines.append(f"| `{key}` | {fmt(res.get(key))} | {unit} | {target} | {result} | {what} |")

    s = res["step_setup"]
    lines += [
        "",
        f"## Training steps (batch {s['batch_size']}, input {s['input_size']}, {s['backbone']} backbone, "
        f"{s['num_fg']} classes, {res['mean_labels_per_image']:.3g} labels per image, {s['pairs']} pairs, "
        f"{s['class_ranks']} class ranks)",
        "",
        "| variant | median ms/step |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["step_ms"].items()]
    if res.get("plain_step_ms_by_threads"):
        lines += [
            "",
            "plain step by intra-op thread count (interleaved): "
            + ", ".join(f"{k} thread(s) {v:.1f} ms" for k, v in res["plain_step_ms_by_threads"].items())
            + ".",
        ]
    eq = res["public_equivalence"]
    lines += [
        "",
        "gain: GAIN.forward + gain_loss as gain/pretrain.py (grad_weights "
        f"{s['grad_weights']}); gain_detached: GAIN(differentiable=False); public: a full backward per class "
        "rank with a feature hook, then the masked forward and the real backward. public vs gain_detached "
        f"on the same weights: loss differs by {eq['loss_abs_diff']:.2g}, parameter gradients by "
        f"{eq['grad_max_abs_diff_rel']:.2g} (relative to the largest).",
    ]

    lines += [
        "",
        "## Peak memory of one training step",
        "",
        f"Method: {res['memory_method']}.",
        "",
        "| variant | MiB above baseline |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["memory_mib"].items()]

    e = res["seed_equivalence"]
    lines += [
        "",
        "## Seed extraction",
        "",
        f"{res['seed_setup']['images']} images, batch {res['seed_setup']['batch_size']}, flip "
        f"{res['seed_setup']['flip']}: {fmt(res['seed_images_per_s'])} img/s batched (gain.seeds."
        f"image_attention), {fmt(res['seed_per_class_images_per_s'])} img/s with one attention_maps call "
        f"per class (on the images holding that class). Same maps: classes equal {e['same_classes']}, max abs "
        f"difference {e['max_abs_diff']:.2g}.",
    ]

    ss = res["sec_setup"]
    lines += [
        "",
        "## SEC step and CRF pool",
        "",
        f"SEC step (batch {ss['batch_size']}, input {ss['input_size']}, CRF scale {ss['crf_scale']:g}): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in res["sec_step_ms"].items())
        + f" (pool: {ss['crf_workers']} workers).",
        "",
        "CRF alone, 16 images of 41 x 41 x 21:",
        "",
        "| processes | CRFs/s |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in res["crf_pool_scaling"].items()]

    if res.get("pipeline_stage_s"):
        lines += [
            "",
            "## Pipeline",
            "",
            f"{res['pipeline_wall_s']:.1f} s wall, {res['pipeline_cpu_s']:.1f} s CPU (user + system of dvc and the "
            f"stages); 1-minute load average {res['pipeline_loadavg'][0]:.2f} when it started, "
            f"{res['pipeline_loadavg'][1]:.2f} when it ended.",
            "",
            "| stage | s |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {v:.1f} |" for k, v in res["pipeline_stage_s"].items()]
        if res.get("noop_reran_stages"):
            lines += ["", f"The no-op repro re-ran: {res['noop_reran_stages']}."]

    if res.get("profile"):
        lines += ["", "## Profile (torch.profiler, self time per step)", ""]
        lines += profile_md(res)
    return "\n".join(lines) + "\n"


def profile_md(res: dict) -> list[str]:
    prof = res["profile"]
    lines = []
    for key, op, bound in (
        ("speedup_vs_public_pass_structure", "<", 1.3),
        ("gain_step_over_floor", ">", 1.0),
    ):
        if (res[key] < bound) if op == "<" else (res[key] > bound):
            lines.append(f"`{key}` missed its target ({res[key]:.3g} {op} {bound:g}); where the time goes:")
    if not lines:
        lines.append("Profiled on request (`--profile`); every step target passed.")
    lines += [
        "",
        "| variant | ms/step (profiled) | conv forwards/step | conv backwards/step | top self-time ops (ms/step, share) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, p in prof.items():
        top = "; ".join(f"{o['op']} {o['ms_per_step']:.1f} ({o['share']:.0%})" for o in p["top_ops"][:4])
        lines.append(
            f"| {name} | {p['total_ms_per_step']:.1f} | {p['conv_forward_per_step']:g} | "
            f"{p['conv_backward_per_step']:g} | {top} |"
        )
    lines += [
        "",
        "Where the extra time goes (operators with the largest difference in self time per step):",
        "",
    ]
    for a, b in (("gain", "plain"), ("public", "gain_detached")):
        if a in prof and b in prof:
            ops_a, ops_b = prof[a]["ms_by_op"], prof[b]["ms_by_op"]
            diff = {k: ops_a.get(k, 0.0) - ops_b.get(k, 0.0) for k in set(ops_a) | set(ops_b)}
            total = prof[a]["total_ms_per_step"] - prof[b]["total_ms_per_step"]
            top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:4]
            lines.append(
                f"- {a} - {b}: {total:+.1f} ms/step; " + "; ".join(f"{k} {v:+.1f} ms" for k, v in top)
            )
    return lines


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--skip-pipeline", action="store_true", help="do not time `dvc repro` (figures null)")
    ap.add_argument("--profile", action="store_true", help="profile the training steps even if targets pass")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the timed sections (default 1: on a CPU shared with other jobs, "
        "ratios stay fair; 0: torch's default, as the pipeline's stages run)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path("reports"), help="where benchmarks.json/.md go")
    ap.add_argument("--memory-child", choices=STEP_VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--memory-steps", type=int, default=FULL.memory_steps, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.device, args.memory_steps, args.threads)
        return None

    from gain.runtime.engine import seed_everything, setup_runtime
    from gain.runtime.params import load_params

    reps = QUICK if args.quick else FULL
    profile = True if args.profile else (False if args.quick else None)  # None: when a step target is missed
    import torch

    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    rt = setup_runtime(args.device)
    seed_everything(params.seed, params.deterministic)
    device = rt.device.type
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    res: dict = {
        "command": command.strip(),
        "device": device,
        "quick": args.quick,
        "machine": machine_info(rt, default_threads),
        "reps": asdict(reps),
    }
    sections = [
        (
            "training steps",
            lambda: bench_steps(params, rt, reps, profile=profile, default_threads=default_threads),
        ),
        ("memory", lambda: bench_memory(params, rt, reps, device, args.threads)),
        ("seeds", lambda: bench_seeds(params, rt, reps)),
        ("SEC step and CRF pool", lambda: bench_sec(params, rt, reps)),
        ("evaluation", lambda: bench_eval(params, reps)),
    ]
    if not args.skip_pipeline:
        sections.append(("pipeline", lambda: bench_pipeline(device)))
    else:
        res.update(
            {"pipeline_wall_s": None, "noop_repro_s": None, "pipeline_stage_s": None, "pipeline_cpu_s": None}
        )
    section_s = {}
    for name, fn in sections:
        start = time.perf_counter()
        print(f"[benchmarks] {name} ...", flush=True)
        res.update(fn())
        section_s[name] = time.perf_counter() - start
        print(f"[benchmarks] {name}: {section_s[name]:.1f} s", flush=True)
    res["section_s"] = section_s
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["targets"] = verdicts(res)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "benchmarks.json").write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
    md = render_md(res)
    (args.out_dir / "benchmarks.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
