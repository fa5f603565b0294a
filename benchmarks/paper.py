"""VOC 2012 at the papers' scale on the available device, and the full run projected from it.

Measured through the library at VGG16 321 x 321 with random weights, on real VOC images (tests/data): one
GAIN step (the paper's batch 1, and batched), one seed-extraction batch (extract_seeds: attention, cues,
PNGs), one SEC step with its CRF pool (15 CRFs of 41 x 41 x 21, s = 12), the evaluation with the
full-resolution CRF (~500 x 375 x 21, s = 1) beside inference, and JPEG decoding with the training preset
through the training DataLoader with the configured workers. The projection multiplies those rates by the
papers' counts (PAPER). On the CPU the large batches are measured smaller and scaled linearly (a CPU's
throughput does not grow with the batch), and `--quick` measures at QUICK_SIZE and scales by the counted
FLOPs: both say so in the report. Where no GPU measured anything, `gpu_estimate` gives an H100-class
figure from counted FLOPs, an assumed sustained rate and the CPU-side costs measured here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.timing import GpuSampler, interleaved, median_s, raw_ms, syncer, warm
from benchmarks.workloads import VOC_SAMPLE, Trainee, gain_trainee, sec_step, sec_trainee, update, voc_index
from gain.cam.model import Classifier
from gain.cam.train import gain_step_losses
from gain.data.dataset import VOCDataset
from gain.data.transforms import eval_preset, train_preset
from gain.runtime.loaders import collate, epoch_loader, loader_workers
from gain.sec.crf import CRFParams, CRFPool
from gain.sec.crf_exact import ExactCRF, train_crf_backend
from gain.sec.evaluate import evaluate_segmenter
from gain.sec.model import LargeFOV
from gain.sec.scale import inference_crf_scale, resolve, train_crf_scale
from gain.sec.train import downscale_images
from gain.seeds.extract import extract_seeds, image_attention

PAPER = {  # GAIN (Li et al. 2018) and SEC (Kolesnikov & Lampert 2016) on VOC 2012
    "train_images": 10_582,
    "val_images": 1_449,
    "gain_epochs": 35,
    "gain_batch": 1,
    "sec_iterations": 8_000,
    "sec_batch": 15,
    "input_size": 321,
    "classes": 21,
}
BATCHED_GAIN = 16  # the faster GAIN setting projected beside the paper's batch 1 (needs its own lr)
# Labels per image: mean 1.5 (as VOC's train_aug) over any 2, 4, 8 or 16 first images, at most 3.
LABEL_PATTERN = (1, 2, 1, 2, 1, 1, 3, 1)
QUICK_SIZE = 129
ASSUMED = {  # for `gpu_estimate` and the multi-GPU projection only: not measured
    "gpu": "H100/H200-class, bf16",
    "sustained_tflops": 400.0,  # ~40% of an H100 SXM's 989 dense bf16 TFLOP/s on VGG16-sized convolutions
    "host_cores": 16,  # CPU cores per GPU (DataLoader workers, CRF processes, the main process)
    "ddp_efficiency": 0.9,  # per-GPU throughput kept under torchrun (NVLink all-reduce of 15-20M params)
    "fp32_tflops": 30.0,  # the exact CRF's float32 matrix products (no TF32): ~45% of an H100 SXM's 67
}


@dataclass(frozen=True)
class Setup:
    """What is measured: sizes and repetitions (interleaved rounds after `warmup`: `step_rounds` for the
    training steps and CRFs, `rounds` for the passes over several images)."""

    input_size: int
    gain_batch: int
    seeds_images: int
    seeds_batch: int
    sec_batch: int
    eval_images: int
    decode_images: int
    warmup: int
    step_rounds: int
    rounds: int


def setup_for(device: torch.device, *, quick: bool, seeds_batch: int) -> Setup:
    if device.type == "cuda":  # the real sizes; passes over several batches, so loader start-up is amortised
        return Setup(321, BATCHED_GAIN, 2 * seeds_batch, seeds_batch, 15, 30, 1200, 1, 3 if quick else 10, 2)
    size = QUICK_SIZE if quick else 321  # one round: a VGG16 step at 321 takes seconds on a CPU core
    return Setup(size, 2, 2, 2, 1, 1 if quick else 3, 40 if quick else 60, 0, 1, 1)


def label_rows(counts: tuple[int, ...], num_fg: int = PAPER["classes"] - 1) -> torch.Tensor:
    """(B, num_fg) multi-hot labels, image i holding counts[i] distinct classes."""
    y = torch.zeros(len(counts), num_fg)
    for i, k in enumerate(counts):
        y[i, [(7 * i + 3 * j) % num_fg for j in range(k)]] = 1.0
    return y


def voc_batch(ds: VOCDataset, n: int, counts: tuple[int, ...] | None = None) -> dict:
    batch = collate([ds[i % len(ds)] for i in range(n)])
    if counts is not None:
        batch["label"] = label_rows(counts)
    return batch


def forward_gflops(build, sizes: dict[str, int]) -> dict[str, float]:
    """GFLOPs of one image's forward pass at each size (counted on the meta device: no memory, no time)."""
    out = {}
    with torch.device("meta"):
        model = build()
        for tag, size in sizes.items():
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, size, size))
            out[tag] = counter.get_total_flops() / 1e9
    return out


