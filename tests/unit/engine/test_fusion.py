"""engine.fusion: BatchNorm folded into the convolution before it gives the same logits, features and input
gradients (up to fp32 rounding), leaves the original model alone, and is for inference only."""

import pytest
import torch
from torch import nn

from energy_cli.engine.fusion import FoldedClassifier, count_batchnorms, fold_batchnorm
from trained_models import trained_looking
from energy_cli.models.base import Classifier




def relative_error(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("backbone,channels,size,left", [
    ({"name": "wrn40_2"}, 3, 32, 18),       # pre-activation: the BN after each residual sum (and the last) stays
    ({"name": "resnet18"}, 3, 32, 0),       # conv-BN-ReLU everywhere: every BN folds
    ({"name": "small_cnn"}, 1, 8, 0),
])
def test_folded_model_gives_the_same_logits_and_features(backbone, channels, size, left):
    model = trained_looking(backbone, channels)
    folded = fold_batchnorm(model)
    assert isinstance(folded, FoldedClassifier) and count_batchnorms(folded) == left
    x = torch.randn(6, channels, size, size)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
        logits2, feats2 = folded.forward_with_features(x)
    assert relative_error(logits, logits2) < 1e-4
    assert relative_error(feats, feats2) < 1e-4
    assert folded.fc.out_features == 10 and folded.feature_dim == model.feature_dim


def test_input_gradients_agree_for_odin_and_mahalanobis_perturbations():
    model = trained_looking({"name": "wrn40_2", "depth": 10, "widen_factor": 1}, 3)
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for m in (model, folded):
        xi = x.clone().requires_grad_(True)
        m(xi).logsumexp(1).sum().backward()
        grads.append(xi.grad)
    assert relative_error(grads[0], grads[1]) < 1e-4


def test_the_original_model_is_untouched_and_the_folded_one_is_eval_only():
    model = trained_looking({"name": "small_cnn"}, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training and count_batchnorms(model) == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not folded.training
    folded.eval()                              # eval_mode() switches back and forth: False is fine
    with pytest.raises(RuntimeError, match="inference only"):
        folded.train()


class Untraceable(Classifier):
    """Control flow on tensor values: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc, self.feature_dim = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2), 4

    def features(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = y * 2
        return y.mean((2, 3))


def test_models_fx_cannot_trace_or_without_batchnorm_come_back_unchanged():
    model = Untraceable().eval()
    assert fold_batchnorm(model) is model
    plain = nn.Module()
    plain.fc = nn.Linear(2, 2)
    assert fold_batchnorm(plain) is plain
