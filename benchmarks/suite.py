"""The benchmark sections at params.yaml's settings (`run_sections`), each returning the figures it adds to
reports/benchmarks.json, and their targets."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path
from subprocess import PIPE, STDOUT

import numpy as np
import torch

from benchmarks import workloads as wl
from benchmarks.timing import interleaved, median_ms, paired_ratio, raw_ms, status_kib, syncer
from gain.cam.model import Classifier
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.loaders import collate
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
    "cpu": "peak RSS (VmHWM, reset after construction) minus the RSS after model construction",
    "cuda": "torch.cuda.max_memory_allocated over the steps minus memory_allocated before them (weights, "
    "gradients and momentum in the baseline)",
}
CRF_CASES = {"14x14x7": (None, 14, 7), "41x41x21": (15, 41, 21)}  # (images or None: SEC batch, side, classes)
# Repetitions per section; rounds are interleaved rounds, each running every variant once.
Reps = namedtuple("Reps", "warmup step_rounds seed_rounds sec_rounds crf_rounds eval_rounds memory_steps")
FULL, QUICK = Reps(5, 40, 7, 20, 9, 15, 3), Reps(1, 3, 1, 3, 2, 3, 1)


def run_sections(params, rt, args) -> dict:
    """Every section in turn (the pipeline unless --skip-pipeline), with its wall time in `section_s`."""
    reps, dev = QUICK if args.quick else FULL, rt.device.type
    sections = {
        "training steps": lambda: bench_steps(params, rt, reps),
        "memory": lambda: bench_memory(reps, args.device, args.threads, dev),
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


def gain_batch(params) -> dict:
    """params' GAIN batch: batch_size at input_size, ~2 labels per image over the synthetic classes."""
    g, num_fg = params.gain, params.data.synthetic.num_classes
    return collate(wl.synthetic_items(g.batch_size, size=g.input_size, num_fg=num_fg, seed=params.seed))


def gain_steps(params, rt, batch: dict, names=wl.VARIANTS) -> dict:
    """A full training step of each variant in `names`, all from the same weights."""
    g, num_fg = params.gain, params.data.synthetic.num_classes
    return wl.step_fns(wl.build_trainees(g, num_fg, rt, seed=params.seed, names=names), batch, g, rt)


def bench_steps(params, rt, reps: Reps) -> dict:
    """GAIN vs plain classifier step, and ours vs the public pass structure, interleaved."""
    g, num_fg, batch = params.gain, params.data.synthetic.num_classes, gain_batch(params)
    check = wl.public_vs_ours(g, num_fg, batch, rt, seed=params.seed)
    fns = gain_steps(params, rt, batch)
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
        "public_equivalence": check,
        "raw_step_ms": raw_ms(times),
    }


def memory_child(params, rt, variant: str, steps: int) -> None:
    """In a fresh process: peak memory (MiB) of `steps` training steps of one variant above the memory after
    construction (MEMORY_METHOD); prints one JSON line. On the CPU the RSS high-water mark is reset after
    freed heap went back to the system (malloc_trim), so import-time peaks and free lists hide nothing."""
    fn = gain_steps(params, rt, gain_batch(params), names=(variant,))[variant]
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
    mib = {"baseline_mib": before / 1024, "peak_mib": peak / 1024}
    print(json.dumps(mib | {"peak_minus_baseline_mib": (peak - before) / 1024}))


def bench_memory(reps: Reps, device: str, threads: int, device_type: str) -> dict:
    """Peak memory of training steps per variant (MiB above the model's own footprint): a fresh process per
    variant, all at once (memory does not depend on the share of the device)."""
    cmd = [sys.executable, "-m", "benchmarks.run", *f"--device {device} --threads {threads}".split()]
    cmd += ["--memory-steps", str(reps.memory_steps), "--memory-child"]
    procs = {
        v: subprocess.Popen([*cmd, v], cwd=wl.REPO, stdout=PIPE, stderr=PIPE, text=True)
        for v in ("plain", "gain", "public")
    }
    out = {}
    for v, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {v} failed:\n{stderr[-3000:]}")
        out[v] = json.loads(stdout.strip().splitlines()[-1])
    mib = {k: v["peak_minus_baseline_mib"] for k, v in out.items()}
    return {
        "memory_mib": mib,
        "gain_memory_over_plain": mib["gain"] / mib["plain"],
        "public_memory_over_plain": mib["public"] / mib["plain"],
        "memory_detail": out,
        "memory_method": "a fresh process per variant: " + MEMORY_METHOD[device_type],
    }


