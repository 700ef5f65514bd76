import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from energy_cli.ood.metrics import (
    acceptance_rate,
    aupr_in,
    aupr_out,
    auroc,
    detection_metrics,
    draw_indices,
    fpr_at_tpr,
    metrics_over_draws,
    roc_points,
    threshold_at_tpr,
)


def reference_fpr95(id_scores, ood_scores, level=0.95):
    """The paper's rule written out directly: sweep the distinct thresholds from high to low, stopping at
    the first one that accepts every ID sample; choose the threshold whose ID recall is closest to `level`
    (on equal distance the later, i.e. lower, threshold); report the fraction of OOD samples with
    score >= that threshold."""
    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    best = None
    for t in sorted(set(np.r_[id_scores, ood_scores]), reverse=True):
        recall = np.mean(id_scores >= t)
        distance = abs(recall - level)
        if best is None or distance <= best[0]:
            best = (distance, np.mean(ood_scores >= t))
        if recall == 1.0:
            break
    return best[1]


def test_perfect_separation():
    id_s, ood_s = np.array([5.0, 6.0, 7.0, 8.0]), np.array([1.0, 2.0, 3.0])
    m = detection_metrics(id_s, ood_s)
    assert m == {"fpr95": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_reversed_separation():
    m = detection_metrics([1.0, 2.0], [5.0, 6.0, 7.0])
    assert m["fpr95"] == 1.0 and m["auroc"] == 0.0


def test_full_overlap_all_tied():
    """All scores equal: one threshold, everything accepted; ties count half in the AUROC."""
    m = detection_metrics(np.zeros(20), np.zeros(30))
    assert m["fpr95"] == 1.0
    assert m["auroc"] == 0.5
    assert m["aupr_in"] == pytest.approx(20 / 50)
    assert m["aupr_out"] == pytest.approx(30 / 50)


def test_fpr95_hand_case():
    # 20 ID scores 1..20; OOD scores 0.5 (below every ID), 1.5 (above only the lowest ID), 10.5.
    id_s = np.arange(1, 21, dtype=float)
    ood_s = np.array([0.5, 1.5, 10.5])
    # ID recall 19/20 = 0.95 holds for thresholds 2 and 1.5; the rule takes the lower one, 1.5, which
    # accepts the OOD scores 1.5 and 10.5 -> FPR 2/3.
    assert fpr_at_tpr(id_s, ood_s) == pytest.approx(2 / 3)
    assert reference_fpr95(id_s, ood_s) == pytest.approx(2 / 3)


def test_fpr95_takes_the_lowest_threshold_of_the_nearest_recall():
    # 10 ID scores 0..9: recall 0.9 (thresholds 1 and 0.5) is nearer 0.95 than 1.0 in floating point
    # (|0.9 - 0.95| < |1.0 - 0.95|); of its two thresholds the lower, 0.5, accepts the OOD score 0.5.
    id_s = np.arange(10, dtype=float)
    ood_s = np.array([-1.0, 0.5])
    assert fpr_at_tpr(id_s, ood_s) == 0.5
    assert reference_fpr95(id_s, ood_s) == 0.5


def test_ties_between_id_and_ood_are_grouped():
    id_s = np.array([1.0, 1.0, 1.0, 1.0, 2.0])
    ood_s = np.array([1.0, 0.0])
    # thresholds: 2 (recall .2), 1 (recall 1.0, OOD accepted 1/2) -> 1.0 is nearest 0.95
    assert fpr_at_tpr(id_s, ood_s) == 0.5
    assert auroc(id_s, ood_s) == pytest.approx((4 * 0.5 + 1 + 5) / 10)  # pairs: ties count half


@pytest.mark.parametrize("seed", range(8))
def test_fpr95_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    id_s = np.round(rng.normal(1.0, 1.0, 300), 1)   # rounding creates many ties
    ood_s = np.round(rng.normal(0.0, 1.0, 200), 1)
    assert fpr_at_tpr(id_s, ood_s) == pytest.approx(reference_fpr95(id_s, ood_s))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_is_pairwise_probability(seed):
    rng = np.random.default_rng(seed)
    id_s = np.round(rng.normal(0.5, 1, 80), 1)
    ood_s = np.round(rng.normal(0, 1, 60), 1)
    diff = id_s[:, None] - ood_s[None, :]
    pairwise = np.mean(diff > 0) + 0.5 * np.mean(diff == 0)
    assert auroc(id_s, ood_s) == pytest.approx(pairwise)


def test_aupr_against_sklearn_and_by_hand():
    id_s = np.array([0.9, 0.8, 0.3])
    ood_s = np.array([0.7, 0.1])
    labels = np.r_[np.ones(3), np.zeros(2)]
    scores = np.r_[id_s, ood_s]
    assert aupr_in(id_s, ood_s) == pytest.approx(average_precision_score(labels, scores))
    assert aupr_out(id_s, ood_s) == pytest.approx(average_precision_score(1 - labels, -scores))
    # by hand, ranking by score: ID, ID, OOD, ID, OOD -> AP_in = (1/1 + 2/2 + 3/4) / 3
    assert aupr_in(id_s, ood_s) == pytest.approx((1 + 1 + 0.75) / 3)
    # OOD positive, ranking by -score: OOD(0.1), ID(0.3), OOD(0.7), ... -> AP_out = (1/1 + 2/3) / 2
    assert aupr_out(id_s, ood_s) == pytest.approx((1 + 2 / 3) / 2)
    assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(labels, scores))


