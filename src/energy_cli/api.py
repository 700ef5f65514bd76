"""energy-ood from Python: score any classifier on any data, and run the commands in-process.

    from energy_cli import api

    rows = api.evaluate(model, id_data=(test_images, test_labels), ood_data={"noise": noise_images},
                        scores=("msp", "energy"), temperature=1.0, mean=(0.5,), std=(0.25,))
    run = api.train(dataset="digits", epochs=3)            # -> Run(folder, metric = final test accuracy)
    run = api.eval(ckpt=run.folder / "checkpoint.pt", ood=["gaussian", "uniform"])   # metric = energy FPR95

`evaluate` runs the same detectors, metrics and seeded OOD draws as `energy-ood eval` and returns rows with the
columns of results.csv (a pandas DataFrame when pandas is installed, else a list of dicts). Data may be

  - a tensor or numpy array of images, N x C x H x W (or N x H x W for grey): uint8 pixels 0..255, or floats in
    [0, 1] (quantised to 8 bits, as image files are); normalisation is `mean` / `std` in [0, 1] pixel units,
  - a pair (images, labels) (labels give the `id_acc` column, and the labelled fit of mahalanobis),
  - a `torch.utils.data.Dataset` whose items are an image (PIL image, or a C x H x W tensor / array as above)
    or an (image, label) pair,
  - a folder path: every image file under it, at any depth (OOD sets; unlabelled ID data).

Images of another size or channel count are brought to the ID shape as the CLI does (grey <-> RGB, shorter side
resized, centre crop). `model` is an `nn.Module` that maps images to logits (its penultimate features are the
input of its last nn.Linear, or of the layer `head=` names) or the path of a checkpoint.pt written by
energy-ood (then `mean`, `std` and the shape come from the checkpoint, and the rows equal that eval's).

`train`, `finetune` and `eval` take the CLI's overrides as keyword arguments (`backbone__width=64` or
`**{"backbone.width": 64}` for dotted keys; lists, booleans and None as Python values) or as strings, run the
command in this process and return a `Run`: its folder and headline metric (commands.outcome). A failing
command raises CommandFailed with the CLI's one-line message."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from energy_cli.commands.checkpoints import rebuild_model
from energy_cli.commands.evaluate import check_finite, fit_detectors, metric_rows
from energy_cli.commands.outcome import FINISHED
from energy_cli.config.overrides import quote
from energy_cli.data.batches import Normalizer
from energy_cli.data.folders import load_folder
from energy_cli.data.images import ImageSet, adapt, match_channels
from energy_cli.detectors import build_detectors, resolve_score_names
from energy_cli.detectors.base import FeatureFitDetector
from energy_cli.detectors.scoring import score_images
from energy_cli.engine.inference import accuracy
from energy_cli.engine.runtime import Runtime, prepare_model, resolve_device, resolve_winograd
from energy_cli.errors import PROG, UserError
from energy_cli.launch import launch
from energy_cli.models import Classifier, backbone_label
from energy_cli.runs import checkpoint as ckpt_io
from energy_cli.runs.outputs import RESULT_COLUMNS, STD_COLUMNS

Shape = tuple[int, int, int]


# --------------------------------------------------------------------------------------------- evaluate


def evaluate(model: nn.Module | str | Path, id_data: Any, ood_data: Mapping[str, Any],
             scores: Sequence[str] | str = ("msp", "energy"), temperature: float = 1.0, *,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             image_size: int | None = None, channels: int | None = None, train_data: Any = None,
             num_to_avg: int = 1, ood_samples: int | None = None, seed: int = 0, device: str = "auto",
             precision: str = "fp32", batch_size: int = 256, head: str | None = None,
             odin: Mapping[str, float] | None = None, mahalanobis_noise: float = 0.0,
             options: Mapping[str, Mapping[str, Any]] | None = None, winograd: bool = False,
             as_frame: bool | None = None) -> Any:
    """Detection metrics of `model` for ID data against each OOD set: one row per (score, OOD set) and an
    `average` row per score, with results.csv's columns (metrics in percent; see the module docstring for
    what `model` and the data may be).

    scores: names as for `energy-ood eval score=...` (msp, maxlogit, energy, odin, mahalanobis, react, dice,
    ash, knn, vim, gen, or all / extended); temperature: the energy score's T. mean / std: per-channel
    normalisation in [0, 1] pixel units (default: none, the model sees pixels in [0, 1]). image_size /
    channels: the ID shape when it cannot be read from id_data (default 32 and 3). train_data: labelled ID
    training data for the scores that fit on it (mahalanobis, react, dice, knn, vim). num_to_avg /
    ood_samples / seed: the seeded OOD draws, as in eval. odin: {"temperature": .., "noise": ..};
    options: the settings of the energy-family scores by name, e.g. {"react": {"percentile": 90}}.
    winograd: the 3x3 convolutions as Winograd F(4x4, 3x3), as `energy-ood eval winograd=true` (a CPU in fp32;
    its logits differ from the direct convolutions' in the last bits). as_frame: a pandas DataFrame (None: when pandas is installed) or a list of dicts."""
    names = resolve_score_names(list(scores) if not isinstance(scores, str) else scores)
    if not ood_data:
        raise UserError("ood_data is empty; give at least one OOD set, e.g. {'noise': images}")
    runtime = _runtime(device, precision, batch_size, winograd)
    info: dict[str, Any] = {"dataset": "id", "backbone": type(model).__name__, "stage": None, "checkpoint": None}
    if isinstance(model, (str, Path)):
        model, info, shape, mean, std = _from_checkpoint(Path(model), runtime)
    else:
        shape = _shape_of(id_data, image_size, channels)
        model = _as_classifier(model, head, shape)
        model = prepare_model(model.eval(), runtime)
    normalizer = Normalizer(mean if mean is not None else [0.0] * shape[0],
                            std if std is not None else [1.0] * shape[0])
    id_set = as_image_set(id_data, "id", shape)
    oods = {str(name): as_image_set(data, str(name), shape) for name, data in ood_data.items()}
    odin = dict(odin or {})
    detectors = build_detectors(names, model, normalizer, runtime, temperature=float(temperature),
                                odin_temperature=float(odin.get("temperature", 1000.0)),
                                odin_noise=float(odin.get("noise", 0.0014)),
                                mahalanobis_noise=float(mahalanobis_noise), batch_size=runtime.eval_batch_size,
                                options=options)
    if any(det.needs_fit for det in detectors):
        if train_data is None:
            fitted = ", ".join(det.name for det in detectors if det.needs_fit)
            raise UserError(f"score {fitted} fits on the ID training set: pass train_data=(images, labels)")
        _fit(detectors, as_image_set(train_data, "train", shape), runtime)
    logits, per_set = {}, {}
    logits["id"], per_set["id"] = score_images(model, id_set.images, detectors, normalizer, runtime,
                                               runtime.eval_batch_size)
    for name, data in oods.items():
        logits[name], per_set[name] = score_images(model, data.images, detectors, normalizer, runtime,
                                                   runtime.eval_batch_size)
    arrays = {name: {s: v.numpy() for s, v in per.items()} for name, per in per_set.items()}
    check_finite(arrays)
    base = {**info, "temperature": float(temperature), "n_id": len(id_set),
            "id_acc": None if id_set.labels is None else 100 * accuracy(logits["id"], id_set.labels)}
    rows = metric_rows(arrays, names, list(oods), int(num_to_avg), ood_samples, int(seed), base,
                       {det.name: det.temperature for det in detectors})
    columns = RESULT_COLUMNS + (STD_COLUMNS if int(num_to_avg) > 1 else [])
    rows = [{c: row.get(c) for c in columns} for row in rows]
    return _frame(rows, columns, as_frame)


def _runtime(device: str, precision: str, batch_size: int, winograd: bool = False) -> Runtime:
    if precision not in ("fp32", "bf16"):
        raise UserError(f"precision={precision!r}: choose fp32 or bf16")
    where, dtype = resolve_device(device), torch.bfloat16 if precision == "bf16" else None
    return Runtime(device=where, dtype=dtype, eval_batch_size=int(batch_size),
                   winograd=resolve_winograd(bool(winograd), where, dtype))


def _from_checkpoint(path: Path, runtime: Runtime) -> tuple[Classifier, dict[str, Any], Shape, list, list]:
    """The model of an energy-ood checkpoint as `energy-ood eval` uses it (BatchNorms folded), the results
    columns that name it, its input shape and its normalisation."""
    ckpt = ckpt_io.load_checkpoint(path)
    model = rebuild_model(ckpt, path, runtime, for_inference=True)
    info = {"dataset": ckpt["dataset"], "backbone": backbone_label(ckpt["backbone"]), "stage": ckpt["stage"],
            "checkpoint": str(path.resolve())}
    shape = (int(ckpt["in_channels"]), int(ckpt["image_size"]), int(ckpt["image_size"]))
    return model, info, shape, list(ckpt["mean"]), list(ckpt["std"])


def _as_classifier(model: nn.Module, head: str | None, shape: Shape) -> Classifier:
    if isinstance(model, Classifier) and head is None:
        return model
    from energy_cli.models import as_classifier

    return as_classifier(model, head=head, sample_shape=shape)


def _fit(detectors: list, train: ImageSet, runtime: Runtime) -> None:
    """Fit the detectors that need the ID training set (as eval does, without caching: no checkpoint file)."""
    if train.labels is None:
        labelled = [det.name for det in detectors if det.needs_fit and not isinstance(det, FeatureFitDetector)]
        if labelled:
            raise UserError(f"score {labelled[0]} needs labelled training data: train_data=(images, labels)")
    fit_detectors(detectors, train, None, "", runtime)


def _frame(rows: list[dict[str, Any]], columns: list[str], as_frame: bool | None) -> Any:
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise UserError("as_frame=True needs pandas: pip install pandas") from None
        return rows
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ data


def as_image_set(data: Any, name: str, shape: Shape | None = None) -> ImageSet:
    """Any accepted form of data (module docstring) -> an ImageSet of uint8 images at `shape` (when given)."""
    labels = None
    if isinstance(data, ImageSet):
        images, labels = data.images, data.labels
    elif isinstance(data, (str, Path)):
        if shape is None:
            raise UserError(f"{name}: a folder needs the image size: pass image_size= (and channels=)")
        return load_folder(data, name, shape, cache_dir=None)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[0]):
        images, labels = _uint8_images(data[0], name), torch.as_tensor(np.asarray(data[1])).long()
    elif _is_array(data):
        images = _uint8_images(data, name)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        images, labels = _from_dataset(data, name, shape)
    else:
        raise UserError(f"{name}: cannot read data of type {type(data).__name__}; give a tensor of images, "
                        "(images, labels), a torch Dataset or a folder path")
    if shape is not None:
        images = adapt(images, shape)
    if labels is not None and len(labels) != len(images):
        raise UserError(f"{name}: {len(labels)} labels for {len(images)} images")
    return ImageSet(name, images, labels)


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _uint8_images(value: Any, name: str) -> torch.Tensor:
    """A tensor / array of images -> uint8 (N, C, H, W): N x H x W is grey; floats must lie in [0, 1]."""
    x = torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise UserError(f"{name}: images must be N x C x H x W (or N x H x W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise UserError(f"{name}: images must be uint8 (0..255) or floats in [0, 1], got {x.dtype}")
    if len(x) and (not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1):
        raise UserError(f"{name}: float images must hold pixels in [0, 1] (not normalised ones): pass the raw "
                        "pixels and give mean= and std=")
    return (x.float() * 255).round_().to(torch.uint8).contiguous()


def _from_dataset(dataset: Any, name: str, shape: Shape | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every item of a map-style Dataset: an image, or (image, label); images as PIL images or C x H x W."""
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, (tuple, list)):
            image, label = item[0], (item[1] if len(item) > 1 else None)
        else:
            image, label = item, None
        if not _is_array(image):
            image = np.array(image)            # a PIL image: H x W (grey) or H x W x C
            image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        one = _uint8_images(image[None], name)
        target = shape or (one.shape[1], one.shape[2], one.shape[2])
        images.append(adapt(match_channels(one, target[0]), target))
        labels.append(label)
    if not images:
        raise UserError(f"{name}: the dataset is empty")
    has_labels = all(label is not None for label in labels)
    return torch.cat(images), (torch.as_tensor([int(label) for label in labels]) if has_labels else None)


def _shape_of(data: Any, image_size: int | None, channels: int | None) -> Shape:
    """The ID shape: image_size / channels when given, else read from a tensor's (C, H, W) or a Dataset's
    first image, else (3, 32, 32)."""
    found: tuple[int, int] | None = None
    sample = data[0] if isinstance(data, (tuple, list)) and len(data) == 2 and _is_array(data[0]) else data
    if _is_array(sample):
        s = tuple(np.shape(sample))
        found = (1, s[-1]) if len(s) == 3 else (s[1], s[-1])
    elif not isinstance(data, (str, Path)) and hasattr(data, "__getitem__") and hasattr(data, "__len__") and len(data):
        c, _, w = as_image_set(torch.utils.data.Subset(data, [0]), "id").shape
        found = (c, w)
    size = int(image_size) if image_size else (found[1] if found else 32)
    return (int(channels) if channels else (found[0] if found else 3), size, size)


# ---------------------------------------------------------------------------------------- the commands


@dataclass(frozen=True)
class Run:
    """A finished command: its run folder, headline metric (name and value; None for commands without one)
    and the command's own value (train / finetune: the checkpoint path; eval: the results rows)."""

    command: str
    folder: Path
    metric: float | None
    metric_name: str | None
    value: Any

    @property
    def checkpoint(self) -> Path:
        return self.folder / ckpt_io.FILENAME


class CommandFailed(RuntimeError):
    """A command ended with an error (its one-line message) or without finishing a run; `status` is the
    exit status the CLI would have returned."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def train(*overrides: str, **settings: Any) -> Run:
    """`energy-ood train` in this process (see the module docstring for the overrides)."""
    return run_command("train", *overrides, **settings)


def finetune(*overrides: str, **settings: Any) -> Run:
    """`energy-ood finetune` in this process; metric: the final test accuracy (or metric=val_energy_fpr95)."""
    return run_command("finetune", *overrides, **settings)


def eval(*overrides: str, **settings: Any) -> Run:  # noqa: A001 - the command's name
    """`energy-ood eval` in this process; metric: the average FPR95 of the energy score, in percent."""
    return run_command("eval", *overrides, **settings)


def run_command(command: str, *overrides: str, **settings: Any) -> Run:
    """Run `command` with string overrides and keyword settings; the last run it finished."""
    args = [*overrides, *(f"{key.replace('__', '.')}={override_value(value)}" for key, value in settings.items())]
    start = len(FINISHED)
    stderr = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(stderr):
            launch(command, args)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if status != 0:
            raise CommandFailed(stderr.last_error() or f"{PROG} {command} failed (exit status {status})",
                                status) from None
    if len(FINISHED) == start:
        raise CommandFailed(f"{PROG} {command} {' '.join(args)} finished no run", 2)
    done = FINISHED[-1]
    return Run(done.command, done.run_dir, done.outcome.metric, done.outcome.metric_name, done.outcome.value)


def override_value(value: Any) -> str:
    """A Python value as a Hydra override value: None -> null, booleans -> true / false, lists -> [a,b],
    paths and strings quoted when needed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return quote(str(value))


class _Tee(io.TextIOBase):
    """Writes through to `stream` and remembers the last `energy-ood: error:` line."""

    def __init__(self, stream: Any):
        self.stream, self.error_lines = stream, []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith(f"{PROG}: error: "):
                self.error_lines.append(line[len(f"{PROG}: error: "):])
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def last_error(self) -> str | None:
        return self.error_lines[-1] if self.error_lines else None


__all__ = ["CommandFailed", "Run", "as_image_set", "eval", "evaluate", "finetune", "override_value", "run_command",
           "train"]
