"""Feature trunks shared by both methods (small CPU trunk, VGG16, ResNet-50) and backbone weight loading.

Trunks are plain `nn.Sequential`s that carry a `TrunkSpec` (`trunk.spec`): what they are and the geometry of
their output. The GAIN classifier and the SEC network put their own heads on them, sized from the spec.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gain.runtime.errors import StageError


class WeightsError(StageError):
    """A backbone weights file that is missing or does not fit the network."""


def _conv_bn(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@dataclass(frozen=True)
class TrunkSpec:
    """What a trunk is: how to build it again (`name`, `dilated`) and its output's geometry, which heads and
    resampling read instead of the backbone's name. Model files record it (`record`).

    out_channels: K of its (B, K, h, w) output. stride: input pixels per output cell. align_corners: where
    output cell i sits on the input: on pixel stride * i (True; the grid then spans an input of
    stride * k + 1 pixels corner to corner, as `align_corners=True` resampling assumes), or part of a cell
    inward, near the half-pixel centre stride * (i + 0.5) - 0.5 of an input of stride * k pixels (False).
    native_size: the input side the layout is made for (DeepLab's 321 crop, ImageNet's 224, the small
    trunk's 112).
    """

    name: str
    dilated: bool
    out_channels: int
    stride: int
    align_corners: bool
    native_size: int

    @property
    def native_cells(self) -> int:
        """Output cells along the native input side (41 for DeepLab's 321 at stride 8, 14 for 112)."""
        return math.ceil(self.native_size / self.stride)

    def record(self) -> dict:
        return dataclasses.asdict(self)


def check_recorded(trunk: nn.Module, recorded: dict, source: str | Path) -> None:
    """Raise WeightsError, naming `source`, when a trunk rebuilt from a model file is not the one the file
    records (any recorded field of its `TrunkSpec` differs)."""
    built = trunk.spec.record()
    differ = {k: v for k, v in recorded.items() if built.get(k) != v}
    if differ:
        raise WeightsError(
            f"{source}: records the trunk {recorded}, but this code builds {built} for it; rerun the stage "
            "that wrote the file (dvc repro)"
        )


class SmallTrunk(nn.Sequential):
    """A fast CPU backbone: output stride 8, 128 channels (14x14 at 112x112 input). Its stride-2 conv and
    2x2 pools put output cell i on input pixel 8i + 3 (not corner-aligned)."""

    spec = TrunkSpec("small", False, out_channels=128, stride=8, align_corners=False, native_size=112)

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
        raise WeightsError(f"{path}: backbone weights file not found (params gain.weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not set(state) & set(module.state_dict()):
        raise WeightsError(f"{path}: no parameter of the backbone matched the weights file")
    module.load_state_dict(state, strict=False)


def torchvision_model(name: str, imagenet: bool) -> nn.Module:
    """torchvision's vgg16 / resnet50, with its ImageNet weights when asked (from torch's hub cache, which
    torchvision fills by downloading); a failed load names the cache folder to fill by hand."""
    import torchvision

    builders = {
        "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
        "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    }
    build, weights = builders[name]
    if not imagenet:
        return build(weights=None)
    try:
        return build(weights=weights)
    except Exception as e:  # no network, a truncated download, a proxy error page ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"ImageNet weights for {name} could not be loaded ({type(e).__name__}: {e}); put "
            f"{Path(weights.url).name} into {cache}, or set the weights param to a state_dict path"
        ) from e


def vgg16_trunk(net: nn.Module, *, dilated: bool = False) -> nn.Sequential:
    """conv1_1..relu5_3 of a torchvision VGG16 (attention on conv5_3, before pool5, as in GAIN): stride 16,
    its 2x2 pools put cell i on pixel 16i + 7.5. With `dilated`, DeepLab-LargeFOV's changes for output
    stride 8: pool1-3 3x3 stride 2 pad 1, pool4 3x3 stride 1, conv5 dilation 2, and a 3x3 stride-1 pool5
    (321 -> 161 -> 81 -> 41 -> 41); the padded pools put cell i on pixel 8i (corner-aligned)."""
    layers = list(net.features.children())[:30]  # up to relu5_3
    if dilated:
        for i in (4, 9, 16):  # pool1-3 as in DeepLab: 3x3, stride 2, pad 1 (321 -> 161 -> 81 -> 41)
            layers[i] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers[23] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)  # pool4, stride 1
        for i in (24, 26, 28):  # conv5_x dilation 2
            layers[i].dilation, layers[i].padding = (2, 2), (2, 2)
        layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))  # pool5, stride 1
    trunk = nn.Sequential(*layers)
    trunk.spec = TrunkSpec(
        "vgg16",
        dilated,
        out_channels=512,
        stride=8 if dilated else 16,
        align_corners=dilated,
        native_size=321 if dilated else 224,
    )
    return trunk


def resnet50_trunk(net: nn.Module) -> nn.Sequential:
    """conv1..layer4 of a torchvision ResNet-50: stride 32, 2048 channels. Its stride-2 layers are all
    padded odd kernels (7x7 pad 3, 3x3 pad 1, and 1x1), so cell i sits on pixel 32i (corner-aligned)."""
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    trunk.spec = TrunkSpec(
        "resnet50", False, out_channels=2048, stride=32, align_corners=True, native_size=224
    )
    return trunk


