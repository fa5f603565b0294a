import pytest
import torch

from gain.cam.model import Classifier
from gain.models.backbones import WeightsError, build_trunk
from gain.runtime.engine import sgd
from gain.sec.model import LargeFOV


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
    net = LargeFOV("small", 21)
    groups = net.param_groups(weight_decay=5e-4)
    assert sorted(param_ids(groups)) == sorted(id(p) for p in net.parameters())  # each once, none left out
    by_param = {id(p): g for g in groups for p in g["params"]}
    weight, bias = by_param[id(net.fc8.weight)], by_param[id(net.fc8.bias)]
    assert weight["params"] == [net.fc8.weight] and bias["params"] == [net.fc8.bias]
    assert weight["lr_mult"] == 10 and bias["lr_mult"] == 20
    assert bias["weight_decay"] == 0.0 and weight["weight_decay"] == 5e-4
    for p in [*net.trunk.parameters(), *net.fc6.parameters(), *net.fc7.parameters()]:
        g = by_param[id(p)]
        assert g["lr_mult"] == 1 and g["weight_decay"] == 5e-4


def test_param_groups_build_an_sgd_optimizer():
    net = LargeFOV("small", 21)
    opt = sgd(net.param_groups(weight_decay=5e-4), lr=1e-3, momentum=0.9)
    assert [g["lr_mult"] for g in opt.param_groups] == [1, 10, 20]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9, 0.9]


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
