"""precision=int8: the quantized model keeps the fp32 model's ranking of images; what it cannot do is refused."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from energy_cli.commands.validate import validate
from energy_cli.engine.fusion import fold_batchnorm
from energy_cli.engine.quantize import Int8Classifier, int8_supported, quantize_int8
from energy_cli.errors import UserError
from energy_cli.models import build_model
from energy_cli.models.base import Classifier
from energy_cli.ood.scores import energy_score

needs_int8 = pytest.mark.skipif(not int8_supported(), reason="this PyTorch build has no x86 int8 kernels")


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _images(n: int, seed: int, channels: int = 1, size: int = 8) -> torch.Tensor:
    """Smooth random images (a blurred noise field, like natural images more than white noise is)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    return nn.functional.avg_pool2d(x, 3, stride=1, padding=1) * 2


@needs_int8
@pytest.mark.parametrize("backbone", [{"name": "small_cnn", "width": 16, "dropout": 0.0},
                                      {"name": "wrn40_2", "depth": 10, "widen_factor": 1, "dropout": 0.0}])
def test_int8_ranks_images_like_fp32(backbone):
    torch.manual_seed(0)
    model = build_model(backbone, 10, 1, 8).eval()
    calibration = [_images(64, seed) for seed in range(4)]
    quantized = quantize_int8(model, calibration)
    assert isinstance(quantized, Int8Classifier) and quantized.fc is model.fc
    assert any("quantized" in type(m).__module__ for m in quantized.body.modules())
    x = _images(512, 99)
    with torch.inference_mode():
        fp32_logits, fp32_feats = model.forward_with_features(x)
        int8_logits, int8_feats = quantized.forward_with_features(x)
    assert int8_logits.dtype == torch.float32 and int8_feats.shape == fp32_feats.shape
    # untrained weights give energies packed close together, so this bound is looser than for a trained model
    # (tests/cli/test_precision.py: above 0.99 there)
    rho = spearmanr(energy_score(fp32_logits).numpy(), energy_score(int8_logits).numpy()).statistic
    assert rho > 0.95, rho
    # the int8 features differ from fp32 by about the quantization step, not by their own size
    error = (int8_feats - fp32_feats).norm() / fp32_feats.norm()
    assert 0 < error < 0.1, error


@needs_int8
def test_a_wrapped_torchvision_model_is_quantized_with_its_head_in_fp32():
    """torchvision / timm / own models give their features through a hook on the head: the whole net is
    quantized with the head left out, and the features are again the head's (fp32) input."""
    torch.manual_seed(0)
    model = build_model({"name": "torchvision", "arch": "resnet18", "head": None}, 10, 1, 8).eval()
    quantized = quantize_int8(fold_batchnorm(model), [_images(64, seed) for seed in range(4)])
    assert isinstance(quantized, Int8Classifier)
    assert type(quantized.fc) is nn.Linear and torch.equal(quantized.fc.weight, model.fc.weight)
    assert any("quantized" in type(m).__module__ for m in quantized.body.modules())
    x = _images(512, 99)
    with torch.inference_mode():
        fp32_logits, fp32_feats = model.forward_with_features(x)
        int8_logits, int8_feats = quantized.forward_with_features(x)
        head_of_features = quantized.fc(int8_feats)
    assert int8_feats.dtype == torch.float32 and int8_feats.shape == fp32_feats.shape
    assert torch.allclose(head_of_features, int8_logits, atol=1e-5)   # logits = the fp32 head of the features
    rho = spearmanr(energy_score(fp32_logits).numpy(), energy_score(int8_logits).numpy()).statistic
    assert rho > 0.95, rho


class _Branchy(Classifier):
    """A model whose forward branches on the data: FX cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.feature_dim = 4
        self.fc = nn.Linear(4, 3)

    def features(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            y = y * 2
        return y.mean((2, 3))


@needs_int8
def test_a_model_fx_cannot_trace_is_one_line():
    with pytest.raises(UserError, match="precision=int8: this model cannot be traced for quantization"):
        quantize_int8(_Branchy().eval(), [_images(8, 0)])


@pytest.mark.parametrize("command,overrides,message", [
    ("train", [], "precision=int8 is for eval and score"),
    ("finetune", [], "precision=int8 is for eval and score"),
    ("score", [], None),
    ("eval", ["score=[msp,odin]"], "score=odin perturbs its inputs along gradients"),
    ("eval", ["score=[mahalanobis]", "mahalanobis.tune=true"], "score=mahalanobis perturbs its inputs"),
    ("eval", ["score=all"], "score=odin perturbs"),               # odin.noise is 0.0014 unless set
    ("eval", ["score=all", "odin.noise=0"], None),                # mahalanobis.noise is 0 unless set
    ("eval", ["score=extended", "odin.noise=0"], None),
])
def test_what_int8_cannot_do_is_refused_before_any_work(compose, command, overrides, message):
    cfg = compose(command, ["precision=int8", *overrides])
    if message is None:
        validate(cfg)
        return
    with pytest.raises(UserError, match=message):
        validate(cfg)
