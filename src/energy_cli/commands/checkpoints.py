"""Checkpoints for the commands: finding the one to start from or evaluate, checking it fits the config,
loading it into a model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from energy_cli.config.overrides import key_of
from energy_cli.data.batches import Normalizer
from energy_cli.engine import winograd
from energy_cli.engine.fusion import fold_batchnorm
from energy_cli.engine.runtime import Runtime, prepare_model
from energy_cli.errors import UserError
from energy_cli.models import Classifier, backbone_label, backbone_name, build_model, load_plain_weights
from energy_cli.runs import checkpoint as ckpt_io
from energy_cli.runs.weights import read_checkpoint_or_weights
from energy_cli.runs.folders import display_path, search_roots

log = logging.getLogger(__name__)

STAGES = ("pretrain", "energy", "oe")
EXTERNAL_STAGE = "external"   # the stage of weights from a plain state_dict file (external_checkpoint)


def dataset_normalizer(cfg: DictConfig) -> Normalizer:
    """The normalisation the dataset config gives (for weights energy-ood did not train, which carry none)."""
    if "auto" in (str(cfg.dataset.mean), str(cfg.dataset.std)):
        raise UserError(f"plain weights carry no normalisation, and dataset={cfg.dataset.name} measures its own "
                        "(dataset.mean=auto): give the one the weights were trained with, e.g. "
                        "dataset.mean=[0.485,0.456,0.406] dataset.std=[0.229,0.224,0.225]")
    return Normalizer(cfg.dataset.mean, cfg.dataset.std)


def checkpoint_normalizer(ckpt: dict[str, Any]) -> Normalizer:
    return Normalizer(ckpt["mean"], ckpt["std"])


def find_checkpoint(cfg: DictConfig, stages: Iterable[str], what: str) -> Path:
    """`ckpt=` when given, else the newest finished run of this dataset (for dataset=folder: of the same
    dataset.path) and backbone in one of `stages`."""
    if cfg.get("ckpt"):
        return Path(str(cfg.ckpt)).expanduser()
    stages = tuple(stages)
    dataset, wanted = cfg.dataset.name, OmegaConf.to_container(cfg.backbone, resolve=True)
    target = wanted.get("_target_")
    backbone = f"backbone=custom backbone._target_={target}" if target else f"backbone={backbone_name(wanted)}"

    folder = cfg.dataset.get("path")   # dataset=folder: a run of the same name on another folder is not this one

    def same_data(c: dict[str, Any]) -> bool:
        if folder in (None, ""):
            return True
        held = ((c.get("config") or {}).get("dataset") or {}).get("path")
        return held not in (None, "") and Path(str(held)).expanduser().resolve() == Path(str(folder)).expanduser().resolve()

    def matches(c: dict[str, Any]) -> bool:
        return (c.get("dataset") == dataset and isinstance(c.get("backbone"), dict)
                and same_backbone(c["backbone"], wanted) and same_data(c)
                and c.get("stage") in stages and bool(c.get("finished")))

    found = ckpt_io.find_newest(search_roots(), matches)
    if found is None:
        raise UserError(f"no finished {what} run of dataset={dataset} {backbone} under outputs/ or "
                        f"multirun/ here; run `energy-ood train dataset={dataset} {backbone}` first "
                        "or pass ckpt=PATH")
    return found


def same_backbone(held: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a checkpoint's backbone config (`held`) is the one the config asks for: with a `_target_`, the
    same target (and `backbone=custom` without one takes any target); else the same name."""
    if wanted.get("_target_"):
        return held.get("_target_") == wanted["_target_"]
    if wanted.get("name") == "custom":
        return bool(held.get("_target_"))
    return not held.get("_target_") and backbone_name(held) == backbone_name(wanted)


HEADER_KEYS = ("dataset", "backbone", "num_classes", "in_channels", "image_size", "mean", "std", "stage")