def decimate_vgg16_fc(
    state: dict[str, torch.Tensor], *, in_channels: int = 512, keep_every: int = 4, spatial_every: int = 3
) -> dict[str, torch.Tensor]:
    """DeepLab's vgg16_20M surgery: VGG16's fully connected fc6/fc7 as LargeFOV's convolutions.

    state: a torchvision VGG16 state_dict (classifier.0 = fc6 (4096, 512*7*7), classifier.3 = fc7
    (4096, 4096)). fc6 becomes a conv (4096, 512, 7, 7), decimated - every `spatial_every`-th kernel tap
    (rows/columns 0, 3, 6: a 3x3 kernel, whose dilation 12 at stride 8 spans the 7x7 window at stride 32
    that fc6 saw) and every `keep_every`-th filter (0, 4, 8, ...: 1024); fc7 keeps the same every-4th
    outputs and, as inputs, the fc6 filters that were kept (1024 x 1024, 1x1). DeepLab (Chen et al., ICLR
    2015, Sec. 3.1 and 4.1) subsamples "by simple decimation"; the SSD authors' reduced VGG16 followed the
    same recipe. -> {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}.
    """
    try:
        w6, b6 = state["classifier.0.weight"], state["classifier.0.bias"]
        w7, b7 = state["classifier.3.weight"], state["classifier.3.bias"]
    except KeyError as e:
        raise WeightsError(
            f"VGG16 state_dict has no {e.args[0]!r} (fc6 = classifier.0, fc7 = classifier.3)"
        ) from e
    out6, flat = w6.shape
    k = round((flat / in_channels) ** 0.5)
    if in_channels * k * k != flat or w7.shape != (w7.shape[0], out6) or b6.shape != (out6,):
        raise WeightsError(
            f"VGG16 fc6 {tuple(w6.shape)} / fc7 {tuple(w7.shape)} do not fit {in_channels}-channel "
            "k x k features followed by fc7 on fc6's outputs"
        )
    keep = slice(None, None, keep_every)
    tap = slice(None, None, spatial_every)
    conv6 = w6.reshape(out6, in_channels, k, k)[keep, :, tap, tap]
    return {
        "fc6.weight": conv6.contiguous(),
        "fc6.bias": b6[keep].contiguous(),
        "fc7.weight": w7[keep, keep][:, :, None, None].contiguous(),
        "fc7.bias": b7[keep].contiguous(),
    }


def vgg16_fc_head(net: nn.Module) -> tuple[nn.Sequential, int]:
    """VGG16's own classifier on conv5_3 features, for the GAIN stream on VOC (`gain.head: vgg_fc`): pool5,
    the 7x7 adaptive average pool torchvision uses, fc6 and fc7 with their ReLU and dropout, taken from
    `net` (so ImageNet's when `net` has them). -> (the layers, 4096 output features); the class layer
    (fc8) is the classifier's own."""
    fc6_fc7 = list(net.classifier.children())[:6]  # fc6, relu, dropout, fc7, relu, dropout
    return nn.Sequential(nn.MaxPool2d(2, 2), net.avgpool, nn.Flatten(1), *fc6_fc7), fc6_fc7[3].out_features


def build_vgg16_with_fc(weights: str = "none") -> tuple[nn.Sequential, nn.Sequential, int]:
    """`vgg16_trunk` and `vgg16_fc_head` of one torchvision VGG16 (one load serves both): (trunk, fc
    layers, fc width). `weights` as in `build_trunk`; a state_dict path fills the trunk only."""
    net = torchvision_model("vgg16", weights == "imagenet")
    trunk = vgg16_trunk(net)
    _load_weights(trunk, weights)
    return (trunk, *vgg16_fc_head(net))


def build_trunk(name: str, weights: str = "none", *, dilated: bool = False) -> nn.Sequential:
    """Feature trunk (with its `spec`).

    small: `SmallTrunk` (output stride 8 either way). vgg16: `vgg16_trunk` (dilated: DeepLab-LargeFOV's
    output stride 8). resnet50: conv1..layer4 (no dilated form). `weights`: none | imagenet (torchvision's
    cache) | path to a state_dict (of the trunk).
    """
    if name == "small":
        if weights == "imagenet":
            raise ValueError("weights: the small backbone has no ImageNet weights; use none or a path")
        trunk = SmallTrunk()
    elif name == "vgg16":
        trunk = vgg16_trunk(torchvision_model("vgg16", weights == "imagenet"), dilated=dilated)
    elif name == "resnet50":
        if dilated:
            raise ValueError(
                "backbone: 'resnet50' has no output-stride-8 (dilated) form; choose small or vgg16"
            )
        trunk = resnet50_trunk(torchvision_model("resnet50", weights == "imagenet"))
    else:
        raise ValueError(f"backbone: unknown {name!r}; choose small, vgg16 or resnet50")
    _load_weights(trunk, weights)
    return trunk


def build_largefov_trunk(name: str, weights: str = "none") -> tuple[nn.Sequential, dict | None]:
    """The output-stride-8 trunk DeepLab-LargeFOV sits on (`build_trunk(dilated=True)`) and, where the
    weights bring them, fc6/fc7 for its head: ImageNet VGG16's fully connected layers, decimated
    (`decimate_vgg16_fc`, DeepLab's vgg16_20M), from the same single load. Else (trunk, None)."""
    if name == "vgg16" and weights == "imagenet":
        net = torchvision_model("vgg16", True)
        return vgg16_trunk(net, dilated=True), decimate_vgg16_fc(net.state_dict())
    return build_trunk(name, weights, dilated=True), None
