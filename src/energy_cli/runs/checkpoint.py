"""checkpoint.pt: atomic saving, safe loading (weights_only), and finding the newest matching run.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code. Keys:

    format, model (state_dict), dataset, backbone (config dict), num_classes, in_channels, image_size,
    mean, std, stage (pretrain | energy | oe), config (the run's resolved config), overrides (its command-line
    overrides), epoch, step, finished, optimizer, scheduler, rng (every global RNG state), loop (the position
    inside the epoch, its running sums and the train_log rows so far), resumes (one entry per resume),
    extra (stage-specific values)

Every write goes to a temporary file in the same folder, is fsynced and renamed over the target, so a
process killed at any moment leaves the previous file or the new one (and at worst a stray temporary,
which `remove_stale_temporaries` deletes).

Every load reads the file's bytes once, checks the CRC-32 of each member of torch's zip format (torch.load
does not, so a flipped bit would load as other weights), hashes those same bytes (sha256, the provenance
that derived files record) and unpickles them with weights_only=True.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from energy_cli.errors import UserError
from energy_cli.fileio import atomic_write_bytes

FORMAT = "energy-ood/1"
FILENAME = "checkpoint.pt"


# Set on every checkpoint `load_checkpoint` returns (never stored): the sha256 of the exact bytes loaded,
# which the files derived from the checkpoint (thresholds.json, mahalanobis.pt) record as their source.
DIGEST_KEY = "loaded_sha256"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialise with torch.save into memory, then write atomically."""
    buffer = io.BytesIO()
    payload = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def damage(data: bytes) -> str | None:
    """Why the bytes of a torch zip file are damaged, or None when every member matches the CRC-32 the zip
    stores for it (torch.load itself never checks them: a flipped bit would load as different weights).
    Files that are not zip archives (torch's legacy format) cannot be checked here and pass."""
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        return None
    try:
        with zipfile.ZipFile(buffer) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib and struct errors on broken headers
        return f"its zip structure is broken ({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})"
    return None if bad is None else f"{bad} does not match its stored CRC-32 checksum"


def read_verified(path: Path, what: str = "checkpoint") -> tuple[bytes, str]:
    """The bytes of `path` and their sha256 (hex), after checking the zip CRCs; UserError when unreadable or
    damaged. Everything that uses a checkpoint loads these bytes, so the digest is that of what was used."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    why = damage(data)
    if why is not None:
        raise UserError(f"{path} is damaged: {why}; the file changed after it was written (a disk or copy error): "
                        f"use an intact copy, or write it again")
    return data, hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True from bytes whose zip CRCs were checked. Missing, truncated,
    damaged, foreign or code-carrying files, NaN weights and a zero normalisation std end with a one-line
    UserError; a file that needs arbitrary pickled objects is never executed. The returned dict carries
    DIGEST_KEY, the sha256 of the bytes loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass ckpt=PATH to a checkpoint.pt written by energy-ood)")
    data, digest = read_verified(path)
    return checkpoint_from(unpickle(data, path, map_location), path, digest)


def checkpoint_from(ckpt: Any, path: Path, digest: str) -> dict[str, Any]:
    """An unpickled object as a checkpoint: it must be an energy-ood checkpoint with finite values; gets
    DIGEST_KEY = `digest`."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise UserError(f"{path} is not an energy-ood checkpoint (expected format {FORMAT}); "
                        "train one with `energy-ood train`")
    check_values(ckpt, path)
    ckpt[DIGEST_KEY] = digest
    return ckpt


def unpickle(data: bytes, path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) of a file's bytes; a one-line UserError when they hold code-carrying
    pickles or are not a readable torch file."""
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise UserError(f"refusing to load {path}: it holds pickled Python objects that could run code "
                            "(only weights_only checkpoints written by energy-ood are accepted)") from None
        raise UserError(f"{path} is not a readable checkpoint ({first}): it is damaged (truncated or corrupt) "
                        "or not a checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} is not a readable checkpoint ({first}): it is damaged (truncated or corrupt) "
                        "or not a checkpoint") from None


def check_values(ckpt: dict[str, Any], path: Path) -> None:
    """Weights that are all finite, and a normalisation (mean, std) of finite numbers with std > 0: a
    checkpoint without them would only produce NaN scores."""
    model = ckpt.get("model")
    if isinstance(model, dict):
        for name, value in model.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise UserError(f"{path} holds NaN or infinite weights ({name}); it cannot be used: train it again, "
                                "or use an earlier checkpoint")
    for key in ("mean", "std"):
        if key not in ckpt:
            continue
        values = ckpt[key]
        numbers = values if isinstance(values, (list, tuple)) else [values]
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)
        if not ok or not numbers or (key == "std" and min(numbers) <= 0):
            raise UserError(f"{path} holds the normalisation {key}={values}, which is not usable (it must be finite"
                            f"{', and the std > 0' if key == 'std' else ''}); it is damaged or was not written by "
                            "energy-ood")


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module.` / `_orig_mod.` prefixes that DataParallel/DDP/torch.compile add to parameter names."""
    out = {}
    prefixes = ("module.", "_orig_mod.")
    for key, value in state_dict.items():
        while key.startswith(prefixes):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def candidate_checkpoints(roots: Iterable[Path]) -> list[Path]:
    """Every checkpoint.pt under the given folders, newest first (by modification time)."""
    found: list[Path] = []
    for root in roots:
        if Path(root).is_dir():
            found += list(Path(root).rglob(FILENAME))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def peek(path: Path) -> dict[str, Any] | None:
    """A checkpoint read lazily (weights_only, memory-mapped) to look at its header; None when it is not a
    readable energy-ood checkpoint. For searching many runs; never runs code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a broken file in outputs/ must not hide the good ones
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None


def find_newest(roots: Iterable[Path], predicate: Callable[[dict[str, Any]], bool]) -> Path | None:
    """The newest checkpoint under `roots` whose header satisfies `predicate`; unreadable files are skipped."""
    for path in candidate_checkpoints(roots):
        ckpt = peek(path)
        if ckpt is not None and predicate(ckpt):
            return path
    return None


# --------------------------------------------------------------------------- fitted-statistics caches

FIT_FORMAT = "energy-ood-fit/1"


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def save_fit_cache(path: Path, key: str, tensors: dict[str, torch.Tensor], checkpoint_sha256: str = "") -> None:
    """Statistics fitted on a checkpoint (e.g. mahalanobis.pt next to it), written atomically, tagged with `key`
    and with the sha256 of the checkpoint bytes they were fitted with."""
    buffer = io.BytesIO()
    torch.save({"format": FIT_FORMAT, "key": key, "checkpoint_sha256": checkpoint_sha256, "tensors": dict(tensors)},
               buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_fit_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a fit cache written with the same `key`; None when the file is missing, unreadable,
    damaged (zip CRCs), foreign or was written for another key (another checkpoint, training set or precision)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        if damage(data) is not None:
            return None
        cache = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is refitted, never trusted
        return None
    if not isinstance(cache, dict) or cache.get("format") != FIT_FORMAT or cache.get("key") != key:
        return None
    tensors = cache.get("tensors")
    return tensors if isinstance(tensors, dict) else None