def check_compatible(ckpt: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """The checkpoint must have been trained on this dataset (classes, channels, size) with this backbone
    (its name, and any backbone.* option given on the command line; other options come from the checkpoint)."""
    missing = [k for k in HEADER_KEYS if k not in ckpt] or ([] if isinstance(ckpt["backbone"], dict) else ["backbone"])
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it was not written by energy-ood train or finetune")
    d = cfg.dataset
    if ckpt.get("dataset") != d.name:
        raise UserError(f"{path} was trained on dataset={ckpt.get('dataset')}, not {d.name}; "
                        f"add dataset={ckpt.get('dataset')}")
    wanted = OmegaConf.to_container(cfg.backbone, resolve=True)
    want_name = backbone_name(wanted)
    if not same_backbone(ckpt["backbone"], wanted):
        target = ckpt["backbone"].get("_target_")
        held = f"backbone._target_={target}" if target else f"backbone={backbone_name(ckpt['backbone'])}"
        hint = "backbone=custom" if target and not wanted.get("_target_") else held
        raise UserError(f"{path} holds {held}, not {backbone_label(wanted)}; add {hint}")
    typed = {key_of(o).split(".", 1)[1] for o in task_overrides() if key_of(o).startswith("backbone.")}
    for key in sorted(set(wanted) & set(ckpt["backbone"]) & typed):   # options the user asked for
        if wanted[key] != ckpt["backbone"][key]:
            raise UserError(f"{path} holds a {want_name} with backbone.{key}={ckpt['backbone'][key]}, "
                            f"not {wanted[key]}; add backbone.{key}={ckpt['backbone'][key]} or drop that override")
    shape = (ckpt.get("num_classes"), ckpt.get("in_channels"), ckpt.get("image_size"))
    want = (int(d.num_classes), int(d.channels), int(d.image_size))
    if shape != want:
        raise UserError(f"{path} expects {shape[0]} classes and {shape[1]}x{shape[2]}x{shape[2]} images, but "
                        f"dataset={d.name} has {want[0]} classes and {want[1]}x{want[2]}x{want[2]} images")


def load_model(path: Path, cfg: DictConfig, runtime: Runtime,
               for_inference: bool = False) -> tuple[Classifier, dict[str, Any]]:
    """Load a checkpoint, check it fits the config, rebuild its model on the device. `for_inference`: an eval-only
    model with its BatchNorms folded into the convolutions before them where possible (same logits up to
    rounding; engine.fusion), for eval and score. `path` may also hold plain weights (runs.weights): then the
    config says what they are (external_checkpoint)."""
    loaded = read_checkpoint_or_weights(path)
    ckpt = loaded.checkpoint if loaded.checkpoint is not None else external_checkpoint(cfg, loaded.weights, loaded.digest)
    model = model_from_checkpoint(ckpt, cfg, path, runtime, for_inference)
    if "finished" in ckpt and not ckpt["finished"]:
        log.info(f"note: {display_path(path)} is an interrupted run (epoch {ckpt.get('epoch')} of "
                 f"{(ckpt.get('config') or {}).get('epochs', '?')}); using it as it is")
    return model, ckpt


def model_from_checkpoint(ckpt: dict[str, Any], cfg: DictConfig, path: Path, runtime: Runtime,
                          for_inference: bool = False) -> Classifier:
    """The model a loaded checkpoint holds, after checking that it fits the config (see load_model)."""
    check_compatible(ckpt, cfg, path)
    return rebuild_model(ckpt, path, runtime, for_inference)


def rebuild_model(ckpt: dict[str, Any], path: Path, runtime: Runtime, for_inference: bool = False) -> Classifier:
    """The model a loaded checkpoint holds, built from its header and weights, on the device (with
    `for_inference`: BatchNorms folded, and with runtime.winograd the 3x3 convolutions that fit as Winograd
    F(4x4, 3x3)); one line when the weights do not fit."""
    model = build_model(ckpt["backbone"], ckpt["num_classes"], ckpt["in_channels"], ckpt["image_size"])
    label = backbone_label(ckpt["backbone"])
    if ckpt.get("stage") == EXTERNAL_STAGE:
        try:
            load_plain_weights(model, ckpt_io.strip_module_prefix(ckpt["model"]))
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{path} is not an energy-ood checkpoint, and its weights do not fit backbone {label} "
                            f"for dataset={ckpt['dataset']}: {first}") from None
    else:
        try:
            model.load_state_dict(ckpt_io.strip_module_prefix(ckpt["model"]))
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{path} does not fit backbone {label}: {first}") from None
    shape = (ckpt["in_channels"], ckpt["image_size"], ckpt["image_size"])
    if for_inference:
        model = fold_batchnorm(model.eval())
        if runtime.winograd:
            winograd.convert(model)
    return prepare_model(model, runtime, shape)


def external_checkpoint(cfg: DictConfig, weights: dict[str, Any], digest: str) -> dict[str, Any]:
    """A checkpoint for plain weights (a state_dict file energy-ood did not write): its header comes from the
    config (`backbone=` and `dataset=` say what the weights are), its stage is `external`, DIGEST_KEY the sha256
    of the file's bytes. eval, score and finetune take it like one of their own."""
    d, normalizer = cfg.dataset, dataset_normalizer(cfg)
    return {
        "model": weights, "dataset": str(d.name),
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "num_classes": int(d.num_classes), "in_channels": int(d.channels), "image_size": int(d.image_size),
        "mean": list(normalizer.mean_list), "std": list(normalizer.std_list),
        "stage": EXTERNAL_STAGE, "finished": True, ckpt_io.DIGEST_KEY: digest,
    }


def task_overrides() -> list[str]:
    """The overrides this run was started with (Hydra's record), or [] outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError):
        return []
