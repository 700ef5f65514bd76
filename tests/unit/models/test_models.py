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


def test_wrn_dropout_keeps_the_right_fraction_and_scales():
    from energy_cli.models.wrn import dropout

    torch.manual_seed(0)
    x = torch.ones(200, 50, 10, 10)
    y = dropout(x, 0.3, training=True)
    kept = (y > 0).float().mean().item()
    assert kept == pytest.approx(0.7, abs=0.005)
    values = torch.unique(y).tolist()                                                   # scaled by the exact
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(65536 / 45875)  # keep probability
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)                              # expectation kept
    assert torch.equal(dropout(x, 0.3, training=False), x) and torch.equal(dropout(x, 0.0, training=True), x)
    torch.manual_seed(1)
    a = dropout(x, 0.3, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.3, True))                                         # seeded


def test_wrn_dropout_draws_every_16_bit_lane_uniformly():
    """Each 64-bit word gives four mask bits: values at positions 0, 1, 2 and 3 (mod 4) are each kept with
    probability 1 - p (a lane with a constant sign bit would keep almost all or almost none)."""
    from energy_cli.models.wrn import dropout

    torch.manual_seed(0)
    y = dropout(torch.ones(400_000), 0.3, training=True)
    rates = (y.view(-1, 4) > 0).float().mean(dim=0)                # 100,000 draws per lane: sd 0.0015
    assert torch.allclose(rates, torch.full((4,), 0.7), atol=0.006), rates


def test_wrn_dropout_in_bf16_keeps_the_dtype_and_the_exact_scale():
    """In lower precisions the 0/1 mask multiplies first and the scale second, so kept values are x / keep rounded
    once to bf16 (not x times a bf16-rounded scale)."""
    from energy_cli.models.wrn import dropout

    torch.manual_seed(0)
    x = torch.full((100, 100), 3.0, dtype=torch.bfloat16)
    y = dropout(x, 0.3, training=True)
    assert y.dtype == torch.bfloat16
    kept = y[y != 0]
    assert torch.equal(kept, torch.full_like(kept, 3.0 * 65536 / 45875))      # 4.2857 rounded once
    assert (y != 0).float().mean().item() == pytest.approx(0.7, abs=0.02)


def test_wrn_dropout_mask_follows_channels_last_layout_and_gradients():
    from energy_cli.models.wrn import dropout

    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = dropout(x, 0.5, True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    dropped = y == 0
    assert torch.equal(x.grad == 0, dropped)                  # gradient flows exactly through the kept values
    assert torch.allclose(y[~dropped], x[~dropped] * (65536 / 32768))
    # per-channel drop rates are all near 1/2: the mask is not aligned to one channel or position
    rates = dropped.float().mean(dim=(0, 2, 3))
    assert rates.min() > 0.2 and rates.max() < 0.8
