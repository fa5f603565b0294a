"""SEC's segmentation network: DeepLab-LargeFOV on a shared trunk, built fresh, from ImageNet or from the
GAIN classifier's trunk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gain.cam.model import read_gain_record, trunk_state
from gain.models.backbones import build_largefov_trunk, check_recorded
from gain.runtime.checkpoint import CheckpointError, load_checkpoint
from gain.runtime.errors import InputError
from gain.runtime.params import SecParams

# DeepLab-LargeFOV's fc6 on VGG16: dilation 12 on the 41x41 grid of its 321 crop, so the 3x3 kernel spans
# 24 of 41 cells (the 7x7 window at stride 32 that VGG16's fc6 saw), 1024 channels for 512 in.
DEEPLAB_DILATION, DEEPLAB_CELLS, WIDTH_PER_CHANNEL = 12, 41, 2


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV as SEC trains it (training/train.prototxt): trunk (output stride 8) -> pool5a (3x3
    average, stride 1, pad 1) -> fc6 (3x3 dilated) -> ReLU -> dropout 0.5 -> fc7 (1x1) -> ReLU -> dropout
    0.5 -> fc8 (1x1, N(0, 0.01) weights, zero bias). Dropout is element-wise (Caffe's Dropout layer).

    The head is sized from the trunk's spec (gain.models.backbones.TrunkSpec): fc6/fc7 twice the trunk's
    channels wide, fc6's dilation DeepLab's 12 scaled to the trunk's output grid at its native input, so
    the kernel spans the same share of the image. vgg16: 1024 channels, dilation 12, 41x41 output at 321
    input (SEC); weights="imagenet" starts the trunk from ImageNet VGG16 and fc6/fc7 from its decimated
    fully connected layers (DeepLab's vgg16_20M), so only fc8 is random. small: 256 channels and dilation 4
    on its 14x14 output at 112.

    `align_corners` (the trunk's): where the output cells sit on the input. DeepLab's padded 3x3 stride-2
    pools put cell i on input pixel 8i, so at its 8k+1 input sizes (321 -> 41) the grid spans the image
    corner to corner, as SEC's zooms assume (True). The small trunk's stride-2 conv and 2x2 pools put cell i
    on pixel 8i + 3, the half-pixel convention of an 8k input (False). Resampling between the input and the
    output grid (cues, the CRF's image, the test-time probabilities) follows it.
    """

    def __init__(self, backbone: str, num_classes: int, weights: str = "none"):
        super().__init__()
        self.trunk, fc_state = build_largefov_trunk(backbone, weights)
        spec = self.trunk.spec
        if spec.stride != 8:
            raise ValueError(
                f"sec.backbone: {backbone!r} runs at output stride {spec.stride}, LargeFOV needs 8"
            )
        self.align_corners = spec.align_corners
        ch, width = spec.out_channels, WIDTH_PER_CHANNEL * spec.out_channels
        dilation = round(DEEPLAB_DILATION * spec.native_cells / DEEPLAB_CELLS)
        # Caffe's AVE pooling with pad divides by the full 3x3 window (count_include_pad, the default here).
        self.pool5a = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(ch, width, kernel_size=3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(width, width, kernel_size=1)
        self.fc8 = nn.Conv2d(width, num_classes, kernel_size=1)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)
        if fc_state is not None:
            with torch.no_grad():
                for module, key in ((self.fc6, "fc6"), (self.fc7, "fc7")):
                    module.weight.copy_(fc_state[f"{key}.weight"])
                    module.bias.copy_(fc_state[f"{key}.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, C, H/8, W/8)."""
        f = self.pool5a(self.trunk(x))
        f = self.drop6(F.relu(self.fc6(f)))
        f = self.drop7(F.relu(self.fc7(f)))
        return self.fc8(f)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """SEC's Caffe multipliers (`lr_mult`, `decay_mult`): every convolution's weights x1 with weight
        decay and its bias x2 without; fc8's weights x10 and bias x20 (no decay). BatchNorm's affine
        parameters (the small trunk only; Caffe's VGG has none) train at x1 with decay."""
        conv_biases = {
            id(m.bias)
            for m in [*self.trunk.modules(), self.fc6, self.fc7]
            if isinstance(m, nn.Conv2d) and m.bias is not None
        }
        rest = [*self.trunk.parameters(), *self.fc6.parameters(), *self.fc7.parameters()]
        return [
            {
                "params": [q for q in rest if id(q) not in conv_biases],
                "weight_decay": weight_decay,
                "lr_mult": 1,
            },
            {"params": [q for q in rest if id(q) in conv_biases], "weight_decay": 0.0, "lr_mult": 2},
            {"params": [self.fc8.weight], "weight_decay": weight_decay, "lr_mult": 10},
            {"params": [self.fc8.bias], "weight_decay": 0.0, "lr_mult": 20},
        ]


def build_sec(p: SecParams, num_classes: int, gain_ckpt: Path | None) -> LargeFOV:
    """LargeFOV on the configured backbone; init: gain (the GAIN classifier's trunk, `trunk_state` of the
    GAIN model file), imagenet or none."""
    model = LargeFOV(p.backbone, num_classes, weights="imagenet" if p.init == "imagenet" else "none")
    if p.init == "gain":
        if gain_ckpt is None or not gain_ckpt.is_file():
            raise InputError(f"{gain_ckpt}: sec.init is 'gain' but the GAIN model is missing")
        state = load_checkpoint(gain_ckpt)
        backbone = read_gain_record(state, gain_ckpt)["trunk"]["name"]
        if backbone != p.backbone:
            raise InputError(
                f"sec.init: gain needs sec.backbone == gain.backbone, got {p.backbone!r} and {backbone!r}"
            )
        model.trunk.load_state_dict(trunk_state(state))
    return model


def load_segmenter(path: Path) -> tuple[LargeFOV, dict]:
    """The trained network of a SEC model file (or resume checkpoint), rebuilt on the trunk the file records
    (files written before it was recorded: their params.backbone), and the SEC params it used."""
    state = load_checkpoint(path)
    p = state["params"]
    if "trunk" in state:
        trunk = state["trunk"]
    elif "backbone" in p:
        trunk = {"name": p["backbone"]}
    else:
        raise CheckpointError(f"{path}: records neither its trunk nor params.backbone; rerun the sec stage")
    model = LargeFOV(trunk["name"], len(state["classes"]), weights="none")
    check_recorded(model.trunk, trunk, path)
    model.load_state_dict(state["model"])
    return model.eval(), p
