"""The paper's headline numbers (Liu et al., NeurIPS 2020, WideResNet-40-2), for `energy-ood report`.

Mean over the six OOD test sets (Textures, SVHN, Places365, LSUN-Crop, LSUN-Resize, iSUN), in percent.
FPR95 figures are those of the authors' code README; some AUROC / AUPR-In cells come from secondary sources.
ID accuracy = 100 - the reported ID test error (the fine-tuned errors are given as "about").
"""

from __future__ import annotations

CITATION = "Liu et al. 2020"
PAPER_OOD_SETS = ("textures", "svhn", "places365", "lsun_c", "lsun_r", "isun")
BACKBONE = "wrn40_2"
PRESETS = {"cifar10": "cifar10_wrn", "cifar100": "cifar100_wrn"}

# (dataset, stage, score) -> the method's row in the paper's table
METHODS: dict[tuple[str, str, str], str] = {}
# (dataset, method) -> metrics in percent
RESULTS: dict[tuple[str, str], dict[str, float]] = {}


def _add(method: str, stage: str, score: str, cifar10: tuple[float, ...], cifar100: tuple[float, ...]) -> None:
    for dataset, values in (("cifar10", cifar10), ("cifar100", cifar100)):
        METHODS[(dataset, stage, score)] = method
        RESULTS[(dataset, method)] = dict(zip(("fpr95", "auroc", "aupr_in", "id_acc"), values))


#     method                      stage       score          CIFAR-10 FPR95/AUROC/AUPR-In(/ID acc)  CIFAR-100
_add("Softmax score",             "pretrain", "msp",         (51.04, 90.90, 97.92, 94.84), (80.41, 75.53, 93.93, 75.96))
_add("Energy score",              "pretrain", "energy",      (33.01, 91.88, 97.83, 94.84), (73.60, 79.56, 94.87, 75.96))
_add("ODIN",                      "pretrain", "odin",        (35.71, 91.09, 97.62, 94.84), (74.64, 77.43, 94.23, 75.96))
_add("Mahalanobis",               "pretrain", "mahalanobis", (37.08, 93.27, 98.49, 94.84), (54.64, 84.12, 95.88, 75.96))
_add("OE fine-tune",              "oe",       "msp",         (8.53, 98.30, 99.63),         (58.10, 85.19, 96.40))
_add("Energy fine-tune",          "energy",   "energy",      (3.32, 98.92, 99.75, 95.1),   (47.55, 88.46, 97.10, 75.4))


def reference(dataset: str, backbone: str, stage: str, score: str) -> tuple[str, dict[str, float]] | None:
    """(method name, the paper's numbers) for a result of this kind, or None when the paper has no such row
    (another dataset or backbone, or a score the paper did not report for that model)."""
    if backbone != BACKBONE:
        return None
    method = METHODS.get((dataset, stage, score))
    return None if method is None else (method, RESULTS[(dataset, method)])