class TimedPool:
    """A CRFPool for sec_step_losses that adds up the wall time of its `map` calls (the CRF's share)."""

    def __init__(self, pool: CRFPool):
        self.pool, self.seconds, self.calls = pool, 0.0, 0

    def map(self, images, probs, scale):
        start = time.perf_counter()
        out = self.pool.map(images, probs, scale)
        self.seconds, self.calls = self.seconds + time.perf_counter() - start, self.calls + 1
        return out


class TimedExact(ExactCRF):
    """ExactCRF for sec_step_losses that adds up the (device-synchronised) wall time of its `run` calls."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.sync, self.seconds, self.calls = syncer(device), 0.0, 0

    def run(self, images, log_probs, scale):
        self.sync()
        start = time.perf_counter()
        out = super().run(images, log_probs, scale)
        self.sync()
        self.seconds, self.calls = self.seconds + time.perf_counter() - start, self.calls + 1
        return out


def exact_crf_gflops(batch: int, classes: int, cells: int, iterations: int = CRFParams().iterations) -> float:
    """Counted GFLOPs of gain.sec.crf_exact on one batch: per iteration two (C, N) x (N, N) products per
    image (2 C N^2 multiply-adds each), plus the bilateral kernels' colour products (2 x 3 N^2 per image)."""
    return batch * (iterations * 2 * 2 * classes * cells**2 + 2 * 3 * cells**2) / 1e9


