import pytest
import torch

from energy_cli.errors import UserError
from energy_cli.models import BACKBONES, build_model


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("shape,classes", [((1, 8, 8), 10), ((3, 32, 32), 100)])
def test_backbones_give_logits_and_features(name, shape, classes):
    torch.manual_seed(0)
    model = build_model({"name": name}, classes, shape[0]).eval()
    x = torch.randn(2, *shape)
    logits, feats = model.forward_with_features(x)
    assert logits.shape == (2, classes)
    assert feats.shape == (2, model.feature_dim)
    assert torch.allclose(model(x), logits)
    assert torch.allclose(model.fc(feats), logits)


def test_wrn40_2_has_the_papers_size():
    model = build_model({"name": "wrn40_2", "depth": 40, "widen_factor": 2, "dropout": 0.3}, 10, 3)
    n = sum(p.numel() for p in model.parameters())
    assert 2.2e6 < n < 2.3e6          # ~2.24M (PAPER.md)
    assert model.feature_dim == 128


def test_unknown_backbone_and_bad_option():
    with pytest.raises(UserError):
        build_model({"name": "vgg"}, 10, 3)
    with pytest.raises(UserError):
        build_model({"name": "resnet18", "depth": 3}, 10, 3)
