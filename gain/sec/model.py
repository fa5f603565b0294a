"""SEC's segmentation network: DeepLab-LargeFOV on a shared trunk, built fresh, from ImageNet or from the
GAIN classifier's trunk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gain.models.backbones import build_trunk
from gain.runtime.checkpoint import load_checkpoint
from gain.runtime.errors import InputError
from gain.runtime.params import SecParams


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV: trunk (output stride 8) + fc6 3x3 dilated + fc7 1x1 + fc8 1x1, dropout 0.5.

    vgg16: fc6 dilation 12 with 1024 channels, 41x41 output at 321 input (SEC). small: the same head with
    256 channels and dilation 4, scaled to its 14x14 output.
    """

    def __init__(self, backbone: str, num_classes: int, weights: str = "none"):
        super().__init__()
        if backbone == "vgg16":
            self.trunk, ch = build_trunk("vgg16", weights, dilated=True)
            width, dilation = 1024, 12
        elif backbone == "small":
            self.trunk, ch = build_trunk("small", weights)
            width, dilation = 256, 4
        else:
            raise ValueError(f"sec.backbone: unknown {backbone!r}; choose small or vgg16")
        self.fc6 = nn.Conv2d(ch, width, kernel_size=3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(width, width, kernel_size=1)
        self.fc8 = nn.Conv2d(width, num_classes, kernel_size=1)
        self.drop = nn.Dropout2d(0.5)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, C, H/8, W/8)."""
        f = self.trunk(x)
        f = self.drop(F.relu(self.fc6(f)))
        f = self.drop(F.relu(self.fc7(f)))
        return self.fc8(f)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """SEC's multipliers (`lr_mult`): trunk/fc6/fc7 x1; fc8 weights x10, fc8 bias x20 (no decay on biases)."""
        base = list(self.trunk.parameters()) + list(self.fc6.parameters()) + list(self.fc7.parameters())
        return [
            {"params": base, "weight_decay": weight_decay, "lr_mult": 1},
            {"params": [self.fc8.weight], "weight_decay": weight_decay, "lr_mult": 10},
            {"params": [self.fc8.bias], "weight_decay": 0.0, "lr_mult": 20},
        ]


def build_sec(p: SecParams, num_classes: int, gain_ckpt: Path | None) -> LargeFOV:
    """LargeFOV on the configured backbone; init: gain (the GAIN classifier's trunk), imagenet or none."""
    model = LargeFOV(p.backbone, num_classes, weights="imagenet" if p.init == "imagenet" else "none")
    if p.init == "gain":
        if gain_ckpt is None or not gain_ckpt.is_file():
            raise InputError(f"{gain_ckpt}: sec.init is 'gain' but the GAIN model is missing")
        state = load_checkpoint(gain_ckpt)
        if state["params"]["backbone"] != p.backbone:
            raise InputError(
                f"sec.init: gain needs sec.backbone == gain.backbone, got {p.backbone!r} and "
                f"{state['params']['backbone']!r}"
            )
        prefix = "classifier.trunk."
        model.trunk.load_state_dict(
            {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
        )
    return model


def load_segmenter(path: Path) -> tuple[LargeFOV, dict]:
    state = load_checkpoint(path)
    p = state["params"]
    model = LargeFOV(p["backbone"], len(state["classes"]), weights="none")
    model.load_state_dict(state["model"])
    return model.eval(), p
