"""The energy family after the paper (react, dice, ash, knn, vim, gen): each score against a hand computation
on tiny tensors, the identities that tie them to the energy score, and (where it is installed) pytorch-ood's
implementation of the same detector on the same features."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.detectors import (
    DETECTOR_NAMES,
    EXTENDED_NAMES,
    SCORE_NAMES,
    build_detectors,
    resolve_score_names,
)
from energy_cli.detectors.ash import ash_features
from energy_cli.detectors.dice import dice_logits, dice_mask
from energy_cli.detectors.gen import gen_score
from energy_cli.detectors.knn import kth_neighbour_distance, l2_normalise
from energy_cli.detectors.react import react_logits, react_threshold
from energy_cli.detectors.scoring import score_images
from energy_cli.detectors.vim import fit_vim, resolve_dim, vim_score
from energy_cli.engine.runtime import Runtime
from energy_cli.errors import UserError
from energy_cli.models import build_model
from energy_cli.ood.scores import energy_score
from energy_cli.reporting.tables import SCORE_ORDER

CPU = Runtime(device=torch.device("cpu"))


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


# --------------------------------------------------------------------------- hand computations


def test_react_by_hand():
    train = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    c = react_threshold(train, 50)                        # the median of 0..5
    assert c == 2.5
    feats = torch.tensor([[1.0, 2.0, 3.0], [0.5, 4.0, 0.0]])
    logits = react_logits(feats, torch.eye(3), torch.zeros(3), c)
    assert logits.tolist() == [[1.0, 2.0, 2.5], [0.5, 2.5, 0.0]]
    assert energy_score(logits).tolist() == pytest.approx([lse(1, 2, 2.5), lse(0.5, 2.5, 0)], abs=1e-12)
    assert react_threshold(train, 100) == 5.0 and react_threshold(train, 0) == 0.0


def test_dice_by_hand():
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    mean = torch.tensor([1.0, 0.5])                       # contributions [[1, 1], [3, -0.5]]
    mask = dice_mask(weight, mean, 0.5)                   # keep 2 of 4: the 3, then the first of the tied 1s
    assert mask.tolist() == [[True, False], [True, False]]
    logits = dice_logits(torch.tensor([[2.0, 4.0]]), weight, torch.tensor([0.0, 1.0]), mask)
    assert logits.tolist() == [[2.0, 7.0]]
    assert energy_score(logits).item() == pytest.approx(lse(2, 7), abs=1e-12)
    assert dice_mask(weight, mean, 0.0).all() and dice_mask(weight, mean, 0.75).sum() == 1


def test_ash_variants_by_hand():
    feats = torch.tensor([[4.0, 1.0, 3.0, 2.0]], dtype=torch.float64)
    assert ash_features(feats, "p", 50).tolist() == [[4.0, 0.0, 3.0, 0.0]]
    assert ash_features(feats, "b", 50).tolist() == [[5.0, 0.0, 5.0, 0.0]]           # total 10 over k = 2
    scale = math.exp(10 / 7)                                                          # total / kept
    assert ash_features(feats, "s", 50)[0].tolist() == pytest.approx([4 * scale, 0, 3 * scale, 0], rel=1e-12)
    assert torch.equal(ash_features(feats, "p", 0), feats)
    with pytest.raises(ValueError):
        ash_features(feats, "x", 50)


def test_knn_by_hand():
    bank = l2_normalise(torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]]))
    queries = l2_normalise(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
    assert kth_neighbour_distance(queries, bank, 1).tolist() == pytest.approx([0.0, math.sqrt(2)], abs=1e-7)
    assert kth_neighbour_distance(queries, bank, 2).tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)], abs=1e-7)
    assert kth_neighbour_distance(queries, bank, 3).tolist() == pytest.approx([2.0, 2.0], abs=1e-7)
    # chunking the bank does not change the answer
    assert torch.equal(kth_neighbour_distance(queries, bank, 2, chunk=1), kth_neighbour_distance(queries, bank, 2))


def test_knn_exact_against_brute_force():
    g = torch.Generator().manual_seed(0)
    bank = l2_normalise(torch.randn(300, 8, generator=g))
    queries = l2_normalise(torch.randn(40, 8, generator=g))
    want = torch.cdist(queries.double(), bank.double()).sort(dim=1).values[:, 9]
    got = kth_neighbour_distance(queries, bank, 10, chunk=64)
    assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-12)


def test_vim_by_hand():
    # identity head, no bias (origin 0); covariance diag(2, 0.5): the principal axis is x, the residual y
    train = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    fit = fit_vim(train, torch.eye(2), torch.zeros(2), dim=1)
    assert fit.origin.tolist() == [0.0, 0.0]
    assert fit.alpha.item() == pytest.approx(0.75 / 0.5)             # mean max logit / mean |y|
    x = torch.tensor([[1.0, 2.0]])
    assert vim_score(x, x, fit).item() == pytest.approx(lse(1, 2) - 1.5 * 2, abs=1e-12)


def test_vim_origin_zeroes_the_logits():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    fit = fit_vim(torch.randn(50, 5, generator=g), w, b, dim=2)
    assert torch.allclose(w.double() @ fit.origin + b.double(), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert fit.null_space.shape == (5, 3)


def test_vim_dim():
    assert resolve_dim("auto", 64) == 32 and resolve_dim(10, 64) == 10
    for bad in (0, 64):
        with pytest.raises(UserError, match="vim.dim"):
            resolve_dim(bad, 64)


def test_gen_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)     # p = (1/4, 3/4)
    term = math.sqrt(0.25 * 0.75)
    assert gen_score(logits, gamma=0.5, m=2).item() == pytest.approx(-2 * term, abs=1e-12)
    assert gen_score(logits, gamma=0.5, m=1).item() == pytest.approx(-term, abs=1e-12)
    assert gen_score(logits, gamma=0.5, m=100).item() == pytest.approx(-2 * term, abs=1e-12)   # m capped at K
    # a confident prediction scores higher (more ID) than a flat one
    assert gen_score(torch.tensor([[9.0, 0.0, 0.0]])).item() > gen_score(torch.tensor([[1.0, 1.0, 1.0]])).item()


# --------------------------------------------------------------------------- identities, on a model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn"}, 4, 1).eval()
    norm = Normalizer([0.5], [0.25])
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    return model, norm, ImageSet("train", images, torch.arange(40) % 4)


def scores_of(setup, names, **options):
    model, norm, train = setup
    dets = build_detectors(["energy", *names], model, norm, CPU, batch_size=16, options=options)
    for det in dets:
        if det.needs_fit:
            det.fit(train)
    return score_images(model, train.images, dets, norm, CPU, batch_size=16)[1]


def test_react_at_percentile_100_is_energy(setup):
    """c = the largest training activation: the training images themselves have none above it."""
    scores = scores_of(setup, ["react"], react={"percentile": 100})
    assert torch.equal(scores["react"], scores["energy"])


def test_dice_at_sparsity_0_is_energy(setup):
    scores = scores_of(setup, ["dice"], dice={"sparsity": 0.0})
    assert torch.equal(scores["dice"], scores["energy"])


def test_ash_p_at_percentile_0_is_energy(setup):
    scores = scores_of(setup, ["ash"], ash={"variant": "p", "percentile": 0})
    assert torch.equal(scores["ash"], scores["energy"])


def test_every_extended_score_runs_and_is_float64(setup):
    scores = scores_of(setup, list(EXTENDED_NAMES), knn={"k": 5}, vim={"dim": 4})
    for name, values in scores.items():
        assert values.shape == (40,) and values.dtype == torch.float64 and torch.isfinite(values).all(), name
    # clipping at the 90th percentile changes some energies, never raises one (the head's weights may be negative,
    # so only the fact that something changed is asserted)
    assert not torch.equal(scores["react"], scores["energy"])


def test_a_fit_survives_state_dict(setup):
    model, norm, train = setup
    for name in ("react", "dice", "knn", "vim"):
        first, second = build_detectors([name], model, norm, CPU, options={"knn": {"k": 3}})[0], \
            build_detectors([name], model, norm, CPU, options={"knn": {"k": 3}})[0]
        first.fit(train)
        second.load_state_dict(first.state_dict())
        a = score_images(model, train.images[:6], [first], norm, CPU)[1][name]
        b = score_images(model, train.images[:6], [second], norm, CPU)[1][name]
        assert torch.equal(a, b), name


def test_user_errors(setup):
    model, norm, train = setup
    with pytest.raises(UserError, match="knn.k=41"):
        build_detectors(["knn"], model, norm, CPU, options={"knn": {"k": 41}})[0].fit(train)
    with pytest.raises(UserError, match="ash.percentile"):
        build_detectors(["ash"], model, norm, CPU, options={"ash": {"percentile": 99.9}})


# --------------------------------------------------------------------------- names


def test_all_is_the_papers_five_and_extended_adds_six():
    assert resolve_score_names("all") == list(DETECTOR_NAMES)
    assert resolve_score_names(["extended"]) == [*DETECTOR_NAMES, "react", "dice", "ash", "knn", "vim", "gen"]
    assert resolve_score_names(["gen", "extended"])[0] == "gen"
    with pytest.raises(UserError, match="extended"):
        resolve_score_names(["nope"])
    assert set(SCORE_NAMES) <= set(SCORE_ORDER)       # report orders every score


# --------------------------------------------------------------------------- against pytorch-ood


@pytest.fixture(scope="module")
def pood():
    return pytest.importorskip("pytorch_ood.detector")


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(7)
    n, d, k = 200, 16, 5
    train = torch.relu(torch.randn(n, d, generator=g))
    test = torch.relu(torch.randn(30, d, generator=g)) * 1.3
    return train, torch.arange(n) % k, test, torch.randn(k, d, generator=g), torch.randn(k, generator=g)


def test_react_matches_pytorch_ood(pood, tensors):
    train, labels, test, w, b = tensors
    theirs = pood.ReAct(backbone=lambda x: x, head=lambda z: F.linear(z.flatten(1), w, b), percentile=0.9)
    theirs.fit_feature_maps(train[:, :, None, None], labels)
    ours = energy_score(react_logits(test, w, b, react_threshold(train, 90)))
    assert torch.allclose(ours, -theirs.predict_feature_maps(test[:, :, None, None]).double(), atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.9, 0.5])
def test_dice_matches_pytorch_ood(pood, tensors, sparsity):
    train, labels, test, w, b = tensors
    theirs = pood.DICE(encoder=None, w=w, b=b, p=sparsity).fit_features(train, labels)
    mask = dice_mask(w, train.mean(dim=0), sparsity)
    assert torch.equal(mask, theirs.masked_w != 0)
    ours = energy_score(dice_logits(test, w, b, mask))
    assert torch.allclose(ours, -theirs.predict_features(test).double(), atol=1e-5)


@pytest.mark.parametrize("variant", ["p", "b", "s"])
def test_ash_matches_pytorch_ood(pood, tensors, variant):
    _, _, test, w, b = tensors
    theirs = pood.ASH(backbone=lambda x: x, head=lambda z: F.linear(z.flatten(1), w, b), variant=f"ash-{variant}",
                      percentile=0.65)
    ours = energy_score(F.linear(ash_features(test, variant, 65), w, b))
    assert torch.allclose(ours, -theirs.predict_feature_maps(test[:, :, None, None]).double(), atol=1e-5)


def test_knn_matches_pytorch_ood(pood, tensors):
    train, labels, test, _, _ = tensors
    theirs = pood.KNN(encoder=None, k=5)
    theirs.fit_features(train, labels)
    ours = kth_neighbour_distance(l2_normalise(test), l2_normalise(train), 5)
    assert np.allclose(ours.numpy(), np.asarray(theirs.predict_features(test)), atol=1e-6)


def test_vim_matches_pytorch_ood(pood, tensors):
    train, labels, test, w, b = tensors
    theirs = pood.ViM(encoder=None, d=6, w=w, b=b)
    theirs.fit_features(train, labels)
    fit = fit_vim(train, w, b, 6)
    assert fit.alpha.item() == pytest.approx(theirs.alpha, rel=1e-5)
    ours = vim_score(test, F.linear(test, w, b), fit)
    assert torch.allclose(ours, -theirs.predict_features(test).double(), atol=1e-4)


def test_gen_matches_pytorch_ood(pood, tensors):
    """pytorch-ood averages (we sum) the top-M terms and clamps p to [1e-7, 1 - 1e-7]; on logits whose
    probabilities stay inside that range the two agree up to the factor M."""
    _, _, test, w, b = tensors
    logits = F.linear(test, w, b) / 4
    for m in (3, 5):
        theirs = pood.GEN.score(logits, gamma=0.1, M=m).double()
        assert torch.allclose(gen_score(logits, 0.1, m), -m * theirs, atol=1e-5)
