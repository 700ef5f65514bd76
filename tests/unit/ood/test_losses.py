import math

import pytest
import torch

from energy_cli.ood.losses import (
    energy_bounded_loss,
    finetune_regulariser,
    outlier_exposure_loss,
)


def lse(values):
    return math.log(sum(math.exp(v) for v in values))


def test_energy_loss_hinges_by_hand():
    logits_in = torch.tensor([[2.0, 0.0], [10.0, 10.0]])              # E = -lse
    logits_out = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-5.0, -5.0]])
    m_in, m_out = -5.0, -1.0
    e_in = [-lse([2, 0]), -lse([10, 10])]             # about -2.13 (active), -10.69 (inactive)
    e_out = [-lse([0, 0]), -lse([1, -1]), -lse([-5, -5])]  # -0.69 (inactive), -1.13 (active), 4.31 (inactive)
    want_in = sum(max(0.0, e - m_in) ** 2 for e in e_in) / 2
    want_out = sum(max(0.0, m_out - e) ** 2 for e in e_out) / 3
    assert want_in > 0 and want_out > 0
    got = energy_bounded_loss(logits_in, logits_out, m_in, m_out)
    assert got.item() == pytest.approx(want_in + want_out, rel=1e-6)


def test_energy_loss_is_zero_when_margins_hold():
    logits_in = torch.tensor([[20.0, 0.0]])     # E about -20 < m_in
    logits_out = torch.tensor([[-9.0, -9.0]])   # E about 8.3 > m_out
    assert energy_bounded_loss(logits_in, logits_out, -10.0, -2.0).item() == 0.0


def test_energy_loss_means_over_each_part_separately():
    """Duplicating the outlier rows must not change the loss: each hinge is a mean over its own part."""
    logits_in = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    logits_out = torch.tensor([[3.0, 1.0]])
    a = energy_bounded_loss(logits_in, logits_out, -3.0, -1.0)
    b = energy_bounded_loss(logits_in, logits_out.repeat(7, 1), -3.0, -1.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    only_in = energy_bounded_loss(logits_in, torch.full((1, 2), -50.0), -3.0, -1.0)
    e_in = [-lse([1, 0]), -lse([0.5, 0.5])]
    assert only_in.item() == pytest.approx(sum((e + 3.0) ** 2 for e in e_in) / 2, rel=1e-6)


def test_energy_loss_uses_the_temperature():
    logits_in = torch.tensor([[4.0, 2.0]])
    logits_out = torch.tensor([[0.0, 0.0]])
    t = 2.0
    e_in = -t * lse([2.0, 1.0])
    e_out = -t * lse([0.0, 0.0])
    want = max(0, e_in + 8) ** 2 + max(0, -1 - e_out) ** 2
    assert energy_bounded_loss(logits_in, logits_out, -8.0, -1.0, t).item() == pytest.approx(want, rel=1e-6)


def test_energy_loss_gradient_pushes_energies_apart():
    logits_in = torch.zeros(4, 3, requires_grad=True)
    logits_out = torch.zeros(4, 3, requires_grad=True)
    energy_bounded_loss(logits_in, logits_out, -5.0, 0.0).backward()
    assert (logits_in.grad < 0).all()   # descending raises ID logits -> lowers ID energy
    assert (logits_out.grad > 0).all()  # and lowers outlier logits -> raises outlier energy


def test_outlier_exposure_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    want = ((lse([1, 2, 3]) - 2.0) + (lse([0, 0, 0]) - 0.0)) / 2
    assert outlier_exposure_loss(logits).item() == pytest.approx(want, rel=1e-6)
    # flat logits are already uniform: the cross-entropy to uniform is its minimum, log K
    assert outlier_exposure_loss(torch.zeros(5, 10)).item() == pytest.approx(math.log(10), rel=1e-6)


def test_regulariser_dispatch():
    a, b = torch.randn(3, 4), torch.randn(5, 4)
    assert finetune_regulariser("oe", a, b).item() == pytest.approx(outlier_exposure_loss(b).item())
    assert finetune_regulariser("energy", a, b, m_in=-3, m_out=-1).item() == pytest.approx(
        energy_bounded_loss(a, b, -3, -1).item())
    with pytest.raises(ValueError):
        finetune_regulariser("nope", a, b)
