"""OOD detection metrics. ID is the positive class; scores are oriented higher = more ID.

All functions take two 1-D arrays of scores (ID, OOD) and return a fraction in [0, 1].
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _labelled(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError("metrics need at least one ID and one OOD score")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores contain NaN or infinity")
    labels = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    return labels, np.r_[id_scores, ood_scores]


def fpr_at_tpr(id_scores, ood_scores, tpr_level: float = 0.95) -> float:
    """FPR at `tpr_level` ID recall: the fraction of OOD samples accepted as ID (score >= threshold).

    The rule of the paper's code: take the ROC operating points, one per distinct score threshold (ties
    grouped), from the highest threshold down to the first point of full ID recall; pick the point whose
    ID recall is closest to `tpr_level` (on equal distance, the lowest threshold); return its FPR.
    """
    labels, scores = _labelled(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = fpr[1:], tpr[1:]                        # drop sklearn's (0, 0) point at threshold +inf
    last = int(np.searchsorted(tpr, tpr[-1]))          # first point reaching full recall
    fpr, tpr = fpr[last::-1], tpr[last::-1]            # lowest threshold first: argmin keeps it on ties
    return float(fpr[np.argmin(np.abs(tpr - tpr_level))])


def threshold_at_tpr(id_scores, tpr_level: float = 0.95) -> tuple[float, float]:
    """The deployable threshold at `tpr_level` ID recall, from ID scores alone: x is accepted as ID when
    score(x) >= threshold. Returns (threshold, the ID recall it gives on `id_scores`).

    Candidates are the distinct ID scores u_1 > u_2 > ...; u_j gives ID recall r_j = #{s_id >= u_j} / n.
    The threshold is the u_j whose r_j is closest to `tpr_level`, on equal distance the lower u_j (the higher
    recall). This is the ID recall of the operating point `fpr_at_tpr` picks (for tpr_level >= 0.5). That
    point is the lowest ROC threshold with this recall, so `fpr_at_tpr` reports the fraction of OOD scores
    above the next lower ID score u_{j+1} (or >= u_j when u_j is the lowest ID score); at u_j the OOD
    acceptance rate is the fraction of OOD scores >= u_j: at most the reported FPR95, and equal unless OOD
    scores fall in (u_{j+1}, u_j).
    """
    scores = np.sort(np.asarray(id_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("a threshold needs at least one ID score")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    values = np.unique(scores)[::-1]                                    # u_1 > u_2 > ...
    recall = (scores.size - np.searchsorted(scores, values, side="left")) / scores.size
    distance = np.abs(recall - tpr_level)
    j = len(values) - 1 - int(np.argmin(distance[::-1]))               # the last (lowest) of the nearest
    return float(values[j]), float(recall[j])


def acceptance_rate(scores, threshold: float) -> float:
    """Fraction of `scores` accepted as ID at `threshold` (score >= threshold)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return float(np.mean(scores >= threshold)) if scores.size else float("nan")


def roc_points(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve (FPR, TPR), ID positive, as scikit-learn's roc_curve draws it (for plots)."""
    labels, scores = _labelled(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive (ties count half): P(s_id > s_ood) + P(s_id = s_ood) / 2."""
    labels, scores = _labelled(id_scores, ood_scores)
    return float(roc_auc_score(labels, scores))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class and the score as is."""
    labels, scores = _labelled(id_scores, ood_scores)
    return float(average_precision_score(labels, scores))


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class and the score negated."""
    labels, scores = _labelled(id_scores, ood_scores)
    return float(average_precision_score(1 - labels, -scores))


def detection_metrics(id_scores, ood_scores) -> dict[str, float]:
    """fpr95, auroc, aupr_in, aupr_out, as fractions."""
    return {
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
    }


METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")


def draw_indices(n: int, size: int | None, draws: int, seed: int) -> list[np.ndarray]:
    """`draws` random subsets of `size` indices out of range(n), without replacement within a draw
    (all of them, in order, when size is None or >= n). Seeded, so every run draws the same subsets."""
    if size is None or size >= n:
        return [np.arange(n)] * draws
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(draws)]


def metrics_over_draws(id_scores, ood_scores, draws: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The four metrics for each draw of OOD indices (ID scores used in full every time), as arrays of
    shape (len(draws),): the paper's protocol, scoring each image once and resampling the scores."""
    ood_scores = np.asarray(ood_scores)
    per_draw = [detection_metrics(id_scores, ood_scores[idx]) for idx in draws]
    return {name: np.array([d[name] for d in per_draw]) for name in METRIC_NAMES}
