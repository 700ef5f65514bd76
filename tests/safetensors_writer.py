"""A .safetensors writer for tests (the format: 8-byte little-endian header length, JSON header, raw bytes);
the safetensors package's own save_file when it is installed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, use_package: bool = True) -> None:
    if use_package:
        try:
            from safetensors.torch import save_file
        except ImportError:
            pass
        else:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
            return
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
