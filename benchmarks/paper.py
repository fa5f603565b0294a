"""VOC 2012 at the papers' scale: the full run projected from counted FLOPs over the table WORKLOADS by one
function, `project`.

A stage's step costs its network FLOPs (counted on the meta device) at a sustained rate, plus the work on
its path (SEC's training CRF, seed post-processing), beside the CPU work it needs (decoding, the lattice and
test-time CRFs): in-line that adds to the step, in worker processes it overlaps. On this device the rates
come from the library's own GAIN and SEC steps timed here (VGG16, random weights, the real VOC images in
tests/data; smaller batches on a CPU, QUICK_SIZE with --quick) and the CPU costs are timed here too; without
a GPU the same function projects an ASSUMED GPU from them. `bash benchmarks/gpu_check.sh` runs it on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import workloads as wl
from benchmarks.timing import interleaved, median_s, raw_ms
from gain.cam.model import Classifier, build_gain, gain_record, load_classifier
from gain.cam.train import gain_step_losses
from gain.data.dataset import VOCDataset
from gain.data.transforms import eval_preset, train_preset
from gain.runtime.checkpoint import save_checkpoint
from gain.runtime.layout import StagePaths
from gain.runtime.loaders import collate, loader_workers
from gain.runtime.tracking import NullRun
from gain.sec.crf import CRFParams, CRFPool
from gain.sec.crf_exact import train_crf_backend
from gain.sec.evaluate import submit_crf
from gain.sec.model import LargeFOV
from gain.sec.scale import inference_crf_scale, resolve, train_crf_scale
from gain.sec.train import downscale_images, sec_step_losses
from gain.seeds.extract import image_attention
from stages import seeds as seeds_stage

PAPER = {  # GAIN (Li et al. 2018) and SEC (Kolesnikov & Lampert 2016) on VOC 2012
    "train_images": 10_582, "val_images": 1_449, "gain_epochs": 35, "gain_batch": 1,
    "sec_iterations": 8_000, "sec_batch": 15, "input_size": 321, "classes": 21,
}  # fmt: skip
ASSUMED = {  # for the GPU estimate and the multi-GPU projection only: not measured
    "gpu": "H100/H200-class, bf16",
    "sustained_tflops": 400.0,  # ~40% of an H100 SXM's 989 dense bf16 TFLOP/s on VGG16-sized convolutions
    "host_cores": 16,  # CPU cores per GPU (DataLoader workers, CRF processes, the main process)
    "ddp_efficiency": 0.9,  # per-GPU throughput kept under torchrun (NVLink all-reduce of 15-20M params)
    "fp32_tflops": 30.0,  # the exact CRF's float32 matrix products (no TF32): ~45% of an H100 SXM's 67
}
BB = "gain_batch_16"  # the faster GAIN setting projected beside the paper's batch 1 (needs its own lr)
LABEL_PATTERN = (1, 2, 1, 2, 1, 1, 3, 1) * 2  # labels per image: VOC's mean 1.5 over any 2, 4, 8 or 16
QUICK_SIZE = 129
N, EPOCHS = PAPER["train_images"], PAPER["gain_epochs"]
# stage -> (steps at the papers' scale, images per step, network, its forward passes' worth of FLOPs per image
# (a backward ~ 2 forwards; GAIN a forward and a masked forward per label, 1.5 labels; seeds flip), the timed
# row that gives the rate, work on the step's path, CPU work per image)
SEC = (PAPER["sec_iterations"], PAPER["sec_batch"])
WORKLOADS = {
    "gain_batch_1": (EPOCHS * N, 1, "classifier", 7.5, "gain_batch1", None, "decode_gain"),
    BB: (EPOCHS * (N // 16), 16, "classifier", 7.5, "gain_batched", None, "decode_gain"),
    "seeds": (N, 1, "classifier", 2, "gain_batched", "seed_post", "decode_gain"),
    "sec": (*SEC, "largefov", 3, "sec_network", "sec_crf", "decode_sec"),
    "evaluate": (PAPER["val_images"], 1, "largefov", 1, "sec_network", None, "crf_full"),
}


def project(gflops: dict, rates: dict, path: dict, cpu: dict, overlapped: bool) -> tuple[dict, dict]:
    """Each stage of WORKLOADS whose row `rates` holds (GFLOP/s), with `path` and `cpu` seconds per image (the
    CPU work already shared out over its processes) -> (seconds per step as data, network, path and step;
    hours at the papers' counts)."""
    split = {}
    for stage, (_, n, net, passes, row, on_path, work) in WORKLOADS.items():
        if row in rates:
            compute, crf = n * passes * gflops[net] / rates[row], n * path.get(on_path, 0.0)
            data = n * cpu[work]
            step = max(compute + crf, data) if overlapped else compute + crf + data
            split[stage] = {"data": data, "forward_backward": compute, "crf": crf, "step": step}
            split[stage]["data_hidden"] = overlapped and data <= compute + crf
    return split, {k: WORKLOADS[k][0] * v["step"] / 3600 for k, v in split.items()}


def here(m: dict, flops: dict, crf_key: str, crf_processes: int) -> tuple:
    """`project`'s inputs on this device: rates of the timed steps (GAIN's time is linear in the labels: at
    batch 1 the mean of 1 and 2 labels), SEC's CRFs at the 41 x 41 rate of `crf_key` (a process count, or
    exact), decoding shared by the loader workers, the test-time CRFs by `crf_processes`."""
    per, w = m["seconds_per_image"], m["loader_workers"]
    clf, sec = 7.5 * flops["classifier_gflops_measured"], 3 * flops["largefov_gflops_measured"]
    rates = {"gain_batch1": clf / statistics.fmean([per["gain_batch1_1label"], per["gain_batch1_2labels"]])}
    rates |= {"gain_batched": clf / per["gain_batched"], "sec_network": sec / per["sec_network"]}
    path = {"seed_post": m["seeds_main_process_s_per_image"], "sec_crf": 1 / m["crf41_per_s"][crf_key]}
    cpu = {"decode_gain": per["decode_gain"] / max(w, 1), "decode_sec": per["decode_sec"] / max(w, 1)}
    return rates, path, cpu | {"crf_full": per["crf_full"] / crf_processes}, w > 0


def on_gpu(m: dict) -> tuple:
    """`project`'s inputs on the ASSUMED GPU: every network at the sustained rate, but not GAIN at batch 1
    (latency-bound, which FLOPs cannot tell); SEC's CRF exact on the GPU (auto's choice on CUDA) from its
    counted FLOPs; the CPU work timed here shared by the host's cores."""
    rate, cores = ASSUMED["sustained_tflops"] * 1e3, ASSUMED["host_cores"] - 1
    exact = exact_crf_gflops(1, PAPER["classes"], 41 * 41) / (ASSUMED["fp32_tflops"] * 1e3)
    path = {"seed_post": m["seeds_main_process_s_per_image"], "sec_crf": exact}
    cpu = {k: m["seconds_per_image"][k] / cores for k in ("decode_gain", "decode_sec", "crf_full")}
    return {"gain_batched": rate, "sec_network": rate}, path, cpu, True


def exact_crf_gflops(batch: int, classes: int, cells: int, iterations: int = CRFParams().iterations) -> float:
    """Counted GFLOPs of gain.sec.crf_exact on one batch: per iteration two (C, N) x (N, N) products per
    image (2 C N^2 multiply-adds each), plus the bilateral kernels' colour products (2 x 3 N^2 per image)."""
    return batch * (iterations * 2 * 2 * classes * cells**2 + 2 * 3 * cells**2) / 1e9


def projection(m: dict, s: dict, flops: dict, sec_crf: str, cuda: bool) -> dict:
    """This device's hours and step split; without a GPU the ASSUMED GPU's; torchrun on N GPUs (GAIN and SEC
    split the images over the ranks at ASSUMED ddp_efficiency, seeds and evaluation in one process); the CRF
    processes that keep SEC's 15 CRFs within one GPU forward-backward and evaluation's CRFs up with inference."""
    at_321 = {net: flops[f"{net}_gflops_321"] for net in ("classifier", "largefov")}
    procs = s["crf_processes"]
    split, hours = project(at_321, *here(m, flops, "exact" if sec_crf == "exact" else str(procs), procs))
    gsplit, gpu = project(at_321, *on_gpu(m))
    fb = {"sec_step_gpu_s": gsplit["sec"]["forward_backward"], "sec_crf_exact_gpu_s": gsplit["sec"]["crf"]}
    est = {"stage_hours": gpu, "total_hours": sum(gpu.values()), **fb, "assumed": ASSUMED}
    h, rate, full = hours if cuda else gpu, m["crf41_per_s"]["1"], m["seconds_per_image"]["crf_full"]
    need = math.ceil(PAPER["sec_batch"] / (rate * (split if cuda else gsplit)["sec"]["forward_backward"]))
    crf = {"crf41_per_s_per_process": rate, "crf_full_s_per_crf": full, "sec_processes_needed": need}
    crf |= {"sec_crf_bound_even_at_15": need > PAPER["sec_batch"]}
    crf["eval_processes_needed"] = math.ceil(full / split["evaluate"]["forward_backward"])
    rest, rest_gpu = hours["seeds"] + hours["sec"] + hours["evaluate"], h["seeds"] + h["evaluate"]
    eff = ASSUMED["ddp_efficiency"]
    return {
        "voc_paper_scale_hours": {k: hours[k] + rest for k in ("gain_batch_1", BB)},
        "voc_stage_hours": hours,
        "voc_step_split_s": split,
        "voc_multi_gpu_hours": {str(n): (h[BB] + h["sec"]) / (n * eff) + rest_gpu for n in (1, 2, 4, 8)},
        "gpu_estimate": None if cuda else est,
        "crf_sizing": crf,
    }


# ------------------------------------------------------------------------------------------- timing
def voc_batch(ds: VOCDataset, n: int, counts: tuple[int, ...] = ()) -> dict:
    """n images of `ds` collated; with `counts`, image i labelled with counts[i] distinct classes instead."""
    batch = collate([ds[i % len(ds)] for i in range(n)])
    if counts:
        batch["label"] = torch.zeros(n, PAPER["classes"] - 1)
        for i, k in enumerate(counts):
            batch["label"][i, [(7 * i + 3 * j) % (PAPER["classes"] - 1) for j in range(k)]] = 1.0
    return batch


def step_rows(params, rt, s: dict, index) -> dict:
    """name -> (callable, images per call): GAIN steps at batch 1 with 1 and with 2 labels and batched with
    VOC's labels, SEC's step without its CRF (the constrain loss left out), decoding with the training preset
    at 321 (GAIN's image; SEC's image and seed PNG)."""
    size, ids, masks = s["input_size"], index.splits["weak_train"], wl.VOC_SAMPLE / "SegmentationClass"
    p = dataclasses.replace(params.gain, backbone="vgg16", weights="none", input_size=size)
    torch.manual_seed(params.seed)
    gain, rows = wl.trainee(build_gain(p, PAPER["classes"] - 1), p, rt), {}
    ds = VOCDataset(index, ids, train_preset(size), with_masks=set())
    labels = {"gain_batch1_1label": (1,), "gain_batch1_2labels": (2,)}
    labels["gain_batched"] = LABEL_PATTERN[: s["gain_batch"]]
    for name, counts in labels.items():
        batch = voc_batch(ds, len(counts), counts)
        rows[name] = (lambda b=batch: wl.step(gain, gain_step_losses, b, p, rt=rt), len(counts))
    losses = tuple(t for t in params.sec.losses if t != "constrain")
    q = dataclasses.replace(params.sec, backbone="vgg16", input_size=size, batch_size=s["sec_batch"])
    q = dataclasses.replace(q, losses=losses)
    sec = wl.trainee(LargeFOV("vgg16", PAPER["classes"]), q, rt)
    batch = voc_batch(VOCDataset(index, ids, train_preset(size), mask_root=masks), s["sec_batch"])
    rows["sec_network"] = (lambda: wl.step(sec, sec_step_losses, batch, None, q, rt=rt), s["sec_batch"])
    for name, kw in (("decode_gain", {"with_masks": set()}), ("decode_sec", {"mask_root": masks})):
        data = VOCDataset(index, ids * 4, train_preset(PAPER["input_size"]), **kw)
        rows[name] = (lambda d=data: [d[i] for i in range(len(d))], len(data))
    return rows


def tiny_gain_file(path: Path, params, size: int, classes) -> None:
    """A GAIN model file on the small trunk (a near-free network at `size`) that the seeds stage loads."""
    p = dataclasses.replace(params.gain, backbone="small", weights="none", head="gap", input_size=size)
    model = build_gain(p, len(classes) - 1)
    state = {"model": model.state_dict(), "params": dataclasses.asdict(p), "classes": list(classes)}
    save_checkpoint(path, state | gain_record(model))


def cpu_rows(params, rt, s: dict, index, work: Path) -> dict:
    """name -> (callable, images per call): the seeds stage's run() and the attention pass alone with a
    near-free classifier (beside a VGG16 pass on a CPU their difference, the main process's share, would be
    noise), and SEC's test-time CRF (s = 1) on a full-resolution VOC image, in-line."""
    ids, size = index.splits["weak_train"], s["input_size"]
    paths = StagePaths(gain_model=work / "gain.pt", seeds=work / "seeds", reports=work / "reports")
    tiny_gain_file(paths.gain_model, params, size, index.classes)
    tiny = rt.place(load_classifier(paths.gain_model)[0])
    knobs = dataclasses.replace(params.runtime, vis_images=0, seeds_batch_size=2)
    seeds_params = dataclasses.replace(params, runtime=knobs)
    ds = VOCDataset(index, ids, eval_preset(size), keep_original=True)
    image, rng, inline = ds[0]["orig_image"], np.random.default_rng(params.seed), CRFPool(0)
    probs = np.exp(wl.random_log_probs(rng, (PAPER["classes"], *image.shape[:2])))

    def extract() -> None:  # the stage's summary line and progress bar kept out of the log, every round
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            seeds_stage.run(seeds_params, index, paths=paths, rt=rt, tracker=NullRun())

    def attention() -> int:
        return sum(1 for _ in image_attention(tiny, ds, rt, batch_size=2, flip=params.seeds.flip))

    def crf() -> np.ndarray:
        return submit_crf(inline, image, probs, inference_crf_scale(image.shape[:2])).get()

    rows = {"seeds_extract_small_trunk": extract, "seeds_attention_small_trunk": attention}
    return {k: (f, len(ids)) for k, f in rows.items()} | {"crf_full": (crf, 1)}


def measure(params, rt, s: dict, table: list[int]) -> dict:
    """The rows, interleaved; SEC's training CRFs (41 x 41 x 21, 15 per call on VOC images, params'
    crf_scale) in-line, in pools of `table` processes and exact."""
    index = wl.voc_index()
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as tmp:
        rows = step_rows(params, rt, s, index) | cpu_rows(params, rt, s, index, Path(tmp))
        times = interleaved({k: f for k, (f, _) in rows.items()}, s["rounds"], rt.device, s["warmup"])
    ds = VOCDataset(index, index.splits["weak_train"], eval_preset(PAPER["input_size"]))
    images = downscale_images(voc_batch(ds, PAPER["sec_batch"])["image"], (41, 41))
    rng = np.random.default_rng(params.seed)
    log_probs = wl.random_log_probs(rng, (len(images), PAPER["classes"], 41, 41))
    scale = resolve(params.sec.crf_scale, train_crf_scale, (41, 41))
    rates, raw = wl.crf_rates(images, log_probs, scale, table, rt.device, max(2, s["rounds"]))
    workers = loader_workers(params.runtime.workers, rt.device.type == "cuda")
    per = {k: v / rows[k][1] for k, v in median_s(times).items()}
    small = per["seeds_extract_small_trunk"] - per["seeds_attention_small_trunk"]  # cues, PNGs, scoring
    m = {"seconds_per_image": per, "seeds_main_process_s_per_image": max(small, 0.0)}
    m |= {"crf41_per_s": rates, "loader_workers": workers, "raw_ms": raw_ms(times), "raw_crf41_ms": raw}
    return m


def gflops(build, size: int) -> float:
    """GFLOPs of one image's forward pass at `size`, counted on the meta device (no memory, no time)."""
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        build()(torch.empty(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def paper_scale(params, rt, *, quick: bool) -> dict:
    """The timed rows, the counted FLOPs and the projection; keys as reports/benchmarks.json holds them."""
    cuda, cores = rt.device.type == "cuda", len(os.sched_getaffinity(0))
    s = {"input_size": 321, "gain_batch": 16, "sec_batch": 15, "warmup": 1, "rounds": 3 if quick else 10}
    if not cuda:  # a VGG16 step at 321 takes seconds on a CPU core: smaller batches, fewer rounds
        s |= {"input_size": QUICK_SIZE if quick else 321, "gain_batch": 2, "sec_batch": 1}
        s |= {"warmup": 0, "rounds": 1 if quick else 3}
    # CRF processes: the configured ones on the CPU; on a GPU machine what its cores allow (the report says
    # to set runtime.crf_workers to that), as SEC's 15 CRFs per step and evaluation need them.
    s["crf_processes"] = max(params.runtime.crf_workers, 1, min(PAPER["sec_batch"], cores - 1) if cuda else 0)
    table = {n for n in (1, 2, 4, 8, 15, cores - 1, cores) if 1 <= n <= min(cores, 15)}
    table = sorted(table | {s["crf_processes"]})
    builds = {"classifier": lambda: Classifier("vgg16", 20), "largefov": lambda: LargeFOV("vgg16", 21)}
    sizes = {"321": 321, "measured": s["input_size"]}
    flops = {f"{net}_gflops_{tag}": gflops(b, n) for net, b in builds.items() for tag, n in sizes.items()}
    m = measure(params, rt, s, table)
    sec_crf = train_crf_backend("auto", rt.device)
    setup = {**s, "paper": PAPER, "flops": flops, "sec_train_crf": sec_crf}
    setup |= {"crf_workers_configured": params.runtime.crf_workers, "deterministic": params.deterministic}
    setup |= {"amp_bf16": rt.amp, "channels_last": rt.channels_last}
    return {
        **projection(m, s, flops, sec_crf, cuda),
        "gpu_measured": cuda,
        "gpu_name": torch.cuda.get_device_name(rt.device) if cuda else None,
        "paper_scale_setup": setup,
        "paper_scale_measured": m,
    }


# What --paper-scale writes into reports/benchmarks.json (the default run keeps these and replaces the rest).
KEYS = ("voc_paper_scale_hours", "voc_stage_hours", "voc_step_split_s", "gpu_measured", "gpu_name",
        "voc_multi_gpu_hours", "gpu_estimate", "crf_sizing", "paper_scale_setup",
        "paper_scale_measured", "paper_scale_run")  # fmt: skip