def test_metrics_reject_nan():
    with pytest.raises(ValueError):
        detection_metrics([1.0, np.nan], [0.0])


def test_draw_indices():
    draws = draw_indices(100, 20, 5, seed=3)
    assert len(draws) == 5 and all(len(d) == 20 and len(set(d)) == 20 for d in draws)
    assert not all(np.array_equal(draws[0], d) for d in draws[1:])
    again = draw_indices(100, 20, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    full = draw_indices(10, None, 3, seed=0)
    assert all(np.array_equal(d, np.arange(10)) for d in full)
    assert all(np.array_equal(d, np.arange(10)) for d in draw_indices(10, 50, 2, seed=0))


def test_metrics_over_draws_equals_metrics_on_subsets():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(1, 1, 200), rng.normal(0, 1, 500)
    draws = draw_indices(len(ood_s), 100, 4, seed=1)
    out = metrics_over_draws(id_s, ood_s, draws)
    for i, idx in enumerate(draws):
        direct = detection_metrics(id_s, ood_s[idx])
        for name, value in direct.items():
            assert out[name][i] == pytest.approx(value)


def test_threshold_at_tpr_hand_case():
    # 20 ID scores 1..20: recall 19/20 = 0.95 at the threshold 2 (accept score >= 2).
    assert threshold_at_tpr(np.arange(1, 21, dtype=float)) == (2.0, 0.95)
    # ties: four scores of 1 and one of 2 -> recalls 0.2 (threshold 2) and 1.0 (threshold 1)
    assert threshold_at_tpr([1.0, 1.0, 1.0, 1.0, 2.0]) == (1.0, 1.0)
    # 10 scores 0..9: recall 0.9 (threshold 1) is nearer 0.95 than 1.0 in floating point, as in fpr_at_tpr
    assert threshold_at_tpr(np.arange(10, dtype=float)) == (1.0, 0.9)
    # a level met exactly between two recalls takes the lower threshold: 4 scores, recalls .25 .5 .75 1
    assert threshold_at_tpr([4.0, 3.0, 2.0, 1.0], tpr_level=0.625) == (2.0, 0.75)
    with pytest.raises(ValueError):
        threshold_at_tpr([])


@pytest.mark.parametrize("seed", range(8))
def test_threshold_agrees_with_the_fpr95_rule(seed):
    """The stored threshold has the ID recall of the FPR95 operating point; FPR95 is the OOD fraction above
    the next lower ID score, and the acceptance rate at the threshold is the OOD fraction >= it."""
    rng = np.random.default_rng(seed)
    id_s = np.round(rng.normal(1.0, 1.0, 300), 1)
    ood_s = np.round(rng.normal(0.0, 1.0, 200), 1)
    t, recall = threshold_at_tpr(id_s)
    assert recall == pytest.approx(np.mean(id_s >= t)) and t in id_s
    lower = id_s[id_s < t]
    fpr95 = fpr_at_tpr(id_s, ood_s)
    expected = np.mean(ood_s > lower.max()) if lower.size else np.mean(ood_s >= t)
    assert fpr95 == pytest.approx(expected)
    assert acceptance_rate(ood_s, t) == pytest.approx(np.mean(ood_s >= t)) and acceptance_rate(ood_s, t) <= fpr95
    # with no OOD score between the threshold and the next lower ID score, the two coincide
    gap = (ood_s > (lower.max() if lower.size else -np.inf)) & (ood_s < t)
    assert acceptance_rate(ood_s[~gap], t) == pytest.approx(fpr_at_tpr(id_s, ood_s[~gap]))
    # the recall of the chosen ROC point equals the threshold's recall
    fpr, tpr, thr = roc_curve(np.r_[np.ones(id_s.size), np.zeros(ood_s.size)], np.r_[id_s, ood_s],
                              drop_intermediate=False)
    assert recall in set(tpr[np.isclose(fpr, fpr95)])


def test_roc_points_end_at_the_corners():
    fpr, tpr = roc_points([3.0, 2.0, 1.0], [0.0, 2.5])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
