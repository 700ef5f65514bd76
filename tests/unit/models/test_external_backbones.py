"""Backbones from elsewhere: torchvision models by name, timm models (optional), a user's `_target_`, and the
adapter that makes any image-to-logits module a Classifier."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from energy_cli.errors import UserError
from energy_cli.models import ModuleClassifier, as_classifier, backbone_label, backbone_name, build_model


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_models_give_logits_and_features(arch, channels):
    torch.manual_seed(0)
    model = build_model({"name": "torchvision", "arch": arch, "head": None}, 10, channels, 8).eval()
    x = torch.randn(3, channels, 8, 8)
    logits, feats = model.forward_with_features(x)
    assert logits.shape == (3, 10) and feats.shape == (3, model.feature_dim)
    assert torch.allclose(model.fc(feats), logits) and torch.allclose(model(x), logits)
    assert torch.allclose(model.net(x), logits, atol=1e-5)            # the module's own logits


def test_adapter_features_are_the_input_of_the_last_linear():
    from usernets import TinyNet

    torch.manual_seed(0)
    net = TinyNet(5, 1, 6).eval()
    model = as_classifier(net, sample_shape=(1, 8, 8))
    assert isinstance(model, ModuleClassifier) and model.fc is net.out and model.feature_dim == 6
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(model.features(x), net.body(x))
    assert torch.allclose(model(x), net(x), atol=1e-6)
    assert list(model.state_dict())[0].startswith("net.")           # energy-ood checkpoints: net.<name>
    assert as_classifier(model) is model                            # a Classifier stays as it is


def test_logits_stay_fp32_under_bf16_autocast():
    model = build_model({"name": "torchvision", "arch": "resnet18"}, 10, 1, 8).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 1, 8, 8)).dtype == torch.float32


def test_head_names_the_logit_layer_when_the_rule_picks_another():
    from usernets import TwoHeads

    with pytest.raises(UserError, match="`aux` of usernets.TwoHeads is not called .*backbone.head=NAME") as info:
        as_classifier(TwoHeads(4), sample_shape=(1, 8, 8))
    assert "\n" not in str(info.value)
    model = as_classifier(TwoHeads(4), head="classifier", sample_shape=(1, 8, 8))
    assert model.head_name == "classifier" and model.fc.out_features == 4
    with pytest.raises(UserError, match="has no layer of that name"):
        as_classifier(TwoHeads(4), head="nope")
    with pytest.raises(UserError, match="not an nn.Linear"):
        as_classifier(TwoHeads(4), head="body")


def test_wrong_number_of_logits_or_no_linear_is_a_user_error():
    from usernets import SevenClasses

    with pytest.raises(UserError, match=r"usernets.SevenClasses returns logits of shape \(2, 7\), expected \(2, 10\)"):
        build_model({"name": "custom", "_target_": "usernets.SevenClasses", "head": None}, 10, 1, 8)
    with pytest.raises(UserError, match="has no nn.Linear layer"):
        as_classifier(nn.Sequential(nn.Conv2d(1, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), sample_shape=(1, 4, 4))
    with pytest.raises(UserError, match="fails on a batch of 2x1x6x6 images"):
        as_classifier(nn.Sequential(nn.Conv2d(1, 4, 5), nn.Flatten(), nn.Linear(64, 3)), sample_shape=(1, 6, 6))
    with pytest.raises(UserError, match="torchvision cannot build vit_b_16 with"):
        build_model({"name": "torchvision", "arch": "vit_b_16"}, 10, 1, 8)     # 8x8 is not a multiple of 16


def test_target_gets_num_classes_and_in_channels_where_it_takes_them():
    model = build_model({"name": "custom", "_target_": "usernets.TinyNet", "head": None, "width": 5}, 3, 1, 8)
    assert model.feature_dim == 5 and model.fc.out_features == 3
    model = build_model({"_target_": "usernets.tiny_net", "width": 4}, 6, 1, 8)      # a function; no name
    assert model.feature_dim == 4 and model.fc.out_features == 6
    assert backbone_name({"_target_": "usernets.tiny_net"}) == "tiny_net"
    assert backbone_label({"name": "custom", "_target_": "usernets.TinyNet"}) == "custom:TinyNet"
    assert backbone_label({"name": "torchvision", "arch": "resnet18"}) == "torchvision:resnet18"
    with pytest.raises(UserError, match="cannot be imported"):
        build_model({"name": "custom", "_target_": "usernets.NoSuchNet"}, 3, 1, 8)
    with pytest.raises(UserError, match="failed to build"):
        build_model({"name": "custom", "_target_": "usernets.TinyNet", "depth": 3}, 3, 1, 8)
    with pytest.raises(UserError, match="needs backbone._target_"):
        build_model({"name": "custom", "_target_": None}, 3, 1, 8)


def test_unknown_torchvision_arch_lists_close_names():
    with pytest.raises(UserError, match="backbone.arch=resnet19 is not a torchvision classification model; close "
                                        "names: resnet18") as info:
        build_model({"name": "torchvision", "arch": "resnet19"}, 10, 1, 8)
    assert "\n" not in str(info.value)


def test_download_failure_is_one_line(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(UserError, match="cannot fetch the torchvision weights of resnet18.*drop download=true"):
        build_model({"name": "torchvision", "arch": "resnet18"}, 10, 1, 8, download=True)


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)            # `import timm` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'energy-ood\[timm\]'"):
        build_model({"name": "timm", "arch": "resnet18"}, 10, 1, 8)


def test_timm_models_when_installed():
    pytest.importorskip("timm")
    model = build_model({"name": "timm", "arch": "resnet18", "head": None}, 10, 1, 8).eval()
    logits, feats = model.forward_with_features(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10) and feats.shape == (2, 512)
    with pytest.raises(UserError, match="is not a timm model; close names"):
        build_model({"name": "timm", "arch": "resnet19"}, 10, 1, 8)


def test_batchnorm_folding_of_a_wrapped_module_keeps_its_logits():
    from energy_cli.engine.fusion import FoldedClassifier, count_batchnorms, fold_batchnorm

    torch.manual_seed(0)
    model = build_model({"name": "torchvision", "arch": "resnet18"}, 10, 1, 8).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(model)
    assert isinstance(folded, FoldedClassifier) and count_batchnorms(folded.body) == 0
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert torch.allclose(folded.forward_with_features(x)[1], model.features(x), atol=1e-4)


def test_rules_of_builtin_options_do_not_apply_to_a_users_model(compose):
    from energy_cli.commands.validate import validate

    validate(compose("train", ["backbone=custom", "backbone._target_=usernets.TinyNet", "+backbone.depth=5"]))
    with pytest.raises(UserError, match=r"backbone.arch=\['a', 'b'\] must be a path or a name"):
        validate(compose("train", ["backbone=torchvision", "backbone.arch=[a,b]"]))


def test_plain_weights_load_by_the_modules_own_names_or_the_wrappers():
    from usernets import TinyNet

    from energy_cli.models import load_plain_weights

    torch.manual_seed(0)
    source = TinyNet(3, 1, 4)
    for weights in (source.state_dict(), as_classifier(source).state_dict()):     # out.weight, or net.out.weight
        model = build_model({"_target_": "usernets.TinyNet", "width": 4}, 3, 1, 8)
        load_plain_weights(model, weights)
        assert torch.equal(model.fc.weight, source.out.weight)
    with pytest.raises(ValueError, match=r"missing keys out.weight, out.bias; unexpected keys fc.weight"):
        load_plain_weights(build_model({"_target_": "usernets.TinyNet", "width": 4}, 3, 1, 8),
                           {**{k: v for k, v in source.state_dict().items() if not k.startswith("out.")},
                            "fc.weight": torch.zeros(3, 4)})
