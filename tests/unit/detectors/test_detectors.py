"""ODIN and Mahalanobis: the pure math (scores.py) against hand computations, and the detectors that run
the model (detectors.py): perturbation direction, frozen parameters, batching, every backbone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import EmpiricalCovariance

from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.detectors import DETECTOR_NAMES, build_detectors
from energy_cli.detectors.base import Batch
from energy_cli.detectors.mahalanobis import Mahalanobis
from energy_cli.detectors.odin import ODIN, perturb
from energy_cli.detectors.scoring import score_images
from energy_cli.engine.runtime import Runtime
from energy_cli.models import build_model
from energy_cli.ood.scores import (
    GaussianFit,
    distance_to_class,
    fit_class_gaussians,
    mahalanobis_distances,
    mahalanobis_score,
    max_softmax,
    msp_score,
    odin_score,
)

CPU = Runtime(device=torch.device("cpu"), progress=False)


def grey_model(seed=0, classes=10):
    torch.manual_seed(seed)
    return build_model({"name": "small_cnn", "width": 8}, classes, 1).eval()


def random_images(n, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def forward(model, images, normalizer):
    x = normalizer(images)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
    return Batch(x, logits.float(), feats.float())


# --------------------------------------------------------------------------- ODIN: pure


def test_contract_order_of_all_scores():
    assert DETECTOR_NAMES == ("msp", "maxlogit", "energy", "odin", "mahalanobis")


def test_odin_at_temperature_1_is_msp_exactly():
    logits = torch.randn(200, 10) * 4
    assert torch.equal(odin_score(logits, 1.0), msp_score(logits))


def test_odin_score_by_hand():
    logits = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    t = 10.0
    e1, e3 = np.exp(0.1), np.exp(0.3)
    assert odin_score(logits, t).tolist() == pytest.approx([e3 / (e1 + e3), 0.5], abs=1e-7)
    assert max_softmax(logits, 1.0).tolist() == pytest.approx([np.exp(3) / (np.exp(1) + np.exp(3)), 0.5], abs=1e-7)


@pytest.mark.parametrize("t", [1.0, 1000.0])
def test_odin_orientation(t):
    confident, flat = torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    assert odin_score(confident, t).item() > odin_score(flat, t).item()


# --------------------------------------------------------------------------- ODIN: the detector


def test_odin_detector_with_t1_and_no_noise_equals_msp_exactly():
    model, norm = grey_model(), Normalizer([0.3], [0.4])
    images = random_images(37)
    dets = build_detectors(["msp", "odin"], model, norm, CPU, odin_temperature=1.0, odin_noise=0.0)
    _, scores = score_images(model, images, dets, norm, CPU, batch_size=16)
    assert torch.equal(scores["odin"], scores["msp"])


@pytest.mark.parametrize("t", [1.0, 1000.0])
def test_odin_perturbation_raises_the_predicted_class_softmax(t):
    model, norm = grey_model(), Normalizer([0.3], [0.4])
    batch = forward(model, random_images(64), norm)
    target = batch.logits.argmax(1)
    rows = torch.arange(len(target))

    def loss(logits, _, part):
        return -F.log_softmax(logits / t, dim=1).gather(1, target[part, None]).sum()

    x2 = perturb(model, batch.x, loss, 0.002, norm.std / 255, CPU, chunk=24)
    with torch.no_grad():
        logits2 = model(x2)
    # compared as log-probabilities in fp64: at T = 1000 an untrained model's softmax is 1/K to fp32 precision
    after = F.log_softmax(logits2.double() / t, dim=1)[rows, target]
    before = F.log_softmax(batch.logits.double() / t, dim=1)[rows, target]
    assert (after > before).all()
    # the step is noise / std per channel in the normalised space = noise in [0, 1] pixel units
    step = (x2 - batch.x).abs() * 0.4
    assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], 0.002), rtol=1e-4)
    assert (step > 0).float().mean() > 0.9


def test_odin_detector_matches_a_reference_implementation():
    """The reference code's recipe written out: CE to the argmax at T, sign of the input gradient divided
    by the channel std, subtract noise times it, max softmax at T of the perturbed input."""
    model, norm = grey_model(1), Normalizer([0.3], [0.4])
    images = random_images(20, seed=3)
    t, eps = 1000.0, 0.0014
    x = norm(images).requires_grad_(True)
    out = model(x)
    loss = torch.nn.CrossEntropyLoss()(out / t, out.argmax(1))
    loss.backward()
    x_pert = x.detach() - eps * torch.sign(x.grad) / 0.4
    with torch.no_grad():
        want = F.softmax(model(x_pert) / t, dim=1).max(1).values
    model.zero_grad(set_to_none=True)

    odin = ODIN(model, norm, CPU, t, eps)
    _, scores = score_images(model, images, [odin], norm, CPU, batch_size=7)
    assert torch.allclose(scores["odin"], want.double(), rtol=0, atol=1e-7)
    unperturbed = odin_score(forward(model, images, norm).logits, t)
    assert not torch.allclose(scores["odin"], unperturbed, rtol=0, atol=1e-9)


def test_perturbation_computes_no_weight_gradients_and_restores_flags():
    model, norm = grey_model(), Normalizer([0.3], [0.4])
    model.fc.weight.requires_grad_(False)      # a flag that must survive
    dets = build_detectors(["odin", "mahalanobis"], model, norm, CPU, odin_noise=0.01, mahalanobis_noise=0.01)
    train = ImageSet("train", random_images(50, seed=1), torch.arange(50) % 10)
    dets[1].fit(train)
    seen = []
    hooks = [p.register_hook(lambda g, name=name: seen.append(name)) for name, p in model.named_parameters()
             if p.requires_grad]
    score_images(model, random_images(10), dets, norm, CPU)
    for h in hooks:
        h.remove()
    assert seen == []                                   # no weight gradient was ever computed
    assert all(p.grad is None for p in model.parameters())
    assert not model.fc.weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "fc.weight")


# --------------------------------------------------------------------------- Mahalanobis: pure

# Two classes in 2-D. Class 0: (1,2), (3,2), (2,5), mean (2,3), centred (-1,-1), (1,-1), (0,2).
# Class 1: (10,0), (12,2), (11,-2), mean (11,0), centred (-1,0), (1,2), (0,-2).
# Sum of the centred outer products: [[4, 2], [2, 14]]; shared covariance = that / 6 = [[2/3, 1/3], [1/3, 7/3]],
# determinant 13/9, inverse = (1/13) [[21, -3], [-3, 6]]; d(v) = (21 v1^2 - 6 v1 v2 + 6 v2^2) / 13.
TOY_FEATURES = torch.tensor([[1.0, 2], [3, 2], [2, 5], [10, 0], [12, 2], [11, -2]])
TOY_LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def test_mahalanobis_fit_by_hand():
    fit = fit_class_gaussians(TOY_FEATURES, TOY_LABELS)
    assert fit.classes.tolist() == [0, 1]
    assert fit.means.tolist() == [[2.0, 3.0], [11.0, 0.0]]
    assert torch.allclose(fit.precision, torch.tensor([[21.0, -3], [-3, 6]], dtype=torch.float64) / 13, atol=1e-12)


def test_mahalanobis_score_by_hand_with_a_non_identity_covariance():
    fit = fit_class_gaussians(TOY_FEATURES, TOY_LABELS)
    points = torch.tensor([[2.0, 4], [3, 3], [11, 1], [6.5, 1.5]])
    # (2,4): v0 = (0,1) -> 6/13; v1 = (-9,4) -> (1701 + 216 + 96)/13 = 2013/13
    # (3,3): v0 = (1,0) -> 21/13 (the same offset as above, along the high-variance-ratio axis: farther);
    #        v1 = (-8,3) -> (1344 + 144 + 54)/13 = 1542/13
    # (11,1): v1 = (0,1) -> 6/13; v0 = (9,-2) -> (1701 + 108 + 24)/13 = 1833/13
    # (6.5,1.5): v0 = (4.5,-1.5) -> (425.25 + 40.5 + 13.5)/13 = 479.25/13; v1 = (-4.5,1.5) -> the same
    want = torch.tensor([[6, 2013], [21, 1542], [1833, 6], [479.25, 479.25]], dtype=torch.float64) / 13
    assert torch.allclose(mahalanobis_distances(points, fit), want, atol=1e-9)
    assert torch.allclose(mahalanobis_score(points, fit), -torch.tensor([6, 21, 6, 479.25], dtype=torch.float64) / 13, atol=1e-9)
    assert mahalanobis_score(points, fit).dtype == torch.float64
    own = distance_to_class(points, fit, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(own, torch.tensor([6, 21, 6, 479.25], dtype=torch.float64) / 13, atol=1e-9)


def test_mahalanobis_orientation():
    fit = fit_class_gaussians(TOY_FEATURES, TOY_LABELS)
    near, far = torch.tensor([[2.0, 3.0]]), torch.tensor([[-30.0, 40.0]])
    assert mahalanobis_score(near, fit).item() == 0.0
    assert mahalanobis_score(near, fit).item() > mahalanobis_score(far, fit).item()


def test_mahalanobis_fit_agrees_with_scikit_learn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=g)
    feats = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3 * labels[:, None].float()
    fit = fit_class_gaussians(feats, labels)
    x, y = feats.double().numpy(), labels.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(5)])
    sk = EmpiricalCovariance(assume_centered=True).fit(x - means[y])
    assert np.allclose(fit.means.numpy(), means, atol=1e-12)
    assert np.allclose(fit.precision.numpy(), sk.precision_, rtol=1e-8, atol=1e-10)
    test = torch.randn(30, 6, generator=g) * 3
    want = np.stack([sk.mahalanobis(test.double().numpy() - means[c]) for c in range(5)], axis=1)
    assert np.allclose(mahalanobis_distances(test, fit).numpy(), want, rtol=1e-9, atol=1e-9)


def test_mahalanobis_fit_skips_classes_without_samples_and_survives_a_singular_covariance():
    feats = torch.tensor([[0.0, 1, 5], [2, 1, 5], [10, 3, 5], [12, 3, 5]])   # the last two dimensions are constant per class
    fit = fit_class_gaussians(feats, torch.tensor([2, 2, 7, 7]))
    assert fit.classes.tolist() == [2, 7]
    assert torch.isfinite(fit.precision).all()
    # pinv: only the first dimension carries variance (1 within each class), the others are ignored
    assert mahalanobis_score(torch.tensor([[3.0, 1, 5]]), fit).item() == pytest.approx(-4.0, abs=1e-9)


# --------------------------------------------------------------------------- Mahalanobis: the detector


def test_mahalanobis_perturbation_moves_features_towards_the_closest_mean():
    model, norm = grey_model(2), Normalizer([0.3], [0.4])
    train = ImageSet("train", random_images(200, seed=4), torch.arange(200) % 10)
    clean = Mahalanobis(model, norm, CPU, noise=0.0)
    clean.fit(train)
    noisy = Mahalanobis(model, norm, CPU, noise=0.002)
    noisy.load_state_dict(clean.state_dict())
    batch = forward(model, random_images(40, seed=5), norm)
    before, after = clean.score(batch), noisy.score(batch)
    assert (before <= 0).all()
    assert (after > before).all()


def test_mahalanobis_detector_fits_on_training_features():
    model, norm = grey_model(3), Normalizer([0.3], [0.4])
    train = ImageSet("train", random_images(120, seed=6), torch.arange(120) % 4)
    det = Mahalanobis(model, norm, CPU, batch_size=50)
    det.fit(train)
    with torch.no_grad():
        feats = model.features(norm(train.images)).double().numpy()
    y = train.labels.numpy()
    means = np.stack([feats[y == c].mean(0) for c in range(4)])
    assert np.allclose(det.state_dict()["means"].numpy(), means, atol=1e-5)
    images = random_images(9, seed=7)
    with torch.no_grad():
        f = model.features(norm(images)).double()
    want = -mahalanobis_distances(f, GaussianFit(torch.arange(4), torch.from_numpy(means),
                                                 det.state_dict()["precision"])).min(1).values
    _, scores = score_images(model, images, [det], norm, CPU)
    assert torch.allclose(scores["mahalanobis"].double(), want, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- every backbone


# models from elsewhere, wrapped by models.adapter (the features are their head's input)
SPECS = {"torchvision": {"name": "torchvision", "arch": "mobilenet_v3_small"},
         "custom": {"name": "custom", "_target_": "usernets.TinyNet", "width": 6}}


@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 8, 8)), ("wrn40_2", (3, 32, 32)), ("resnet18", (3, 16, 16)),
                                        ("torchvision", (1, 8, 8)), ("custom", (3, 8, 8))])
def test_all_scores_run_on_every_backbone(name, shape):
    torch.manual_seed(0)
    model = build_model(SPECS.get(name, {"name": name}), 3, shape[0], shape[1]).eval()
    norm = Normalizer([0.5] * shape[0], [0.25] * shape[0])
    train = ImageSet("train", random_images(12, shape, seed=8), torch.arange(12) % 3)
    dets = build_detectors(list(DETECTOR_NAMES), model, norm, CPU, odin_noise=0.001, mahalanobis_noise=0.001)
    dets[-1].fit(train)
    images = random_images(5, shape, seed=9)
    logits, scores = score_images(model, images, dets, norm, CPU, batch_size=3)
    with torch.no_grad():
        want_logits, feats = model.forward_with_features(norm(images))
    assert torch.allclose(logits, want_logits, atol=1e-5)
    assert list(scores) == list(DETECTOR_NAMES)
    for values in scores.values():
        assert values.shape == (5,) and values.dtype == torch.float64 and torch.isfinite(values).all()
    unperturbed = build_detectors(["odin", "mahalanobis"], model, norm, CPU, odin_noise=0.0)
    unperturbed[1].load_state_dict(dets[-1].state_dict())
    _, plain = score_images(model, images, unperturbed, norm, CPU)
    assert torch.allclose(plain["mahalanobis"].double(), mahalanobis_score(feats, dets[-1].fitted()).double(),
                          rtol=1e-4, atol=1e-3)
    assert (scores["mahalanobis"] > plain["mahalanobis"]).all()      # perturbation towards the closest mean
    assert not torch.equal(scores["odin"], plain["odin"])


def test_scores_do_not_depend_on_the_batch_size():
    model, norm = grey_model(), Normalizer([0.3], [0.4])
    dets = build_detectors(list(DETECTOR_NAMES), model, norm, CPU, odin_noise=0.0014, mahalanobis_noise=0.001)
    dets[-1].fit(ImageSet("train", random_images(60, seed=10), torch.arange(60) % 10))
    images = random_images(25, seed=11)
    logits_a, a = score_images(model, images, dets, norm, CPU, batch_size=4)
    logits_b, b = score_images(model, images, dets, norm, CPU, batch_size=100)
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    for name in DETECTOR_NAMES:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name
    empty_logits, empty = score_images(model, images[:0], dets, norm, CPU)
    assert empty_logits.shape == (0, 10) and all(v.shape == (0,) for v in empty.values())


def test_perturbation_does_not_depend_on_the_gradient_chunk():
    model, norm = grey_model(4), Normalizer([0.3], [0.4])
    batch = forward(model, random_images(30, seed=12), norm)
    target = batch.logits.argmax(1)

    def loss(logits, _, part):
        return -F.log_softmax(logits, dim=1).gather(1, target[part, None]).sum()

    whole = perturb(model, batch.x, loss, 0.01, norm.std / 255, CPU)
    pieces = perturb(model, batch.x, loss, 0.01, norm.std / 255, CPU, chunk=7)
    # equal up to the sign of gradient entries that are zero to rounding (other conv kernels per batch size)
    assert (whole != pieces).float().mean() < 0.01
