"""The one place where every config key is declared: its type, its default and its validation rule, as
dataclasses registered in Hydra's ConfigStore (structured configs).

- The primary configs (conf/<command>.yaml) extend `schema_<command>`: the command's keys and their defaults
  live here, the YAML file only picks the config groups. The group choices (conf/dataset/*.yaml, backbone,
  outliers, loss) extend `schema_<group>_<kind>`: the schema gives the types, the YAML file the values.
- Hydra converts and type-checks every value while composing (`epochs=abc` never reaches a command) and
  rejects keys no schema has; the `rule` of each key (config/rules.py: ranges, finiteness, choices) is applied
  by `commands.validate.validate`, before any work starts, with the same one-line wording as a type error
  (see `type_error_line`).
- Two kinds of config stay open on purpose: backbone=custom (its extra keys are the user's constructor
  arguments, `+backbone.width=64`) and config files a user adds with --config-dir. Their keys are still
  validated: the rules are looked up by dotted key (`RULES`), not by node type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from energy_cli.config import rules
from energy_cli.config.rules import Rule
from energy_cli.errors import UserError


def key(default: Any = MISSING, rule: Rule = rules.any_value, help: str = "") -> Any:  # noqa: A002
    """A config key: default (a list is copied for every config), rule, one-line help."""
    meta = {"rule": rule, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(kind: type, help: str = "") -> Any:  # noqa: A002
    """A nested group of keys (a dataclass), given its defaults."""
    return field(default_factory=kind, metadata={"help": help})


def choice_of_group(help: str = "") -> Any:  # noqa: A002
    """A config group chosen in the defaults list (dataset=..., backbone=...): typed by the chosen file's own
    schema, or open (backbone=custom, a user's own file)."""
    return field(default=MISSING, metadata={"help": help, "group": True})


# --------------------------------------------------------------------------- the in-distribution dataset

@dataclass
class Augment:
    crop_pad: int = key(0, rules.integer(0, 4096), "random crop after padding by this many pixels (0 = none)")
    flip: bool = key(False, rules.flag, "random horizontal flips")


@dataclass
class TrainRecipe:
    epochs: int = key(MISSING, rules.integer(0), "epochs of `train`")
    lr: float = key(MISSING, rules.positive, "learning rate of `train` (SGD, cosine per step)")
    batch_size: int = key(MISSING, rules.integer(1), "ID images per step")


@dataclass
class FinetuneRecipe:
    epochs: int = key(MISSING, rules.integer(0), "epochs of `finetune`")
    lr: float = key(MISSING, rules.positive, "learning rate of `finetune`")
    batch_size: int = key(MISSING, rules.integer(1), "ID images per step")
    outlier_batch_size: int = key(MISSING, rules.integer(1), "auxiliary outliers per step")


@dataclass
class EvalRecipe:
    num_to_avg: int = key(1, rules.integer(1), "repeated OOD draws of `eval`")
    ood_samples: Any = key("all", rules.auto_or(rules.integer(1), "all"), "OOD images per draw: all | N")


@dataclass
class Recipe:
    train: TrainRecipe = group(TrainRecipe)
    finetune: FinetuneRecipe = group(FinetuneRecipe)
    eval: EvalRecipe = group(EvalRecipe)


@dataclass
class Dataset:
    """dataset=cifar10 | cifar100 (read from their standard files under data_root)."""

    name: str = key(MISSING, rules.checked_elsewhere, "which loader reads the images")
    num_classes: Any = key(MISSING, rules.auto_or(rules.integer(2, 100_000)), "classes (auto: dataset=folder)")
    channels: int = key(MISSING, rules.choice("1", "3"), "1 (grey) or 3 (RGB)")
    image_size: int = key(MISSING, rules.integer(1, 4096), "side of the square images the model sees")
    mean: Any = key(MISSING, rules.auto_or(rules.numbers), "normalisation mean per channel (pixels in [0, 1])")
    std: Any = key(MISSING, rules.auto_or(rules.positive_numbers), "normalisation std per channel")
    augment: Augment = group(Augment)
    ood: Any = key(MISSING, rules.names, "the OOD test sets of `eval`")
    benchmark_ood: Any = key(MISSING, rules.names, "what ood=[all] stands for")
    m_in: Any = key(MISSING, rules.margin, "energy margin of the ID images (finetune's default)")
    m_out: Any = key(MISSING, rules.margin, "energy margin of the outliers (finetune's default)")
    recipe: Recipe = group(Recipe, "the training recipe the commands take their defaults from")


@dataclass
class EmbeddedDataset(Dataset):
    """dataset=digits (embedded in scikit-learn; its OOD sets are generated)."""

    test_fraction: float = key(MISSING, rules.open_fraction, "share of the images held out as the test split")
    ood_size: int = key(MISSING, rules.integer(1, 10_000_000), "images in each generated OOD set")


@dataclass
class FolderDataset(Dataset):
    """dataset=folder: a user's labelled images in the ImageFolder layout."""

    path: Optional[str] = key(None, rules.text, "DIR with DIR/train/<class>/... and DIR/test/<class>/...")
    stream: Any = key("auto", rules.auto_or_flag, "decode from disk batch by batch: auto | true | false")
    workers: Any = key("auto", rules.auto_or(rules.integer(0, 256)), "DataLoader workers when streaming")
    ood_size: int = key(MISSING, rules.integer(1, 10_000_000), "images in each generated OOD set")


# --------------------------------------------------------------------------- backbones

@dataclass
class Backbone:
    """backbone=resnet18."""

    name: str = key(MISSING, rules.checked_elsewhere, "which network")


@dataclass
class SmallCnn(Backbone):
    width: int = key(MISSING, rules.integer(1, rules.MAX_WIDTH), "channels of the first block")
    dropout: float = key(MISSING, rules.fraction, "dropout before the last layer")


@dataclass
class WideResNet(Backbone):
    depth: int = key(MISSING, rules.wrn_depth, "layers: 6n+4")
    widen_factor: int = key(MISSING, rules.integer(1, rules.MAX_WIDTH // 64), "width multiplier")
    dropout: float = key(MISSING, rules.fraction, "dropout inside the blocks")


@dataclass
class HubBackbone(Backbone):
    """backbone=torchvision | timm: a model of that library, by name."""

    arch: str = key(MISSING, rules.text, "the model's name in the library")
    head: Optional[str] = key(None, rules.text, "the linear layer giving the logits (dotted name); null = by rule")


@dataclass
class CustomBackbone(Backbone):
    """backbone=custom. Declares its keys' types and rules only: conf/backbone/custom.yaml does not extend it,
    because its other keys are the arguments of the user's own class (`+backbone.width=64`)."""

    _target_: Optional[str] = key(None, rules.text, "an importable class or function returning an nn.Module")
    head: Optional[str] = key(None, rules.text, "the linear layer giving the logits (dotted name)")


# --------------------------------------------------------------------------- auxiliary outliers, losses

@dataclass
class Outliers:
    """outliers=china_patches (embedded)."""

    name: str = key(MISSING, rules.checked_elsewhere, "which outliers")
    n: int = key(MISSING, rules.integer(1, 10_000_000), "outlier images drawn")


@dataclass
class OutlierFile:
    """outliers=tinyimages300k | folder | npy: images read from a file or folder."""

    name: str = key(MISSING, rules.checked_elsewhere, "which outliers")
    path: Optional[str] = key(None, rules.text, "the file or folder")


@dataclass
class Loss:
    name: str = key(MISSING, rules.choice("energy", "oe"), "energy (the paper) | oe (outlier exposure)")
    weight: float = key(MISSING, rules.non_negative, "lambda: weight of the outlier term")


# --------------------------------------------------------------------------- the commands

@dataclass
class Common:
    """Keys every computing command shares."""

    command: str = key(MISSING, rules.checked_elsewhere, "the command (set by its config file)")
    seed: int = key(0, rules.seed, "all randomness: weights, data order, augmentation, synthetic sets, OOD draws")
    device: str = key("auto", rules.device, "auto | cpu | cuda | cuda:N")
    precision: str = key("auto", rules.precision,
                         "auto | fp32 | bf16 | int8 (scores and metrics are always fp32); auto = bf16 only where it "
                         "is measured faster; int8: eval and score on a CPU, the body quantized after training")
    data_root: str = key("${oc.env:ENERGY_OOD_DATA,data}", rules.text, "where the datasets' files are")
    download: bool = key(False, rules.flag, "may torchvision fetch missing datasets (and hub weights)")
    cache_dir: Optional[str] = key("${data_root}/cache", rules.text,
                                   "decoded image folders (OOD sets, folder outliers); null = no cache")
    temperature: float = key(1.0, rules.temperature, "T of the energy, in the fine-tuning loss and the energy score")
    eval_batch_size: Any = key("auto", rules.auto_or(rules.integer(1)),
                               "images per inference batch: auto = the probe's pick on a CPU, 1024 on a GPU")
    channels_last: Any = key("auto", rules.auto_or_flag, "memory format of image batches: auto | true | false")
    winograd: Any = key("auto", rules.auto_or_flag,
                        "3x3 convolutions of 16+ input channels as Winograd F(4x4,3x3) in eval and training, "
                        "on a CPU in fp32: "
                        "auto = where the probe measured it faster (needs a C compiler) | true | false")
    probe: str = key("auto", rules.choice("auto", "off", "refresh"),
                     "auto: measure once per machine what is fast (cached); off: fixed rules; refresh: measure again")
    compile: bool = key(False, rules.flag, "torch.compile the model (falls back to eager if compiling fails)")
    threads: Any = key("auto", rules.auto_or(rules.integer(1, 4096)), "CPU threads for torch")
    progress: Any = key("auto", rules.progress_value, "progress bars on stderr: auto (on a terminal) | true | false")
    overwrite: Optional[bool] = key(False, rules.boolean_or_null,
                                    "may a run write into a hydra.run.dir that holds an earlier run's outputs")
    dataset: Any = choice_of_group("the in-distribution dataset (conf/dataset/)")
    backbone: Any = choice_of_group("the network (conf/backbone/)")
    outliers: Any = choice_of_group("the auxiliary outliers of finetune (conf/outliers/)")
    path: Optional[str] = key(None, rules.text, "outliers=folder | npy: the folder or .npy file (outliers.path)")


@dataclass
class Training(Common):
    """Keys of train and finetune."""

    weight_decay: float = key(5e-4, rules.non_negative, "SGD weight decay")
    momentum: float = key(0.9, rules.fraction, "SGD momentum")
    nesterov: bool = key(True, rules.flag, "Nesterov momentum")
    resume: Any = key(None, rules.resume, "PATH (a checkpoint.pt or its run folder) | true | auto")
    checkpoint_every_steps: int = key(0, rules.integer(0), "also save every N optimiser steps (0 = per epoch)")
    cuda_graphs: Any = key("auto", rules.auto_or_flag,
                           "replay each training step as a CUDA graph: auto = on a GPU (compiled or not), "
                           "unless under torchrun")
    sync_bn: bool = key(False, rules.flag, "under torchrun on GPUs: SyncBatchNorm")


@dataclass
class Train(Training):
    command: str = key("train", rules.checked_elsewhere)
    epochs: int = key("${dataset.recipe.train.epochs}", rules.integer(0, 1_000_000), "epochs")
    lr: float = key("${dataset.recipe.train.lr}", rules.positive, "peak learning rate")
    batch_size: int = key("${dataset.recipe.train.batch_size}", rules.integer(1), "ID images per step")


@dataclass
class Finetune(Training):
    command: str = key("finetune", rules.checked_elsewhere)
    loss: Any = choice_of_group("energy | oe (conf/loss/)")
    ckpt: Optional[str] = key(None, rules.text, "checkpoint to start from; null = newest finished train run of this "
                                 "dataset and backbone")
    m_in: Any = key("${dataset.m_in}", rules.margin, "ID energies are pushed below m_in (a number | auto)")
    m_out: Any = key("${dataset.m_out}", rules.margin, "outlier energies are pushed above m_out (a number | auto)")
    epochs: int = key("${dataset.recipe.finetune.epochs}", rules.integer(0, 1_000_000), "epochs")
    lr: float = key("${dataset.recipe.finetune.lr}", rules.positive, "peak learning rate")
    batch_size: int = key("${dataset.recipe.finetune.batch_size}", rules.integer(1), "ID images per step")
    outlier_batch_size: int = key("${dataset.recipe.finetune.outlier_batch_size}", rules.integer(1),
                                  "outliers per step")
    metric: str = key("test_acc", rules.choice("test_acc", "val_energy_fpr95"),
                      "the headline metric returned to sweepers")
    validation_ood: Any = key(["synthetic"], rules.names,
                               "validation OOD sets of metric=val_energy_fpr95: synthetic (built from ID training "
                               "images) or folder:PATH / set names, never the OOD test sets")
    validation_samples: int = key(2000, rules.integer(1), "images per validation set")


@dataclass
class OdinGrid:
    temperature: List[float] = key([1, 10, 100, 1000], rules.number_list(rules.positive), "odin.tune's temperatures")
    noise: List[float] = key([0, 0.0004, 0.0008, 0.0014, 0.002, 0.0024, 0.0028, 0.0032, 0.0038, 0.0048],
                             rules.number_list(rules.non_negative), "odin.tune's noise sizes")


@dataclass
class Odin:
    temperature: float = key(1000.0, rules.temperature, "T of ODIN (the top-level temperature is the energy's)")
    noise: float = key(0.0014, rules.non_negative, "input perturbation in [0, 1] pixel units (0 = none)")
    tune: bool = key(False, rules.flag, "choose temperature and noise from grid by FPR95 on validation_ood")
    grid: OdinGrid = group(OdinGrid, "the grid of the paper's code")


@dataclass
class MahalanobisGrid:
    noise: List[float] = key([0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01], rules.number_list(rules.non_negative),
                             "mahalanobis.tune's noise sizes")


@dataclass
class Mahalanobis:
    noise: float = key(0.0, rules.non_negative, "input perturbation towards the closest class mean (0 = none)")
    tune: bool = key(False, rules.flag, "choose noise from grid by FPR95 on validation_ood")
    grid: MahalanobisGrid = group(MahalanobisGrid, "the grid of the paper's code")


@dataclass
class React:
    percentile: float = key(90, rules.within(0, 100), "clip at this percentile of the ID training activations")


@dataclass
class Dice:
    sparsity: float = key(0.9, rules.within(0, 1, high_included=False), "share of contributions dropped")


@dataclass
class Ash:
    variant: str = key("s", rules.choice("p", "b", "s"), "p (prune) | b (binarise) | s (sharpen)")
    percentile: float = key(90, rules.within(0, 100, high_included=False), "share of activations set to zero")


@dataclass
class Knn:
    k: int = key(50, rules.integer(1), "the k-th nearest training feature")


@dataclass
class Vim:
    dim: Any = key("auto", rules.auto_or(rules.integer(1)), "dimension of the principal space (auto = half)")


@dataclass
class Gen:
    gamma: float = key(0.1, rules.positive, "exponent of p^gamma (1-p)^gamma")
    m: int = key(100, rules.integer(1), "number of largest probabilities summed")


@dataclass
class Eval(Common):
    command: str = key("eval", rules.checked_elsewhere)
    ckpt: Optional[str] = key(None, rules.text, "checkpoint to evaluate; null = newest run of this dataset and backbone")
    ood: Any = key("${dataset.ood}", rules.checked_elsewhere, "OOD test sets; [all] = the dataset's benchmark list")
    score: Any = key(["msp", "energy"], rules.checked_elsewhere,
                 "msp, maxlogit, energy, odin, mahalanobis ([all]: the paper's five); react, dice, ash, knn, vim, gen "
                 "([extended]: all eleven)")
    num_to_avg: int = key("${oc.select:dataset.recipe.eval.num_to_avg,1}", rules.integer(1, 100_000),
                          "repeated OOD draws")
    ood_samples: Any = key("${oc.select:dataset.recipe.eval.ood_samples,all}", rules.auto_or(rules.integer(1), "all"),
                           "OOD images per draw: all | N")
    save_scores: bool = key(False, rules.flag, "also write scores.npz")
    ood_resize: str = key("resize", rules.choice("resize", "native"),
                          "LSUN-C, LSUN-R, iSUN: resize to the ID size, or native (batched by size, as the paper)")
    odin: Odin = group(Odin, "score=odin")
    mahalanobis: Mahalanobis = group(Mahalanobis, "score=mahalanobis")
    validation_ood: Any = key(["synthetic"], rules.names,
                          "validation OOD sets of odin.tune / mahalanobis.tune: synthetic (built from ID training "
                          "images) or folder:PATH / set names, never the OOD test sets")
    validation_samples: int = key(2000, rules.integer(1), "images per validation set")
    react: React = group(React, "score=react")
    dice: Dice = group(Dice, "score=dice")
    ash: Ash = group(Ash, "score=ash")
    knn: Knn = group(Knn, "score=knn")
    vim: Vim = group(Vim, "score=vim")
    gen: Gen = group(Gen, "score=gen")
    plots: bool = key(False, rules.flag, "also draw hist_<set>.png and roc_<set>.png")


@dataclass
class Score(Common):
    command: str = key("score", rules.checked_elsewhere)
    paths: Any = key([], rules.text_list, "image files and folders (the positional arguments)")
    ckpt: Optional[str] = key(None, rules.text, "checkpoint; null = newest run of this dataset and backbone")
    threshold: Optional[float] = key(None, rules.number_or_null,
                                     "energy threshold of the ood flag; null = the one eval stored")
    chunk_size: int = key(1024, rules.integer(1), "images decoded and scored at a time")


@dataclass
class Report:
    command: str = key("report", rules.checked_elsewhere)
    paths: Any = key([], rules.text_list, "runs and sweep folders; [] = outputs/ and multirun/ here")
    plots: bool = key(True, rules.flag, "a heatmap per stage and score when the runs vary exactly two settings")


# the schemas by name: schema_<command> in the ConfigStore for conf/<command>.yaml, schema_<group>_<kind> for a group file
COMMANDS = {"train": Train, "finetune": Finetune, "eval": Eval, "score": Score, "report": Report}
GROUPS = {
    "dataset": {"base": Dataset, "embedded": EmbeddedDataset, "folder": FolderDataset},
    "backbone": {"base": Backbone, "small_cnn": SmallCnn, "wrn": WideResNet, "hub": HubBackbone,
                 "custom": CustomBackbone},
    "outliers": {"embedded": Outliers, "file": OutlierFile},
    "loss": {"base": Loss},
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent), where the YAML files' defaults lists find them:
    `schema_<command>` and `schema_<group>_<kind>`, outside any config group (so that neither the group lists
    of --help nor shell completion offer them as choices)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    if store.repo.get(f"schema_{next(iter(COMMANDS))}.yaml") is not None:
        return   # already stored in this process
    for name, node in COMMANDS.items():
        store.store(name=f"schema_{name}", node=node)
    for group_name, kinds in GROUPS.items():
        for name, node in kinds.items():
            store.store(name=f"schema_{group_name}_{name}", node=node)


# --------------------------------------------------------------------------- rules, by dotted key

def schemas() -> list[tuple[type, str]]:
    """Every schema with the dotted prefix of its keys: the commands' ("") and the groups' ("dataset.", ...)."""
    return [(kind, "") for kind in COMMANDS.values()] + [
        (kind, f"{group_name}.") for group_name, kinds in GROUPS.items() for kind in kinds.values()]


def fields_of(kind: type, prefix: str) -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of each key of a schema, nested groups of keys flattened, config groups left out."""
    for item in dataclasses.fields(kind):
        name = f"{prefix}{item.name}"
        if item.metadata.get("group"):
            continue
        if isinstance(item.default_factory, type) and dataclasses.is_dataclass(item.default_factory):
            yield from fields_of(item.default_factory, f"{name}.")
        else:
            yield name, item


def _collect_rules() -> dict[str, Rule]:
    found: dict[str, Rule] = {}
    for kind, prefix in schemas():
        for name, item in fields_of(kind, prefix):
            rule = item.metadata["rule"]
            if found.setdefault(name, rule) is not rule:
                raise TypeError(f"config key {name} has two different rules in config/schema.py")
    return found


# dotted key -> its rule (every key of every schema; a list counts as one value)
RULES: dict[str, Rule] = _collect_rules()


def rule_for(key_name: str) -> Rule | None:
    """The rule of a dotted key; a list element (`odin.grid.noise[2]`) falls back to its list's rule."""
    return RULES.get(key_name) or RULES.get(key_name.split("[", 1)[0])


def help_for(key_name: str) -> str:
    """The one-line help of a dotted key ('' if it has none)."""
    for kind, prefix in schemas():
        for name, item in fields_of(kind, prefix):
            if name == key_name and item.metadata.get("help"):
                return str(item.metadata["help"])
    return ""


def leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys of `cfg`'s values (a list is one value), Hydra's own settings left out."""
    keys = []
    for name in cfg.keys():
        dotted = f"{prefix}{name}"
        if dotted == "hydra":
            continue
        node = cfg._get_node(name)  # noqa: SLF001 - the node, unresolved: a group stays a group
        if isinstance(node, DictConfig):
            keys += leaf_keys(node, f"{dotted}.")
        else:
            keys.append(dotted)
    return keys


def type_error_line(exc: BaseException) -> str | None:
    """The one line for a value the schema's type refused while composing (`epochs=abc`): the key's rule
    applied to the refused value, so the words are those validation uses; None if `exc` is not such an error."""
    while exc is not None and not (isinstance(exc, OmegaConfBaseException) and getattr(exc, "full_key", None)):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if exc is None or "not in struct" in str(exc) or "not in '" in str(exc):
        return None
    full_key = str(exc.full_key)  # type: ignore[attr-defined]
    rule = rule_for(full_key)
    value = getattr(exc, "value", None)
    if rule is None:
        return None
    if "[" in full_key:   # one element of a typed list (a tuning grid)
        return f"{full_key}={value!r} must be a finite number"
    probe = OmegaConf.create({})
    try:
        OmegaConf.update(probe, full_key, value, merge=False)
        rule(probe, full_key)
    except UserError as error:
        return str(error)
    except Exception:  # noqa: BLE001 - a value the rule cannot even look at: say what the key takes
        pass
    wanted = help_for(full_key)
    return f"{full_key}={value!r} is not a valid value" + (f" ({wanted})" if wanted else "")
