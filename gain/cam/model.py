"""The GAIN network: a multi-label classifier (trunk + GAP head) and the two streams S_cl and S_am sharing
its weights, run in one `nn.Module.forward` so DDP sees a single call."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from gain.cam.attention import grad_cam, label_pairs, soft_mask
from gain.data.transforms import MEAN, STD
from gain.models.backbones import build_trunk, build_vgg16_with_fc, check_recorded
from gain.runtime.checkpoint import CheckpointError, load_checkpoint
from gain.runtime.params import GainParams

HEADS = ("gap", "vgg_fc")


class Classifier(nn.Module):
    """Multi-label classifier: feats = trunk(x) (B, K, h, w), the map attention is computed on; logits =
    head(feats) (B, C-1). head "gap": global average pooling + a linear layer on the trunk's channels
    (`trunk.spec.out_channels`); "vgg_fc" (vgg16 only): VGG16's pool5, fc6 and fc7 (ImageNet's with
    `weights: imagenet`) + a new linear class layer."""

    def __init__(self, backbone: str, num_classes: int, weights: str = "none", head: str = "gap"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head: {head!r} is not one of {HEADS}")
        self.head_name = head
        if head == "vgg_fc":
            if backbone != "vgg16":
                raise ValueError(f"head vgg_fc: needs the vgg16 backbone, got {backbone!r}")
            self.trunk, self.fc_layers, ch = build_vgg16_with_fc(weights)
        else:
            self.trunk, self.fc_layers = build_trunk(backbone, weights), None
            ch = self.trunk.spec.out_channels
        self.fc = nn.Linear(ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        if self.fc_layers is None:
            return self.fc(feats.mean(dim=(2, 3)))
        return self.fc(self.fc_layers(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The backbone (and VGG16's fc6/fc7) at the base learning rate, the new class layer at 10x."""
        base = list(self.trunk.parameters())
        if self.fc_layers is not None:
            base += list(self.fc_layers.parameters())
        return [
            {"params": base, "weight_decay": weight_decay, "lr_mult": 1},
            {"params": list(self.fc.parameters()), "weight_decay": weight_decay, "lr_mult": 10},
        ]