def random_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Softmax probabilities (C first) of confident random logits, float32."""
    logits = 3.0 * rng.standard_normal(shape)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------- measurements
def measure_gain(params, rt, s: Setup, index) -> tuple[dict, Trainee]:
    p = dataclasses.replace(params.gain, backbone="vgg16", weights="none", input_size=s.input_size)
    t = gain_trainee(p, PAPER["classes"] - 1, rt, seed=params.seed)
    ds = VOCDataset(index, index.splits["weak_train"], train_preset(s.input_size), with_masks=set())
    batches = {
        "batch1_1label": voc_batch(ds, 1, (1,)),
        "batch1_2labels": voc_batch(ds, 1, (2,)),
        f"batch{s.gain_batch}": voc_batch(
            ds, s.gain_batch, tuple(LABEL_PATTERN[i % 8] for i in range(s.gain_batch))
        ),
    }

    def step(batch: dict) -> None:
        with rt.autocast():
            losses = gain_step_losses(t.model, batch, p, rt)
        update(t, losses["total"])

    fns = {k: (lambda b=b: step(b)) for k, b in batches.items()}
    with GpuSampler(rt.device) as gpu:
        warm(fns, s.warmup)
        times = interleaved(fns, s.step_rounds, syncer(rt.device))
    labels = {k: float(b["label"].sum(1).mean()) for k, b in batches.items()}
    res = {"gain_step_s": median_s(times), "gain_labels_per_image": labels, "raw_gain_ms": raw_ms(times)}
    return {**res, "gpu": gpu.summary()}, t


def measure_seeds(classifier, params, rt, s: Setup, index) -> dict:
    """extract_seeds (attention, cue maps, PNGs, scoring) and image_attention alone, per image; and both
    again with a near-free classifier, whose difference is the main process's own share (cues, PNGs,
    scoring), too small to read beside a VGG16 pass on a CPU."""
    ids = index.splits["weak_train"]
    idx = index.with_meta(
        splits={**index.splits, "weak_train": [ids[i % len(ids)] for i in range(s.seeds_images)]}
    )
    ds = VOCDataset(idx, idx.splits["weak_train"], eval_preset(s.input_size), keep_original=True)
    tiny = Classifier("small", PAPER["classes"] - 1).eval()
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as tmp:
        kw = {"input_size": s.input_size, "batch_size": s.seeds_batch, "n_vis": 0}

        def extract(clf):
            extract_seeds(clf, idx, params.seeds, rt, Path(tmp) / "seeds", **kw)

        def attention(clf):
            for _ in image_attention(clf, ds, rt, batch_size=s.seeds_batch, flip=params.seeds.flip):
                pass

        fns = {"extract": lambda: extract(classifier), "attention": lambda: attention(classifier)}
        with GpuSampler(rt.device) as gpu:
            warm(fns, s.warmup)
            times = interleaved(fns, s.rounds, syncer(rt.device))
        cpu = rt.device.type == "cpu"
        small = {
            "extract_small_trunk": lambda: extract(tiny),
            "attention_small_trunk": lambda: attention(tiny),
        }
        times |= interleaved(small, 3, lambda: None) if cpu else {}
    per_image = {k: v / s.seeds_images for k, v in median_s(times).items()}
    a, b = ("extract_small_trunk", "attention_small_trunk") if cpu else ("extract", "attention")
    post = max(per_image[a] - per_image[b], 0.0)
    return {"seeds_s_per_image": per_image, "seeds_main_process_s_per_image": post, "raw_seeds_ms": raw_ms(times),
            "gpu": gpu.summary()}  # fmt: skip


def measure_sec(params, rt, s: Setup, index, processes: list[int]) -> tuple[dict, LargeFOV]:
    p = dataclasses.replace(params.sec, backbone="vgg16", input_size=s.input_size, batch_size=s.sec_batch)
    t = sec_trainee(p, PAPER["classes"], rt)
    ds = VOCDataset(
        index,
        index.splits["weak_train"],
        train_preset(s.input_size),
        mask_root=VOC_SAMPLE / "SegmentationClass",
    )
    batch = voc_batch(ds, s.sec_batch)
    pools = {f"pool_{n}": TimedPool(CRFPool(n)) for n in processes} | {"exact": TimedExact(rt.device)}
    try:
        fns = {k: (lambda pool=pool: sec_step(t, pool, batch, p, rt)) for k, pool in pools.items()}
        for pool in pools.values():
            start_workers(getattr(pool, "pool", None))
        warm(fns, s.warmup)
        for pool in pools.values():
            pool.seconds = pool.calls = 0
        with GpuSampler(rt.device) as gpu:
            times = interleaved(fns, s.step_rounds, syncer(rt.device))
    finally:
        for pool in pools.values():
            getattr(pool, "pool", pool).__exit__()
    with torch.no_grad():
        out = t.model(rt.to_device(batch["image"][:1]))
    step = median_s(times)
    return {
        "sec_step_s": step,
        "sec_crf_s": {k: pool.seconds / pool.calls for k, pool in pools.items()},
        "sec_output": list(out.shape[-2:]),
        "raw_sec_ms": raw_ms(times),
        "gpu": gpu.summary(),
    }, t.model


def measure_crf(params, s: Setup, processes: list[int], index, device: torch.device) -> dict:
    """15 CRFs of 41 x 41 x 21 (SEC's training CRF, s = params' crf_scale) per pool size, and exact on
    `device`."""
    ds = VOCDataset(index, index.splits["weak_train"], eval_preset(PAPER["input_size"]))
    images = downscale_images(voc_batch(ds, PAPER["sec_batch"])["image"], (41, 41))
    rng = np.random.default_rng(params.seed)
    log_probs = np.log(np.stack([random_probs(rng, (PAPER["classes"], 41, 41)) for _ in images]))
    pools = {"inline": CRFPool(0), **{str(n): CRFPool(n) for n in processes}}
    on_device = (torch.from_numpy(images).to(device), torch.from_numpy(log_probs).to(device))
    scale = resolve(params.sec.crf_scale, train_crf_scale, (41, 41))
    try:
        fns = {k: (lambda pool=pool: pool.map(images, log_probs, scale)) for k, pool in pools.items()}
        fns["exact"] = lambda: ExactCRF().run(*on_device, scale)
        warm(fns, 1)
        times = interleaved(fns, max(2, s.step_rounds), syncer(device))
    finally:
        for pool in pools.values():
            pool.close()
    return {
        "crf41_per_s": {k: len(images) / v for k, v in median_s(times).items()},
        "raw_crf41_ms": raw_ms(times),
    }


def measure_eval(model, params, rt, s: Setup, index, processes: int) -> dict:
    """evaluate_segmenter without and with the full-resolution CRF pool, and the pool's CRFs alone."""
    ids = index.splits["val"]
    ds = VOCDataset(
        index,
        [ids[i % len(ids)] for i in range(s.eval_images)],
        eval_preset(s.input_size),
        keep_original=True,
    )
    rng = np.random.default_rng(params.seed)
    items = [ds[i] for i in range(len(ds))]
    # the test-time CRF's input: log of the probabilities floored at 1e-5, as gain.sec.evaluate passes it
    probs = [
        np.log(np.maximum(random_probs(rng, (PAPER["classes"], *it["orig_image"].shape[:2])), 1e-5))
        for it in items
    ]
    with CRFPool(processes) as pool, CRFPool(0) as inline:

        def crf_only():
            jobs = [
                pool.submit(it["orig_image"][None], pr[None], inference_crf_scale(it["orig_image"].shape[:2]))
                for it, pr in zip(items, probs, strict=True)
            ]
            return [j.get() for j in jobs]

        fns = {
            "inference": lambda: evaluate_segmenter(model, ds, rt),
            "inference_and_crf": lambda: evaluate_segmenter(model, ds, rt, crf_pool=pool),
            "crf_only": crf_only,
            "crf_one_inline": lambda: inline.map(
                items[0]["orig_image"][None],
                probs[0][None],
                inference_crf_scale(items[0]["orig_image"].shape[:2]),
            ),
        }
        start_workers(pool)
        with GpuSampler(rt.device) as gpu:
            warm(fns, s.warmup)
            times = interleaved(fns, s.rounds, syncer(rt.device))
    t = median_s(times)
    hidden = (t["inference"] + t["crf_only"] - t["inference_and_crf"]) / min(t["inference"], t["crf_only"])
    return {
        "eval_s": t,
        "eval_crf_overlap": hidden,  # 1: the CRFs hide entirely behind inference (or it behind them), 0: serial
        "eval_crf_processes": processes,
        "eval_image_size": list(items[0]["orig_image"].shape[:2]),
        "raw_eval_ms": raw_ms(times),
        "gpu": gpu.summary(),
    }


