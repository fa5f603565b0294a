import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torchvision

from gain.cam.model import Classifier
from gain.models import backbones
from gain.models.backbones import (
    SmallTrunk,
    WeightsError,
    build_trunk,
    decimate_vgg16_fc,
    torchvision_model,
    vgg16_trunk,
)
from gain.runtime.loop import sgd
from gain.sec import model as sec_model
from gain.sec.model import LargeFOV
from gain.seeds.saliency import leaf_modules


def assert_backward_reaches_every_parameter(model: torch.nn.Module, out: torch.Tensor) -> None:
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(bool(p.grad.abs().sum() > 0) for p in model.parameters())


def param_ids(groups: list[dict]) -> list[int]:
    return [id(p) for g in groups for p in g["params"]]


# ---------------------------------------------------------------- shapes, forward and backward


def test_classifier_small_shapes_and_backward():
    torch.manual_seed(0)
    clf = Classifier("small", 5).train()
    x = torch.randn(2, 3, 112, 112)
    feats = clf.features(x)
    assert feats.shape == (2, 128, 14, 14)
    logits = clf.head(feats)
    assert logits.shape == (2, 5)
    assert torch.equal(clf(x), logits)  # forward == head(features); deterministic BN batch stats
    assert_backward_reaches_every_parameter(clf, logits)


def test_largefov_small_shapes_and_backward():
    torch.manual_seed(1)
    net = LargeFOV("small", 21).train()
    out = net(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 21, 14, 14)
    assert_backward_reaches_every_parameter(net, out)


def test_largefov_vgg16_output_stride_8_gives_41x41_at_321():
    # SEC / DeepLab-LargeFOV: 321 x 321 input -> 41 x 41 scores.
    net = LargeFOV("vgg16", 21, weights="none").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 321, 321))
    assert out.shape == (1, 21, 41, 41)


def test_classifier_vgg16_features_are_conv5_3_at_stride_16():
    clf = Classifier("vgg16", 20, weights="none").eval()
    with torch.no_grad():
        feats = clf.features(torch.randn(1, 3, 224, 224))
        assert feats.shape == (1, 512, 14, 14)
        assert clf.head(feats).shape == (1, 20)


def test_classifier_resnet50_features_stride_32():
    # Shapes only: a resnet50 backward costs seconds on CPU; the small models cover backward.
    clf = Classifier("resnet50", 20, weights="none").eval()
    with torch.no_grad():
        feats = clf.features(torch.randn(2, 3, 64, 64))
        assert feats.shape == (2, 2048, 2, 2)
        assert clf.head(feats).shape == (2, 20)


def test_classifier_vgg_fc_head_is_vggs_own_fc6_fc7_on_conv5_3(monkeypatch):
    # Stands in for torchvision's ImageNet VGG16 (no download here): a VGG16 with seeded random weights.
    torch.manual_seed(0)
    source = torchvision.models.vgg16(weights=None).eval()
    calls = []

    def fake_torchvision_model(name, imagenet):
        calls.append((name, imagenet))
        return source

    monkeypatch.setattr(backbones, "torchvision_model", fake_torchvision_model)
    clf = Classifier("vgg16", 20, weights="imagenet", head="vgg_fc").eval()
    assert calls == [("vgg16", True)]  # one load serves conv1_1..conv5_3 and fc6/fc7
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = clf.features(x)
        assert feats.shape == (1, 512, 14, 14)  # attention stays on conv5_3, before pool5
        # VGG16's own forward up to fc7 (classifier[:6]), then the new class layer.
        fc7 = source.classifier[:6](torch.flatten(source.avgpool(source.features(x)), 1))
        assert torch.allclose(clf.head(feats), clf.fc(fc7), atol=1e-5)
    assert clf.fc.in_features == 4096 and clf.fc.out_features == 20
    trunk, fc = clf.param_groups(weight_decay=5e-4)
    fc6, fc7 = source.classifier[0], source.classifier[3]
    assert {id(fc6.weight), id(fc7.bias)} <= {id(p) for p in trunk["params"]} and trunk["lr_mult"] == 1
    assert {id(p) for p in fc["params"]} == {id(clf.fc.weight), id(clf.fc.bias)} and fc["lr_mult"] == 10
    assert sorted(param_ids([trunk, fc])) == sorted(id(p) for p in clf.parameters())