def bench_seeds(params, rt, reps: Reps) -> dict:
    """Seed extraction: all classes of a batch in one pass (the library) vs one pass per class."""
    g, num_fg = params.gain, params.data.synthetic.num_classes
    items = wl.synthetic_items(64, size=g.input_size, num_fg=num_fg, seed=params.seed + 1)
    torch.manual_seed(params.seed)
    classifier = rt.place(Classifier(g.backbone, num_fg, weights="none", head=g.head)).eval()
    kw = {"batch_size": params.runtime.seeds_batch_size, "flip": params.seeds.flip}
    fns = {
        "batched": lambda: [(a, c) for _, a, c in image_attention(classifier, items, rt, **kw)],
        "per_class": lambda: wl.seeds_per_class(classifier, items, rt, **kw),
    }
    a, b = fns["batched"](), fns["per_class"]()  # also the warm-up
    same = all(np.array_equal(ca, cb) for (_, ca), (_, cb) in zip(a, b, strict=True))
    diff = max(float(np.abs(ma - mb).max(initial=0.0)) for (ma, _), (mb, _) in zip(a, b, strict=True))
    times = interleaved(fns, reps.seed_rounds, rt.device)
    return {
        "seed_images_per_s": len(items) / statistics.median(times["batched"]),
        "seed_per_class_images_per_s": len(items) / statistics.median(times["per_class"]),
        "seed_batched_speedup": paired_ratio(times, "per_class", "batched"),
        "seed_setup": {"images": len(items), **kw, "pairs": int(sum(len(c) for _, c in a))},
        "seed_equivalence": {"same_classes": same, "max_abs_diff": diff},
        "raw_seed_ms": raw_ms(times),
    }


def bench_sec(params, rt, reps: Reps) -> dict:
    """The SEC step with the CRF pool, inline and exact, interleaved; then CRFs per second of every backend
    (pydensecrf inline, in 1 .. cores processes, the exact CRF) in each of CRF_CASES, on synthetic images."""
    p, num_fg, workers = params.sec, params.data.synthetic.num_classes, params.runtime.crf_workers
    batch = collate(wl.synthetic_items(p.batch_size, size=p.input_size, num_fg=num_fg, seed=params.seed))
    torch.manual_seed(params.seed)
    with CRFPool(workers) as pool, CRFPool(0) as inline:
        crfs = {"pool": pool, "inline": inline, "exact": ExactCRF()}
        trainees = {k: wl.trainee(LargeFOV(p.backbone, num_fg + 1), p, rt) for k in crfs}
        fns = {k: (lambda k=k: wl.step(trainees[k], sec_step_losses, batch, crfs[k], p, rt=rt)) for k in crfs}
        times = interleaved(fns, reps.sec_rounds, rt.device, reps.warmup)
    # the scale the step used: params' value, or gain.sec.scale's rule on the default 14x14 grid
    scale = resolve(p.crf_scale, train_crf_scale, (14, 14))
    res = {
        "crf_pool_speedup": paired_ratio(times, "inline", "pool"),
        "sec_exact_over_inline": paired_ratio(times, "exact", "inline"),
        "sec_exact_over_pool": paired_ratio(times, "exact", "pool"),
        "sec_step_ms": median_ms(times),
        "sec_setup": {"batch_size": p.batch_size, "input_size": p.input_size, "crf_workers": workers}
        | {"crf_scale": scale, "classes": num_fg + 1},  # fmt: skip
        "raw_sec_ms": raw_ms(times),
    }
    rates, setup, raw, cores = {}, {}, {}, range(1, (os.cpu_count() or 1) + 1)
    for case, (n, side, classes) in CRF_CASES.items():
        items = wl.synthetic_items(n or p.batch_size, size=p.input_size, num_fg=num_fg, seed=params.seed + 2)
        images = downscale_images(collate(items)["image"], (side, side))
        shape, scale = (len(images), classes, side, side), resolve(p.crf_scale, train_crf_scale, (side, side))
        log_probs = wl.random_log_probs(np.random.default_rng(params.seed + 2), shape)
        setup[case] = {"images": len(images), "scale": scale}
        rates[case], times = wl.crf_rates(images, log_probs, scale, cores, rt.device, reps.crf_rounds)
        raw |= {f"{case}/{k}": v for k, v in times.items()}
    return res | {"crf_per_s": rates, "crf_setup": setup, "raw_crf_ms": raw}


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


def pipeline_copy(dest: Path) -> dict:
    """A fresh git copy of the project's files in `dest` (no outputs, no store) with params.yaml as it is;
    -> the environment `dvc repro` runs in there."""
    ls = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    for f in subprocess.run(ls, cwd=wl.REPO, capture_output=True, text=True, check=True).stdout.splitlines():
        if (wl.REPO / f).is_file() and not f.startswith(("reports/", "dvc.lock")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wl.REPO / f, dest / f)
    (dest / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GAIN_"))}
    env |= {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(dest / ".dvc_site_cache")}
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)  # the stages use every core, whatever this shell says
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    for who in ("AUTHOR", "COMMITTER"):
        env |= {f"GIT_{who}_NAME": "bench", f"GIT_{who}_EMAIL": "bench@example.com"}
    for git in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "benchmark copy"]):
        subprocess.run(["git", *git], cwd=dest, check=True, env=env)
    return env


def bench_pipeline(device: str) -> dict:
    """Default `dvc repro` in a fresh copy of the repo (stage by stage), then a no-op `dvc repro`."""
    dvc = str(Path(sys.executable).parent / "dvc")
    with tempfile.TemporaryDirectory(prefix="gain-bench-") as tmp:
        repo = Path(tmp)
        env = pipeline_copy(repo) | ({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})
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
    }


def verdicts(res: dict) -> dict:
    out = {}
    for key, (op, bound, meaning) in TARGETS.items():
        value = res.get(key)
        ok = None if value is None else {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[key] = {"target": f"{op} {bound:g}", "pass": ok, "meaning": meaning}
    return out
