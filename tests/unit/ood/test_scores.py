import math

import pytest
import torch

from energy_cli.ood.scores import (
    LOGIT_SCORES,
    energy_score,
    free_energy,
    maxlogit_score,
    msp_score,
)


def test_free_energy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = [-math.log(math.e + math.e**2 + math.e**3), -math.log(3.0)]
    assert free_energy(logits).tolist() == pytest.approx(expected, abs=1e-6)


def test_free_energy_with_temperature_by_hand():
    logits = torch.tensor([[2.0, 4.0]])
    t = 2.0
    expected = -t * math.log(math.exp(2 / t) + math.exp(4 / t))
    assert free_energy(logits, t).item() == pytest.approx(expected, abs=1e-6)
    assert energy_score(logits, t).item() == pytest.approx(-expected, abs=1e-6)


def test_energy_tends_to_max_logit_at_low_temperature():
    logits = torch.tensor([[1.0, 5.0, 3.0]])
    assert energy_score(logits, 1e-3).item() == pytest.approx(5.0, abs=1e-3)


def test_msp_and_maxlogit_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    z = math.e + math.e**2 + math.e**3
    assert msp_score(logits).item() == pytest.approx(math.e**3 / z, abs=1e-6)
    assert maxlogit_score(logits).item() == 3.0


def test_log_msp_is_energy_plus_max_logit():
    """log max_y p(y|x) = E(x) + f_max(x) (PAPER.md)."""
    logits = torch.randn(50, 10) * 3
    lhs = torch.log(msp_score(logits))
    rhs = free_energy(logits.double()) + logits.max(dim=1).values
    assert torch.allclose(lhs, rhs, atol=1e-12)


def test_msp_keeps_precision_near_one():
    """MSP is computed in float64: confident logits whose fp32 softmax rounds to exactly 1.0 stay below 1 and
    keep their order (1 - msp = sum_{k != max} exp(f_k - f_max) to first order)."""
    gaps = torch.tensor([18.0, 19.0, 20.0, 25.0])
    logits = torch.stack([gaps, torch.zeros(4)], dim=1)
    fp32 = torch.exp(logits.max(1).values - torch.logsumexp(logits, 1))
    assert (fp32 == 1.0).all()                      # the old fp32 rounding: four ties at 1.0
    msp = msp_score(logits)
    assert msp.dtype == torch.float64 and (msp < 1).all()
    assert torch.allclose(1 - msp, torch.exp(-gaps.double()), rtol=1e-6)
    assert msp.argsort().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("name", sorted(LOGIT_SCORES))
def test_logit_scores_are_float64(name):
    assert LOGIT_SCORES[name](torch.randn(4, 3), 1.0).dtype == torch.float64


@pytest.mark.parametrize("name", sorted(LOGIT_SCORES))
def test_scores_are_higher_for_confident_inputs(name):
    """Orientation: a peaked (ID-like) logit vector scores higher than a flat (OOD-like) one."""
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    flat = torch.tensor([[1.0, 1.0, 1.0]])
    fn = LOGIT_SCORES[name]
    assert fn(confident, 1.0).item() > fn(flat, 1.0).item()
