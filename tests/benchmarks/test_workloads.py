"""The benchmarks compare like with like, at params.yaml's settings on the CPU in float32: the public pass
structure computes GAIN(differentiable=False)'s loss and gradients, and one attention pass per class gives the
batched seed pass's maps."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import workloads as wl
from benchmarks.suite import per_class
from gain.cam.model import Classifier
from gain.runtime.codebase import REPO
from gain.runtime.device import setup_runtime
from gain.runtime.loaders import collate
from gain.runtime.params import load_params
from gain.seeds.extract import image_attention
from tests.tensor_utils import single_thread  # noqa: F401 (autouse fixture)

PARAMS = load_params(REPO / "params.yaml")
NUM_FG = PARAMS.data.synthetic.num_classes


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([q.grad.flatten() for q in model.parameters()])


def test_public_pass_structure_computes_the_detached_gain_step():
    g, rt = PARAMS.gain, setup_runtime("cpu")
    batch = collate(wl.synthetic_items(g.batch_size, size=g.input_size, num_fg=NUM_FG, seed=PARAMS.seed))
    assert batch["label"].sum(dim=1).max() >= 2  # several class ranks: several hooked backwards
    trainees = wl.build_trainees(g, NUM_FG, rt, seed=PARAMS.seed, names=("gain", "gain_detached", "public"))
    for step in wl.step_fns(trainees, batch, g, rt).values():  # the steps the benchmark times
        step()
    got = {k: grads(t.model) for k, t in trainees.items()}  # the update's gradients (left after the step)
    scale = got["gain_detached"].abs().max()
    assert (got["public"] - got["gain_detached"]).abs().max() / scale < 1e-4
    # The comparison can tell the semantics apart: differentiable Grad-CAM weights change the gradients.
    assert g.grad_weights == "differentiable"
    assert (got["gain"] - got["gain_detached"]).abs().max() / scale > 1e-3


def test_one_attention_pass_per_class_gives_the_batched_maps():
    rt, kw = setup_runtime("cpu"), {"batch_size": 8, "flip": PARAMS.seeds.flip}
    items = wl.synthetic_items(16, size=PARAMS.gain.input_size, num_fg=NUM_FG, seed=PARAMS.seed + 1)
    torch.manual_seed(PARAMS.seed)
    classifier = Classifier(PARAMS.gain.backbone, NUM_FG, weights="none", head=PARAMS.gain.head).eval()
    batched = [(maps, classes) for _, maps, classes in image_attention(classifier, items, rt, **kw)]
    one_per_class = per_class(classifier, items, rt, **kw)
    assert max(len(c) for _, c in batched) >= 2  # images with several classes, which per class takes apart
    for (ma, ca), (mb, cb) in zip(batched, one_per_class, strict=True):
        assert np.array_equal(ca, cb) and np.abs(ma - mb).max(initial=0.0) < 1e-4