def measure_decode(params, rt, s: Setup, index) -> dict:
    """Images/s of the training DataLoader (decode + train preset at 321, collate, pinning on CUDA): GAIN's
    (image only) and SEC's (image + seed PNG), in-line and with the configured workers."""
    workers = loader_workers(params.runtime.workers, rt.device.type == "cuda")
    ids = index.splits["weak_train"]
    sets = {
        "gain": VOCDataset(index, ids * (s.decode_images // len(ids)), train_preset(321), with_masks=set()),
        "sec": VOCDataset(
            index,
            ids * (s.decode_images // len(ids)),
            train_preset(321),
            mask_root=VOC_SAMPLE / "SegmentationClass",
        ),
    }
    out = {}
    for name, ds in sets.items():
        for w in sorted({0, workers}):
            n_images = len(ds) if w else min(len(ds), 120)
            loader = epoch_loader(
                Subset(ds, range(n_images)), batch_size=5, epoch=0, skip_batches=0, seed=0, rt=rt, workers=w
            )
            # The clock starts at the first batch, by when each worker has made one batch in parallel:
            # those are not counted (nor is start-up, paid once per epoch).
            skip, n = max(w, 1), 0
            for i, batch in enumerate(loader):
                if i == skip - 1:
                    start = time.perf_counter()
                elif i >= skip:
                    n += len(batch["id"])
            out[f"{name}_workers_{w}"] = n / (time.perf_counter() - start)
    return {"decode_images_per_s": out, "loader_workers": workers}


# ------------------------------------------------------------------------------------------- projection
def loaded_step(compute: float, batch: int, rate: float, workers: int) -> float:
    """A step with its data: in-line loading adds to the step, workers overlap it."""
    return compute + batch / rate if workers == 0 else max(compute, batch / rate)


def project(m: dict, s: Setup, flops: dict, crf_workers: int, sec_crf: str) -> dict:
    """Hours per stage on this device from the measured rates and PAPER's counts, and each step's split;
    SEC with the training CRF `sec.train_crf: auto` picks here (`sec_crf`: "exact" or "lattice", the
    lattice in `crf_workers` processes)."""
    n, w = PAPER["train_images"], m["loader_workers"]
    rate = m["decode_images_per_s"]
    k_clf = flops["classifier_gflops_321"] / flops["classifier_gflops_measured"]
    k_sec = flops["largefov_gflops_321"] / flops["largefov_gflops_measured"]
    g = m["gain_step_s"]
    b1 = k_clf * statistics.fmean([g["batch1_1label"], g["batch1_2labels"]])  # linear in labels: 1.5 labels
    bb = k_clf * g[f"batch{s.gain_batch}"] * BATCHED_GAIN / s.gain_batch
    seeds = m["seeds_s_per_image"]
    seed_img = seeds["extract"] + (k_clf - 1) * seeds["attention"]
    pool, rate_key = ("exact", "exact") if sec_crf == "exact" else (f"pool_{crf_workers}", str(crf_workers))
    fb = k_sec * (m["sec_step_s"][pool] - m["sec_crf_s"][pool]) * PAPER["sec_batch"] / s.sec_batch
    measured_crf = s.sec_batch == PAPER["sec_batch"] and m["sec_output"] == [41, 41]
    crf = m["sec_crf_s"][pool] if measured_crf else PAPER["sec_batch"] / m["crf41_per_s"][rate_key]
    e = m["eval_s"]
    eval_img = (e["inference_and_crf"] + (k_sec - 1) * e["inference"]) / s.eval_images

    def split(batch: int, compute: float, crf_s: float, data_rate: float) -> dict:
        step = loaded_step(compute + crf_s, batch, data_rate, w)
        return {
            "data": batch / data_rate,
            "forward_backward": compute,
            "crf": crf_s,
            "step": step,
            "data_hidden": w > 0 and batch / data_rate <= compute + crf_s,
        }

    splits = {
        "gain_batch_1": split(1, b1, 0.0, rate[f"gain_workers_{w}"]),
        f"gain_batch_{BATCHED_GAIN}": split(BATCHED_GAIN, bb, 0.0, rate[f"gain_workers_{w}"]),
        "sec_batch_15": split(PAPER["sec_batch"], fb, crf, rate[f"sec_workers_{w}"]),
    }
    hours = {
        "gain_batch_1": PAPER["gain_epochs"] * n * splits["gain_batch_1"]["step"] / 3600,
        f"gain_batch_{BATCHED_GAIN}": PAPER["gain_epochs"]
        * (n // BATCHED_GAIN)
        * splits[f"gain_batch_{BATCHED_GAIN}"]["step"]
        / 3600,
        "seeds": n * seed_img / 3600,
        "sec": PAPER["sec_iterations"] * splits["sec_batch_15"]["step"] / 3600,
        "evaluate": PAPER["val_images"] * eval_img / 3600,
    }
    rest = hours["seeds"] + hours["sec"] + hours["evaluate"]
    totals = {
        "gain_batch_1": hours["gain_batch_1"] + rest,
        f"gain_batch_{BATCHED_GAIN}": hours[f"gain_batch_{BATCHED_GAIN}"] + rest,
    }
    return {"voc_paper_scale_hours": totals, "voc_stage_hours": hours, "voc_step_split_s": splits}


def crf_sizing(m: dict, fb_per_step: float, infer_per_image: float) -> dict:
    """CRF processes that keep SEC's step from being CRF-bound (15 CRFs in at most one forward-backward)
    and keep the evaluation's full-resolution CRFs up with inference."""
    per_process = m["crf41_per_s"]["1"]
    full_s = m["eval_s"]["crf_one_inline"]
    need = math.ceil(PAPER["sec_batch"] / (per_process * fb_per_step))
    return {
        "crf41_per_s_per_process": per_process,
        "crf_full_s_per_crf": full_s,
        "sec_processes_needed": need,
        "sec_crf_bound_even_at_15": need > PAPER["sec_batch"],
        "eval_processes_needed": math.ceil(full_s / infer_per_image),
    }


def gpu_estimate(m: dict, flops: dict) -> dict:
    """Hours per stage on an ASSUMED GPU: device time from counted FLOPs at ASSUMED sustained TFLOP/s, CPU
    time from the per-core costs measured here spread over the host's cores; each stage takes the larger.
    GAIN at batch 1 is left out: it is latency-bound, which FLOPs cannot tell."""
    n, val, tf = PAPER["train_images"], PAPER["val_images"], ASSUMED["sustained_tflops"] * 1e3
    cores = ASSUMED["host_cores"] - 1  # one for the training process
    rate = m["decode_images_per_s"]
    clf, sec = flops["classifier_gflops_321"], flops["largefov_gflops_321"]
    dec, dec_sec = 1 / rate["gain_workers_0"], 1 / rate["sec_workers_0"]
    crf41, crf_full = 1 / m["crf41_per_s"]["1"], m["eval_s"]["crf_one_inline"]
    post = m["seeds_main_process_s_per_image"]
    images = PAPER["gain_epochs"] * n
    sec_gpu = PAPER["sec_batch"] * 3 * sec / tf  # backward ~ 2 forwards
    # SEC's CRF: exact on the GPU (auto's choice on CUDA) from counted FLOPs, or the lattice in CPU processes
    exact_gpu = exact_crf_gflops(PAPER["sec_batch"], PAPER["classes"], 41 * 41) / (
        ASSUMED["fp32_tflops"] * 1e3
    )
    lattice_wait = crf41 * math.ceil(PAPER["sec_batch"] / min(PAPER["sec_batch"], cores))
    sec_hours = {
        "exact": max(sec_gpu + exact_gpu, PAPER["sec_batch"] * dec_sec / cores),
        "lattice": max(sec_gpu + lattice_wait, PAPER["sec_batch"] * (crf41 + dec_sec) / cores),
    }
    sec_hours = {k: PAPER["sec_iterations"] * v / 3600 for k, v in sec_hours.items()}
    hours = {
        f"gain_batch_{BATCHED_GAIN}": max(images * 3 * clf * (1 + 1.5) / tf, images * dec / cores) / 3600,
        "seeds": max(n * 2 * clf / tf + n * post, n * dec / cores) / 3600,  # flip: two forwards
        "sec": sec_hours["exact"],
        "evaluate": max(val * sec / tf, val * crf_full / cores) / 3600,
    }
    return {
        "stage_hours": hours,
        "total_hours": sum(hours.values()),
        "sec_step_gpu_s": sec_gpu,
        "sec_crf_exact_gpu_s": exact_gpu,
        "sec_hours_by_crf": sec_hours,
        "assumed": ASSUMED,
        "note": "an estimate from FLOPs and assumptions, not a measurement",
    }


def multi_gpu(stage_hours: dict) -> dict:
    """torchrun on N GPUs: GAIN and SEC split the papers' image count over the ranks (per-rank batch kept,
    so the global batch grows N-fold) at ASSUMED ddp_efficiency; seeds and evaluation run in one process."""
    eff, batched = ASSUMED["ddp_efficiency"], f"gain_batch_{BATCHED_GAIN}"
    return {
        str(k): stage_hours[batched] / (k * eff)
        + stage_hours["sec"] / (k * eff)
        + stage_hours["seeds"]
        + stage_hours["evaluate"]
        for k in (1, 2, 4, 8)
    }


def start_workers(pool: CRFPool) -> None:
    """Wait until every worker of a fresh pool has started (spawned workers import their modules first):
    sleeping tasks keep the early workers busy until each has taken one."""
    if pool is not None and pool.processes:
        pool._pool.map(time.sleep, [0.5] * pool.processes, chunksize=1)


def paper_scale(params, rt, *, quick: bool) -> dict:
    """Every measurement, the projection on this device, the CRF pool sizing and (without a GPU) the
    estimate; keys as reports/benchmarks.json holds them."""
    s = setup_for(rt.device, quick=quick, seeds_batch=params.runtime.seeds_batch_size)
    cuda = rt.device.type == "cuda"
    index = voc_index()
    cores = len(os.sched_getaffinity(0))
    # CRF processes: the configured ones on the CPU; on a GPU machine what its cores allow (the report says
    # to set runtime.crf_workers to that), as SEC's 15 CRFs per step and evaluation need them.
    crf = max(params.runtime.crf_workers, 1, min(PAPER["sec_batch"], cores - 1) if cuda else 0)
    table = sorted({n for n in (1, 2, 4, 8, 15, cores - 1, cores) if 1 <= n <= min(cores, 15)} | {crf})
    sizes = {"321": 321, "measured": s.input_size}
    flops = {
        f"{name}_gflops_{tag}": value
        for name, build in (
            ("classifier", lambda: Classifier("vgg16", 20)),
            ("largefov", lambda: LargeFOV("vgg16", 21)),
        )
        for tag, value in forward_gflops(build, sizes).items()
    }
    m, section_s, gpu = {}, {}, {}

    def section(name: str, fn):
        print(f"[paper-scale] {name} ...", flush=True)
        start = time.perf_counter()
        res, *rest = fn()
        gpu[name] = res.pop("gpu", None)
        m.update(res)
        section_s[name] = time.perf_counter() - start
        print(f"[paper-scale] {name}: {section_s[name]:.1f} s", flush=True)
        return rest[0] if rest else None

    trainee = section("gain", lambda: measure_gain(params, rt, s, index))
    section("seeds", lambda: (measure_seeds(trainee.model.classifier.eval(), params, rt, s, index),))
    segmenter = section(
        "sec", lambda: measure_sec(params, rt, s, index, sorted({params.runtime.crf_workers or 1, crf}))
    )
    section("crf", lambda: (measure_crf(params, s, table, index, rt.device),))
    section("evaluate", lambda: (measure_eval(segmenter.eval(), params, rt, s, index, crf),))
    section("decode", lambda: (measure_decode(params, rt, s, index),))
    sec_crf = train_crf_backend("auto", rt.device)
    proj = project(m, s, flops, crf, sec_crf)
    est = gpu_estimate(m, flops)
    fb = proj["voc_step_split_s"]["sec_batch_15"]["forward_backward"] if cuda else est["sec_step_gpu_s"]
    return {
        **proj,
        "gpu_measured": cuda,
        "gpu_name": torch.cuda.get_device_name(rt.device) if cuda else None,
        "gpu_utilisation": gpu if cuda else None,
        "voc_multi_gpu_hours": multi_gpu(proj["voc_stage_hours"] if cuda else est["stage_hours"]),
        "gpu_estimate": None if cuda else est,
        "crf_sizing": crf_sizing(m, fb, m["eval_s"]["inference"] / s.eval_images),
        "paper_scale_setup": {
            **dataclasses.asdict(s),
            "paper": PAPER,
            "batched_gain": BATCHED_GAIN,
            "label_pattern": LABEL_PATTERN,
            "flops": flops,
            "crf_processes": crf,
            "sec_train_crf": sec_crf,
            "crf_workers_configured": params.runtime.crf_workers,
            "loader_workers": m["loader_workers"],
            "deterministic": params.deterministic,
            "amp_bf16": rt.amp,
            "channels_last": rt.channels_last,
        },
        "paper_scale_measured": m,
        "paper_scale_section_s": section_s,
    }


# What --paper-scale writes into reports/benchmarks.json (the default run keeps these and replaces the rest).
KEYS = (
    "voc_paper_scale_hours",
    "voc_stage_hours",
    "voc_step_split_s",
    "gpu_measured",
    "gpu_name",
    "gpu_utilisation",
    "voc_multi_gpu_hours",
    "gpu_estimate",
    "crf_sizing",
    "paper_scale_setup",
    "paper_scale_measured",
    "paper_scale_section_s",
    "paper_scale_run",
)