@contextmanager
def bn_eval(module: nn.Module, enabled: bool):
    """Temporarily put BatchNorm layers in eval mode (masked batch neither uses nor updates batch stats)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if enabled:
        for m in bns:
            m.eval()
    try:
        yield
    finally:
        if enabled:
            for m in bns:
                m.train()


@contextmanager
def keep_bn_stats(module: nn.Module):
    """BatchNorm layers in training mode normalise with the batch's own statistics inside the block but leave
    running_mean, running_var and num_batches_tracked untouched: the masked batch I* must not move the
    running statistics, which describe real images only (inference uses them). Done by switching off
    track_running_stats, so nothing is written (a restore afterwards would bump the buffers' versions under
    a graph that, in eval mode, saved them for backward)."""
    bns = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


class GAIN(nn.Module):
    """S_cl and S_am with shared weights.

    forward(x (B,3,H,W), labels (B,C-1)) -> dict: logits (B,C-1); attn (P,h,w); pair_image, pair_class (P,);
    masked_logits (P,C-1) = classifier(I*), I* = I - T(A) (.) (I - erase_value) (Eq. 3).
    erase "mean": erased pixels become 0 in normalised space, the dataset mean colour (the paper's I - T(A) I
    on normalised input); "black": they become black in RGB. am_grad "all": L_am trains every weight through
    both streams (Eq. 6 read literally); "mask": S_am's forward uses detached weights, so L_am changes the
    network only through the attention map T(A) and cannot teach the classifier to score masked images low.
    The keyword defaults are params.yaml's `gain` values (tests/runtime/test_defaults.py keeps them equal); the
    pipeline passes them all (build_gain).
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        sigma: float = 0.7,
        omega: float = 10.0,
        differentiable: bool = True,
        masked_bn: str = "batch",
        erase: str = "mean",
        am_grad: str = "all",
    ):
        super().__init__()
        for name, value, allowed in (
            ("masked_bn", masked_bn, ("batch", "running")),
            ("erase", erase, ("mean", "black")),
            ("am_grad", am_grad, ("all", "mask")),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {allowed}")
        self.am_grad = am_grad
        self.classifier = classifier
        self.sigma, self.omega = sigma, omega
        self.differentiable = differentiable
        self.masked_bn = masked_bn
        self.erase = erase

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *, mine: bool = True) -> dict:
        feats = self.classifier.features(x)
        logits = self.classifier.head(feats)
        pair_image, pair_class = label_pairs(labels)
        if not mine:  # classification only (warm-up): no attention, no masked stream
            return {"logits": logits, "pair_image": pair_image, "pair_class": pair_class}
        attn = grad_cam(feats, logits, pair_image, pair_class, differentiable=self.differentiable)
        out = {"logits": logits, "attn": attn, "pair_image": pair_image, "pair_class": pair_class}
        if pair_image.numel():
            t = soft_mask(attn, x.shape[-2:], sigma=self.sigma, omega=self.omega)
            masked = self.erase_region(x[pair_image], t)
            # BN on I*: "batch" normalises with the masked batch's own statistics, "running" with the real
            # images' running ones; either way only the clean pass above updates the running statistics.
            with bn_eval(self.classifier, self.masked_bn == "running"), keep_bn_stats(self.classifier):
                if self.am_grad == "all":
                    out["masked_logits"] = self.classifier(masked)
                else:  # "mask": L_am reaches the weights only through T(A), not through S_am's own forward
                    frozen = {k: v.detach() for k, v in self.classifier.state_dict(keep_vars=True).items()}
                    out["masked_logits"] = torch.func.functional_call(self.classifier, frozen, (masked,))
            out["masked_images"] = masked
        return out

    def erase_region(self, src: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Eq. 3: I* = I - T (.) (I - erase value). src (P, 3, H, W) normalised, t (P, 1, H, W) in [0, 1]."""
        if self.erase == "black":
            return src - t * (src - _black(src))
        return src - t * src


def _black(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return -mean / std


def build_gain(p: GainParams, num_fg: int) -> GAIN:
    classifier = Classifier(p.backbone, num_fg, weights=p.weights, head=p.head)
    return GAIN(
        classifier,
        sigma=p.sigma,
        omega=p.omega,
        differentiable=p.grad_weights == "differentiable",
        masked_bn=p.masked_bn,
        erase=p.erase,
        am_grad=p.am_grad,
    )


# The attention a GAIN classifier is trained with and read by (gain.cam.attention): Grad-CAM on the trunk's
# output, `Classifier.features`.
CAM = {"method": "grad_cam", "layer": "trunk"}
TRUNK_PREFIX = "classifier.trunk."


def gain_record(model: GAIN) -> dict:
    """What a GAIN model file records beside its weights and params, for `load_classifier` to rebuild the
    classifier and its attention from: the trunk's spec, the head, the CAM and its soft-mask sigma/omega."""
    return {
        "trunk": model.classifier.trunk.spec.record(),
        "head": model.classifier.head_name,
        "cam": {**CAM, "sigma": model.sigma, "omega": model.omega},
    }


def read_gain_record(state: dict, path: Path) -> dict:
    """`gain_record` of a loaded GAIN model file; for a file written before it was recorded, the same read
    from its params (backbone, head or "gap", sigma, omega: Grad-CAM on the undilated trunk then as now).
    A file with neither is refused, naming it."""
    if "trunk" in state:
        return {k: state[k] for k in ("trunk", "head", "cam")}
    p = state.get("params", {})
    if "backbone" not in p:
        raise CheckpointError(
            f"{path}: records neither its trunk nor params.backbone, so it cannot be rebuilt; is it a GAIN "
            "model file? Rerun the gain stage (dvc repro gain)"
        )
    cam = {**CAM, "sigma": p.get("sigma"), "omega": p.get("omega")}
    return {"trunk": {"name": p["backbone"], "dilated": False}, "head": p.get("head", "gap"), "cam": cam}


def trunk_state(state: dict) -> dict[str, torch.Tensor]:
    """The trunk's weights in a loaded GAIN model file, as the trunk's own state_dict (no prefix)."""
    model = state["model"]
    return {k[len(TRUNK_PREFIX) :]: v for k, v in model.items() if k.startswith(TRUNK_PREFIX)}


def load_classifier(path: Path) -> tuple[Classifier, dict]:
    """The trained classifier of a GAIN model file (models/gain/model.pt), rebuilt from what the file
    records (`read_gain_record`), and the GAIN params it used."""
    state = load_checkpoint(path)
    record = read_gain_record(state, path)
    cam = {k: record["cam"].get(k) for k in CAM}
    if cam != CAM:
        raise CheckpointError(f"{path}: records the attention {cam}; this code computes {CAM}")
    trunk = record["trunk"]
    classifier = Classifier(trunk["name"], len(state["classes"]) - 1, weights="none", head=record["head"])
    check_recorded(classifier.trunk, trunk, path)
    prefix = "classifier."
    classifier.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    )
    return classifier.eval(), state["params"]
