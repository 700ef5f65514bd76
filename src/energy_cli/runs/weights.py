"""Weight files that energy-ood did not write: a plain state_dict saved with torch.save (`.pt` / `.pth`, also
wrapped as {"state_dict": ...} or {"model": ...}), or a `.safetensors` file. `ckpt=PATH` accepts them next to
energy-ood's own checkpoints; `read_checkpoint_or_weights` tells the two apart from the bytes.

A .safetensors file is read here without the safetensors package: 8 bytes (little-endian) giving the length
of a JSON header, the header ({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}),
then the raw little-endian tensor bytes, the offsets counted from the end of the header. Like torch.load
with weights_only=True, it cannot run code."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from energy_cli.errors import UserError
from energy_cli.runs import checkpoint as ckpt_io

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100_000_000   # bytes; the safetensors format's own limit


@dataclass
class Loaded:
    """What `ckpt=PATH` holds: an energy-ood checkpoint (`checkpoint`), or a plain state_dict (`weights`), with
    the sha256 of the bytes read."""

    checkpoint: dict[str, Any] | None
    weights: dict[str, torch.Tensor] | None
    digest: str


def looks_like_safetensors(data: bytes) -> bool:
    """The first bytes are a safetensors header: a plausible length, then a JSON object."""
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 2 <= length <= min(MAX_HEADER, len(data) - 8) and data[8:9] == b"{"


def read_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file's bytes; one-line UserError when the file is malformed."""
    def broken(why: str) -> UserError:
        return UserError(f"{path} is not a readable .safetensors file ({why}): it is damaged or of another format")

    if len(data) < 8:
        raise broken("shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER, len(data) - 8):
        raise broken(f"its header length {length} exceeds the file")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise broken(f"its header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise broken("its header is not a JSON object")
    body = memoryview(data)[8 + length:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise broken(f"tensor {name} has no usable dtype, shape and data_offsets "
                         f"(dtypes read: {', '.join(SAFETENSORS_DTYPES)})") from None
        count = 1
        for s in shape:
            count *= s
        size = count * torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(body) or end - begin != size:
            raise broken(f"tensor {name} {info['dtype']}{shape} does not match its data_offsets [{begin}, {end}]")
        flat = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if size else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    return tensors


def state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """`obj` as a state_dict (names to tensors), unwrapping one level of {"state_dict": ...} / {"model": ...};
    None when it is not one."""
    if isinstance(obj, dict) and len(obj) >= 1:
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return state_dict_of(obj[key])
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    return None


def read_checkpoint_or_weights(path: str | Path) -> Loaded:
    """The file `ckpt=` names: an energy-ood checkpoint (checked exactly as runs.checkpoint.load_checkpoint
    checks it) or a plain state_dict (.pt / .pth via torch.load weights_only=True, or .safetensors). The bytes
    are read once (zip CRCs checked) and hashed (Loaded.digest). One-line UserError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass ckpt=PATH to a checkpoint.pt written by energy-ood, or "
                        "to a state_dict .pt / .pth / .safetensors file)")
    data, digest = ckpt_io.read_verified(path)
    if path.suffix == ".safetensors" or looks_like_safetensors(data):
        weights = read_safetensors(data, path)
    else:
        obj = ckpt_io.unpickle(data, path)
        if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
            return Loaded(ckpt_io.checkpoint_from(obj, path, digest), None, digest)
        weights = state_dict_of(obj)
        if weights is None:
            raise UserError(f"{path} is not an energy-ood checkpoint (expected format {ckpt_io.FORMAT}) nor a "
                            "state_dict of tensors; train one with `energy-ood train`, or save "
                            "model.state_dict()")
    if not weights:
        raise UserError(f"{path} holds no tensors")
    ckpt_io.check_values({"model": weights}, path)
    return Loaded(None, weights, digest)

