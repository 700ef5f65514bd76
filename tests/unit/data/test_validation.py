"""Synthetic validation OOD sets (built from ID training images) and the tuning rule of odin.tune /
mahalanobis.tune."""

import pytest
import torch

from energy_cli.commands.tuning import choose, grid
from energy_cli.data.images import ImageSet
from energy_cli.data.validation import (
    KINDS,
    geomean,
    invert,
    jigsaw,
    mean_pairs,
    pixelate,
    rgb_shift,
    synthetic_validation_sets,
)


def test_jigsaw_by_hand():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    # quadrants: tl [[0,1],[4,5]], tr [[2,3],[6,7]], bl [[8,9],[12,13]], br [[10,11],[14,15]]; swapped and flipped
    assert jigsaw(x)[0, 0].tolist() == [[14, 15, 12, 13], [10, 11, 8, 9], [6, 7, 4, 5], [2, 3, 0, 1]]


def test_pair_means_by_hand():
    images = torch.tensor([0, 100, 200], dtype=torch.uint8).view(3, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    partners = (torch.arange(3) + torch.randint(1, 3, (3,), generator=g)) % 3
    want = ((images.double() + images[partners].double()) / 2).round().to(torch.uint8)
    assert torch.equal(mean_pairs(images, torch.Generator().manual_seed(0)), want)
    assert (partners != torch.arange(3)).all()
    g0 = geomean(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1), torch.Generator().manual_seed(1))
    assert g0.flatten().tolist() == [0, 0]                    # sqrt(0 * 1) either way


def test_invert_rgb_shift_pixelate():
    rgb = torch.tensor([[10, 20], [30, 40]], dtype=torch.uint8).expand(1, 3, 2, 2).clone()
    rgb[0, 1] += 1
    rgb[0, 2] += 2
    inv = invert(rgb)
    assert torch.equal(inv[:, 0], rgb[:, 0]) and torch.equal(inv[:, 1:], 255 - rgb[:, 1:])
    assert torch.equal(invert(rgb[:, :1]), 255 - rgb[:, :1])  # grey: its only channel
    shifted = rgb_shift(rgb)
    assert torch.equal(shifted[:, 0], rgb[:, 1].flip(-1)) and torch.equal(shifted[:, 1], rgb[:, 2])
    assert torch.equal(shifted[:, 2], rgb[:, 0])
    flat = pixelate(torch.arange(100, dtype=torch.uint8).view(1, 1, 10, 10))
    assert flat.shape == (1, 1, 10, 10) and len(flat.unique()) == 4     # 2 x 2 blocks


def test_synthetic_validation_sets_are_seeded_and_skip_rgb_shift_on_grey():
    train = ImageSet("train", torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8), torch.zeros(30).long())
    sets = synthetic_validation_sets(train, 20, seed=0)
    assert [s.name for s in sets] == [f"val_{k}" for k in KINDS if k != "rgb_shift"]
    assert all(s.images.shape == (20, 1, 8, 8) for s in sets)
    again = synthetic_validation_sets(train, 20, seed=0)
    assert all(torch.equal(a.images, b.images) for a, b in zip(sets, again))
    rgb = ImageSet("train", torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8))
    assert len(synthetic_validation_sets(rgb, 99, seed=1)) == len(KINDS)
    assert len(synthetic_validation_sets(rgb, 99, seed=1)[0]) == 5       # at most the training set


def test_grid_and_choice():
    assert grid({"temperature": [1, 10], "noise": [0, 0.1]}) == [
        {"temperature": 1, "noise": 0}, {"temperature": 1, "noise": 0.1},
        {"temperature": 10, "noise": 0}, {"temperature": 10, "noise": 0.1}]
    table = [{"fpr95": 30.0, "auroc": 90.0}, {"fpr95": 20.0, "auroc": 80.0}, {"fpr95": 20.0, "auroc": 85.0},
             {"fpr95": 20.0, "auroc": 85.0}]
    assert choose(table) == 2                    # lowest FPR95, then highest AUROC, then the first
    with pytest.raises(ValueError):
        choose([])