def test_vgg_fc_head_needs_vgg16():
    with pytest.raises(ValueError, match="vgg_fc: needs the vgg16 backbone, got 'small'"):
        Classifier("small", 20, head="vgg_fc")
    with pytest.raises(ValueError, match="head: 'fc' is not one of"):
        Classifier("small", 20, head="fc")


# ---------------------------------------------------------------- parameter groups


def test_classifier_param_groups_fc_at_10x():
    clf = Classifier("small", 4)
    groups = clf.param_groups(weight_decay=5e-4)
    assert param_ids(groups) == [id(p) for p in clf.trunk.parameters()] + [id(p) for p in clf.fc.parameters()]
    assert sorted(param_ids(groups)) == sorted(id(p) for p in clf.parameters())  # each once, none left out
    trunk, fc = groups
    assert trunk["lr_mult"] == 1 and fc["lr_mult"] == 10
    assert {id(p) for p in fc["params"]} == {id(clf.fc.weight), id(clf.fc.bias)}
    assert trunk["weight_decay"] == fc["weight_decay"] == 5e-4


def test_largefov_param_groups_sec_multipliers():
    # SEC's train.prototxt: every convolution `param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2
    # decay_mult: 0 }`, fc8-SEC 10 / 20. The small trunk's convolutions have no bias (BatchNorm follows).
    net = LargeFOV("small", 21)
    groups = net.param_groups(weight_decay=5e-4)
    assert sorted(param_ids(groups)) == sorted(id(p) for p in net.parameters())  # each once, none left out
    by_param = {id(p): g for g in groups for p in g["params"]}

    def rule(p):
        return by_param[id(p)]["lr_mult"], by_param[id(p)]["weight_decay"]

    assert rule(net.fc8.weight) == (10, 5e-4) and rule(net.fc8.bias) == (20, 0.0)
    for conv in (net.fc6, net.fc7):
        assert rule(conv.weight) == (1, 5e-4) and rule(conv.bias) == (2, 0.0)
    for p in net.trunk.parameters():  # conv weights and BatchNorm affine parameters
        assert rule(p) == (1, 5e-4)


def test_param_groups_build_an_sgd_optimizer():
    net = LargeFOV("small", 21)
    opt = sgd(net.param_groups(weight_decay=5e-4), lr=1e-3, momentum=0.9)
    assert [g["lr_mult"] for g in opt.param_groups] == [1, 2, 10, 20]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9, 0.9, 0.9]


# ---------------------------------------------------------------- LargeFOV head as in SEC's train.prototxt


def test_pool5a_is_a_3x3_average_that_counts_the_padding():
    # Caffe's AVE pooling with pad 1 divides by the whole 3x3 window: corners 4/9, edges 6/9, inside 1.
    net = LargeFOV("small", 3)
    out = net.pool5a(torch.ones(1, 1, 4, 5))
    assert out.shape == (1, 1, 4, 5)
    expected = torch.tensor([[4, 6, 6, 6, 4], [6, 9, 9, 9, 6], [6, 9, 9, 9, 6], [4, 6, 6, 6, 4]]) / 9
    torch.testing.assert_close(out[0, 0], expected.float())


def test_largefov_forward_is_trunk_pool5a_fc6_fc7_fc8():
    torch.manual_seed(5)
    net = LargeFOV("small", 4).eval()  # eval: dropout is the identity
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        f = torch.nn.functional.avg_pool2d(net.trunk(x), 3, stride=1, padding=1)
        f = torch.relu(net.fc7(torch.relu(net.fc6(f))))
        torch.testing.assert_close(net(x), net.fc8(f))


