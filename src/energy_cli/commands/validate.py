"""Validation of a composed config, run before any work: every key's rule (declared with the key's type and
default in config/schema.py), then the names that pick code (dataset, backbone, outliers, scores, OOD sets,
checked against their registries) and the checks that span several keys (m_in < m_out, one mean and std per
channel). One clear line per mistake, naming the key and what it accepts. (Hydra has already converted
every value to its key's type and rejected unknown keys and config-group choices while composing.)"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from energy_cli.config.rules import choice_check
from energy_cli.config.schema import leaf_keys, rule_for
from energy_cli.config.values import parse_margins
from energy_cli.errors import UserError

OWN_BACKBONE_KEYS = ("backbone.name", "backbone.arch", "backbone.head", "backbone._target_")


def check_backbone(cfg: DictConfig, names: list[str]) -> bool:
    """backbone.name is a known backbone, or the backbone config has `_target_` (then any name, or none, will
    do); train with backbone=custom needs `_target_` (the other commands take it from the checkpoint). Returns
    whether a `_target_` is given."""
    target = OmegaConf.select(cfg, "backbone._target_")
    if target:
        return True
    choice_check(cfg, "backbone.name", names)
    if str(OmegaConf.select(cfg, "backbone.name")) == "custom" and cfg.command == "train":
        raise UserError("backbone=custom needs backbone._target_=PACKAGE.MODULE.CLASS (an importable class or "
                        "function returning an nn.Module that maps images to logits)")
    return False


# scores that perturb their inputs along gradients through the model, and the keys that switch that on
GRADIENT_SCORES = {"odin": ("odin.noise", "odin.tune"), "mahalanobis": ("mahalanobis.noise", "mahalanobis.tune")}


def check_int8(cfg: DictConfig, score_names: list[str]) -> None:
    """precision=int8 quantizes a trained model for `eval` and `score`; its scores cannot take input gradients."""
    if cfg.command not in ("eval", "score"):
        raise UserError(f"precision=int8 is for eval and score (a trained model quantized for scoring); "
                        f"{cfg.command} runs in fp32 or bf16: precision=auto, fp32 or bf16")
    for name in score_names:
        noise, tune = GRADIENT_SCORES.get(name, (None, None))
        if noise and (float(OmegaConf.select(cfg, noise)) > 0 or OmegaConf.select(cfg, tune)):
            raise UserError(f"score={name} perturbs its inputs along gradients through the model, which the int8 "
                            f"model does not give: set {noise}=0 (and {tune}=false), drop {name}, or use "
                            "precision=fp32")


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Raise UserError for the first invalid value in `cfg` (the config of one command): first the names
    that pick code (dataset, backbone, outliers), then every key's rule, then the checks across keys.
    Returns the typed values the command's `run` takes besides the config (finetune: `margins`, a Margins,
    or None for loss=oe)."""
    command = cfg.command
    if command == "report":   # report must not import torch (the registries below do)
        for key in leaf_keys(cfg):
            rule = rule_for(key)
            if rule is not None:
                rule(cfg, key)
        return {}
    # lazy: the registries import torch
    from energy_cli.data import ID_DATASETS, OUTLIERS, resolve_ood_names
    from energy_cli.detectors import resolve_score_names
    from energy_cli.models import NAMES

    choice_check(cfg, "dataset.name", sorted(ID_DATASETS))
    target = check_backbone(cfg, NAMES)
    if command == "finetune":
        choice_check(cfg, "outliers.name", sorted(OUTLIERS))
    for key in leaf_keys(cfg):
        if target and key.startswith("backbone.") and key not in OWN_BACKBONE_KEYS:
            continue    # the arguments of the user's own model: its constructor checks them
        rule = rule_for(key)
        if rule is not None:
            rule(cfg, key)
    if command in ("train", "finetune", "eval", "score"):
        channels = int(str(cfg.dataset.channels))
        for key in ("dataset.mean", "dataset.std"):
            value = OmegaConf.select(cfg, key)
            if str(value) == "auto":   # measured from the training images, one per channel
                continue
            count = len(value) if isinstance(value, ListConfig) else 1
            if count != channels:
                raise UserError(f"{key} has {count} values, but dataset={cfg.dataset.name} has {channels} channel"
                                f"{'s' if channels > 1 else ''}: give one per channel")
    score_names = resolve_score_names(cfg.score) if command == "eval" else []
    if command == "eval":
        resolve_ood_names(cfg.ood, cfg.dataset)
    if str(cfg.precision) == "int8":
        check_int8(cfg, score_names)
    if command == "finetune" and cfg.loss.name == "energy":
        return {"margins": parse_margins(cfg.m_in, cfg.m_out)}
    return {}
