"""Backbones, the GAIN classifier (trunk + head, called explicitly) and the SEC segmentation net.

Models expose `features(x)` and `head(f)` so Grad-CAM can differentiate the class score with respect to
the trunk's last features with `torch.autograd.grad` (no module hooks, which break on in-place ReLU).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallTrunk(nn.Sequential):
    """A fast CPU backbone: output stride 8, 128 channels (14x14 at 112x112 input)."""

    out_channels = 128

    def __init__(self):
        super().__init__(
            _conv_bn(3, 24, stride=2),  # /2
            _conv_bn(24, 32),
            nn.MaxPool2d(2),  # /4
            _conv_bn(32, 64),
            _conv_bn(64, 64),
            nn.MaxPool2d(2),  # /8
            _conv_bn(64, 128),
            _conv_bn(128, 128, dilation=2),
        )


def _load_weights(module: nn.Module, weights: str) -> None:
    if weights in ("none", "imagenet"):
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weights file not found (params weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not set(state) & set(module.state_dict()):
        raise ValueError(f"{path}: no parameter of the backbone matched the weights file")
    module.load_state_dict(state, strict=False)


def build_trunk(name: str, weights: str = "none", *, dilated: bool = False) -> tuple[nn.Module, int]:
    """Feature trunk and its channel count.

    vgg16: conv1_1..relu5_3 (attention on conv5_3, before pool5, as in GAIN); with `dilated`, DeepLab-LargeFOV
    changes (pool4 stride 1, conv5 dilation 2, 3x3 stride-1 pool5) for output stride 8.
    resnet50: conv1..layer4. `weights`: none | imagenet (torchvision's cache) | path to a state_dict.
    """
    import torchvision

    if name == "small":
        if weights == "imagenet":
            raise ValueError("weights: the small backbone has no ImageNet weights; use none or a path")
        trunk, ch = SmallTrunk(), SmallTrunk.out_channels
    elif name == "vgg16":
        w = torchvision.models.VGG16_Weights.IMAGENET1K_V1 if weights == "imagenet" else None
        feats = torchvision.models.vgg16(weights=w).features
        layers = list(feats.children())[:30]  # up to relu5_3
        if dilated:
            for i in (4, 9, 16):  # pool1-3 as in DeepLab: 3x3, stride 2, pad 1 (321 -> 161 -> 81 -> 41)
                layers[i] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            layers[23] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)  # pool4, stride 1
            for i in (24, 26, 28):  # conv5_x dilation 2
                layers[i].dilation, layers[i].padding = (2, 2), (2, 2)
            layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))  # pool5, stride 1
        trunk, ch = nn.Sequential(*layers), 512
    elif name == "resnet50":
        w = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if weights == "imagenet" else None
        net = torchvision.models.resnet50(weights=w)
        trunk = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        ch = 2048
    else:
        raise ValueError(f"backbone: unknown {name!r}; choose small, vgg16 or resnet50")
    _load_weights(trunk, weights)
    return trunk, ch


class Classifier(nn.Module):
    """Multi-label classifier: feats = trunk(x) (B, K, h, w); logits = head(feats) (B, C-1), GAP + linear."""

    def __init__(self, backbone: str, num_classes: int, weights: str = "none"):
        super().__init__()
        self.trunk, ch = build_trunk(backbone, weights)
        self.fc = nn.Linear(ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Backbone at lr, the new classification layer at 10x lr."""
        return [
            {"params": list(self.trunk.parameters()), "lr": lr, "weight_decay": weight_decay},
            {"params": list(self.fc.parameters()), "lr": 10 * lr, "weight_decay": weight_decay},
        ]


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

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """SEC's multipliers: trunk/fc6/fc7 x1; fc8 weights x10, fc8 bias x20 (no decay on biases)."""
        base = list(self.trunk.parameters()) + list(self.fc6.parameters()) + list(self.fc7.parameters())
        return [
            {"params": base, "lr": lr, "weight_decay": weight_decay, "lr_mult": 1},
            {"params": [self.fc8.weight], "lr": 10 * lr, "weight_decay": weight_decay, "lr_mult": 10},
            {"params": [self.fc8.bias], "lr": 20 * lr, "weight_decay": 0.0, "lr_mult": 20},
        ]
