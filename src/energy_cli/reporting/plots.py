"""Pictures: score histograms (ID vs one OOD set, one panel per score, like the paper's Figure 1), ROC
curves, and the report's heatmaps. PNG files through matplotlib's headless Agg backend, written atomically.

Drawing only: every number plotted (curves, thresholds, metric values) is computed by the caller.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from energy_cli.runs.files import atomic_write_bytes

SCORE_LABELS = {
    "energy": "negative energy score  -E(x)",
    "msp": "softmax score  max_y p(y|x)",
    "maxlogit": "max logit  max_k f_k(x)",
}
ID_COLOR, OOD_COLOR = "#1f77b4", "#ff7f0e"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def score_histograms(path: Path, id_scores: Mapping[str, np.ndarray], ood_scores: Mapping[str, np.ndarray],
                     ood_name: str, thresholds: Mapping[str, float] | None = None, title: str = "") -> None:
    """One panel per score (in the order of `id_scores`): density histograms of the ID scores and of the
    OOD set's, on shared bins, with the deployment threshold as a dashed line."""
    plt = _pyplot()
    names = list(id_scores)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        a, b = np.asarray(id_scores[name], float), np.asarray(ood_scores[name], float)
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 51)
        ax.hist(a, bins=bins, density=True, alpha=0.55, color=ID_COLOR, label=f"in-distribution ({len(a)})")
        ax.hist(b, bins=bins, density=True, alpha=0.55, color=OOD_COLOR, label=f"{ood_name} ({len(b)})")
        if thresholds and name in thresholds:
            ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=1, label="95% ID TPR threshold")
        ax.set_xlabel(SCORE_LABELS.get(name, name))
        ax.set_ylabel("density")
        ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def roc_curves(path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], ood_name: str,
               labels: Mapping[str, str] | None = None, points: Mapping[str, tuple[float, float]] | None = None,
               title: str = "") -> None:
    """ROC curves (FPR on x, ID TPR on y), one per score, against one OOD set; `points` marks an operating
    point per score (e.g. the 95% ID TPR threshold)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    for name, (fpr, tpr) in curves.items():
        line, = ax.plot(fpr, tpr, linewidth=1.5, label=(labels or {}).get(name, name))
        if points and name in points:
            ax.plot(*points[name], marker="o", color=line.get_color(), markersize=5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false positive rate ({ood_name} accepted as ID)")
    ax.set_ylabel("true positive rate (ID accepted)")
    ax.set_title(title or f"ROC: in-distribution vs {ood_name}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    fig.tight_layout()
    _save(fig, path)


def heatmap(path: Path, values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
            row_name: str, col_name: str, title: str, value_name: str = "average FPR95 (%)",
            lower_is_better: bool = True) -> None:
    """A rows x columns grid of values, each cell annotated; NaN cells (combinations not run) stay blank."""
    plt = _pyplot()
    values = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(max(4.8, 1.8 + 0.9 * len(col_labels)), max(3.4, 1.4 + 0.5 * len(row_labels))))
    cmap = plt.get_cmap("viridis_r" if lower_is_better else "viridis").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(col_name)
    ax.set_ylabel(row_name)
    finite = values[np.isfinite(values)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if math.isfinite(values[i, j]):
                dark = (values[i, j] > middle) if lower_is_better else (values[i, j] < middle)
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=value_name)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