def test_dropout_is_elementwise_not_channelwise():
    # Caffe's Dropout zeroes single activations; nn.Dropout2d would zero whole channels.
    net = LargeFOV("small", 3).train()
    assert type(net.drop6) is torch.nn.Dropout and type(net.drop7) is torch.nn.Dropout
    assert net.drop6.p == net.drop7.p == 0.5
    torch.manual_seed(0)
    out = net.drop6(torch.ones(1, 64, 8, 8))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept values rescaled by 1 / (1 - p)
    per_channel = (out == 0).flatten(2).float().mean(dim=2)  # (1, 64) dropped share in each channel
    assert ((per_channel > 0) & (per_channel < 1)).all()  # every channel partly kept, partly dropped


def test_fc8_starts_from_n_0_001_with_zero_bias():
    torch.manual_seed(0)
    net = LargeFOV("small", 21)
    assert net.fc8.weight.std().item() == pytest.approx(0.01, rel=0.1)  # 256 x 21 draws
    assert abs(net.fc8.weight.mean().item()) < 0.002
    assert torch.equal(net.fc8.bias, torch.zeros(21))


def geometry_twin(trunk: torch.nn.Module) -> torch.nn.Sequential:
    """The trunk's geometry alone: every conv a 1-channel all-ones conv of the same kernel, stride, padding
    and dilation, every max pool an average pool of the same window; the input gradient of an output cell
    is then its whole receptive field, weighted symmetrically about the cell's centre."""
    mods = []
    for m in leaf_modules(trunk):
        if isinstance(m, torch.nn.Conv2d):
            conv = torch.nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, m.dilation, bias=False)
            torch.nn.init.ones_(conv.weight)
            mods.append(conv)
        elif isinstance(m, torch.nn.MaxPool2d):
            mods.append(torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    return torch.nn.Sequential(*mods)


def bare_vgg16_trunk(dilated: bool) -> torch.nn.Sequential:
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    return vgg16_trunk(SimpleNamespace(features=features), dilated=dilated)


@pytest.mark.parametrize(
    ("make", "size", "offset"),
    [
        (SmallTrunk, 112, 3),
        (lambda: bare_vgg16_trunk(True), 321, 0),
        (lambda: bare_vgg16_trunk(False), 448, 7.5),
    ],
    ids=["small", "vgg16-dilated", "vgg16"],
)
def test_trunk_spec_is_the_measured_geometry(make, size, offset):
    # small: cell i centred on input pixel 8i + 3 (half-pixel grid: 8i + 3.5); dilated vgg16 at 321: on 8i,
    # so the 41 cells span pixels 0..320 corner to corner, the geometry SEC's zooms assume; vgg16 (GAIN's
    # conv5_3): 16i + 7.5. The spec's stride and align_corners (offset 0) say the same; its channels are
    # the output's.
    trunk = make()
    spec = trunk.spec
    assert spec.align_corners == (offset == 0)
    twin = geometry_twin(trunk)
    x = torch.ones(1, 1, size, size, requires_grad=True)
    y = twin(x)
    h = y.shape[-1]
    assert h == -(-size // spec.stride)
    for i in (h // 2 - 1, h // 2, h // 2 + 1):  # interior cells: the receptive field is not clipped
        (g,) = torch.autograd.grad(y[0, 0, i, i], x, retain_graph=True)
        rows = g[0, 0].sum(dim=1)
        centre = float((rows * torch.arange(size)).sum() / rows.sum())
        assert centre == pytest.approx(spec.stride * i + offset, abs=1e-3)
    with torch.no_grad():
        assert trunk.eval()(torch.zeros(1, 3, 32, 32)).shape[1] == spec.out_channels


def test_resnet50_spec_is_its_output():
    trunk = build_trunk("resnet50").eval()
    spec = trunk.spec
    assert (spec.name, spec.out_channels, spec.stride, spec.align_corners) == ("resnet50", 2048, 32, True)
    with torch.no_grad():  # 32k + 1 pixels -> k + 1 cells, the corner-aligned grid's count
        assert trunk(torch.zeros(1, 3, 65, 65)).shape[1:] == (2048, 3, 3)
    with pytest.raises(ValueError, match="'resnet50' has no output-stride-8"):
        build_trunk("resnet50", dilated=True)


@pytest.mark.parametrize(
    ("backbone", "width", "dilation", "align"), [("small", 256, 4, False), ("vgg16", 1024, 12, True)]
)
def test_largefov_head_and_grid_follow_the_trunk_spec(backbone, width, dilation, align):
    net = LargeFOV(backbone, 3)
    assert net.trunk.spec.native_cells == (14 if backbone == "small" else 41)
    assert (net.fc6.out_channels, net.fc6.dilation, net.fc7.out_channels) == (width, (dilation,) * 2, width)
    assert net.align_corners is net.trunk.spec.align_corners is align


def test_largefov_reads_the_spec_not_the_backbone_name(monkeypatch):
    # The small trunk's layers under another spec: 28 cells at a native 224 -> dilation round(12 * 28 / 41).
    trunk = SmallTrunk()
    trunk.spec = dataclasses.replace(SmallTrunk.spec, native_size=224, align_corners=True)
    monkeypatch.setattr(sec_model, "build_largefov_trunk", lambda name, weights: (trunk, None))
    net = LargeFOV("small", 3)
    assert net.fc6.dilation == (8, 8) and net.fc6.out_channels == 256 and net.align_corners
    wide = SmallTrunk()
    wide.spec = dataclasses.replace(SmallTrunk.spec, stride=16)
    monkeypatch.setattr(sec_model, "build_largefov_trunk", lambda name, weights: (wide, None))
    with pytest.raises(ValueError, match="output stride 16, LargeFOV needs 8"):
        LargeFOV("small", 3)


# ---------------------------------------------------------------- DeepLab's vgg16_20M initialisation


def test_decimate_vgg16_fc_on_a_hand_made_state_dict():
    # 8 "fc6" filters over 2 channels of 7x7 (flattened c, y, x as torchvision's flatten), 8 "fc7" outputs.
    w6 = torch.arange(8 * 2 * 49, dtype=torch.float32).reshape(8, 98)
    w7 = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    state = {
        "classifier.0.weight": w6,
        "classifier.0.bias": torch.arange(8.0),
        "classifier.3.weight": w7,
        "classifier.3.bias": 10 + torch.arange(8.0),
        "classifier.6.weight": torch.zeros(3, 8),  # fc8 (ImageNet's 1000 classes) is not used
    }
    out = decimate_vgg16_fc(state, in_channels=2)
    assert set(out) == {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    assert out["fc6.weight"].shape == (2, 2, 3, 3) and out["fc7.weight"].shape == (2, 2, 1, 1)
    # filters 0 and 4; taps (0, 3, 6) x (0, 3, 6): fc6[i, c, a, b] = w6[4 i, 49 c + 7 (3 a) + 3 b]
    assert out["fc6.weight"][1, 1, 2, 1].item() == 4 * 98 + 49 + 7 * 6 + 3
    assert out["fc6.weight"][0, 0].flatten().tolist() == [0, 3, 6, 21, 24, 27, 42, 45, 48]
    assert out["fc6.bias"].tolist() == [0.0, 4.0]
    # fc7 keeps outputs 0 and 4 and, as inputs, the kept fc6 filters 0 and 4
    assert out["fc7.weight"][:, :, 0, 0].tolist() == [[0.0, 4.0], [32.0, 36.0]]
    assert out["fc7.bias"].tolist() == [10.0, 14.0]


def test_decimate_vgg16_fc_rejects_what_does_not_fit():
    with pytest.raises(WeightsError, match="classifier.0.weight"):
        decimate_vgg16_fc({})
    bad = {
        "classifier.0.weight": torch.zeros(8, 97),
        "classifier.0.bias": torch.zeros(8),
        "classifier.3.weight": torch.zeros(8, 8),
        "classifier.3.bias": torch.zeros(8),
    }
    with pytest.raises(WeightsError, match=r"\(8, 97\)"):
        decimate_vgg16_fc(bad, in_channels=2)


def test_largefov_imagenet_init_is_vgg16_20m(monkeypatch):
    # Stands in for torchvision's ImageNet VGG16 (no download here): a VGG16 with seeded random weights.
    torch.manual_seed(0)
    source = torchvision.models.vgg16(weights=None)
    calls = []

    def fake_torchvision_model(name, imagenet):
        calls.append((name, imagenet))
        return source

    monkeypatch.setattr(backbones, "torchvision_model", fake_torchvision_model)
    net = LargeFOV("vgg16", 21, weights="imagenet")
    assert calls == [("vgg16", True)]  # one load serves the conv layers and fc6/fc7
    expected = decimate_vgg16_fc(source.state_dict())
    for key, value in expected.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert torch.equal(net.trunk[0].weight, source.features[0].weight)  # conv1_1
    assert torch.equal(net.trunk[28].bias, source.features[28].bias)  # conv5_3
    assert torch.equal(net.fc8.bias, torch.zeros(21))
    by_param = {id(p): g for g in net.param_groups(weight_decay=5e-4) for p in g["params"]}
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 + 3  # conv1_1 .. conv5_3, fc6, fc7, fc8: every bias at 2x without decay
    for m in convs:
        big = 10 if m is net.fc8 else 1
        w, b = by_param[id(m.weight)], by_param[id(m.bias)]
        assert (w["lr_mult"], w["weight_decay"], b["lr_mult"], b["weight_decay"]) == (big, 5e-4, 2 * big, 0.0)
    # 14,714,688 conv parameters + fc6 3x3x512x1024 + 1024 + fc7 1024x1024 + 1024 + fc8 1024x21 + 21
    assert sum(p.numel() for p in net.parameters()) == 14_714_688 + 4_719_616 + 1_049_600 + 21_525


def test_imagenet_weights_that_cannot_load_name_the_cache(monkeypatch):
    def no_network(*, weights):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models, "vgg16", no_network)
    with pytest.raises(WeightsError, match=r"vgg16.*network unreachable.*vgg16-397923af\.pth"):
        torchvision_model("vgg16", True)
    with pytest.raises(WeightsError, match="could not be loaded"):
        LargeFOV("vgg16", 21, weights="imagenet")


# ---------------------------------------------------------------- construction errors and weights


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="'vgg19'"):
        build_trunk("vgg19")
    with pytest.raises(ValueError, match="'alexnet'"):
        Classifier("alexnet", 20)
    with pytest.raises(ValueError, match="'resnet50'"):
        LargeFOV("resnet50", 21)  # LargeFOV supports small and vgg16 only


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "trunk.pt"
    with pytest.raises(WeightsError, match="trunk.pt"):
        Classifier("small", 20, weights=str(missing))
    with pytest.raises(WeightsError, match="nowhere"):
        LargeFOV("small", 21, weights=str(missing))


def test_weights_path_loads_the_trunk_state_dict(tmp_path):
    torch.manual_seed(3)
    source = Classifier("small", 20)
    with torch.no_grad():
        for m in source.trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-default buffers are loaded too
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "trunk.pt"
    torch.save(source.trunk.state_dict(), path)

    torch.manual_seed(4)
    fresh = Classifier("small", 20)
    assert not torch.equal(fresh.trunk[0][0].weight, source.trunk[0][0].weight)
    torch.manual_seed(4)
    loaded = Classifier("small", 20, weights=str(path))
    expected = source.trunk.state_dict()
    got = loaded.trunk.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    segmenter = LargeFOV("small", 21, weights=str(path))  # SEC initialised from the GAIN trunk
    for key, value in expected.items():
        assert torch.equal(segmenter.trunk.state_dict()[key], value), key


def test_weights_file_matching_nothing_is_an_error(tmp_path):
    # A whole classifier's state_dict has "trunk."-prefixed keys: nothing matches the bare trunk.
    path = tmp_path / "classifier.pt"
    torch.save(Classifier("small", 20).state_dict(), path)
    with pytest.raises(WeightsError, match="no parameter"):
        Classifier("small", 20, weights=str(path))
