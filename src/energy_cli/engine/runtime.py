"""Where and how to compute: the device, the precision (autocast dtype), the memory format, CPU threads,
the eval batch size, and preparing (moving, optionally compiling) a model for them."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energy_cli.config.logs import progress_enabled
from energy_cli.config.values import check_device, check_precision
from energy_cli.engine import distributed
from energy_cli.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The compute device, the autocast dtype (None = fp32) and the memory format of image batches. A command
    builds it from its config with `runtime_from_config` (conf/common/base.yaml holds the defaults); the
    defaults here serve code that builds one by hand (tests, scripts): no progress bars."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False
    progress: bool = False
    compile: bool = False
    eval_batch_size: int = 256

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).replace("torch.", "").replace("bfloat16", "bf16")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available, else cpu; cpu / cuda / cuda:N as given (cuda must exist)."""
    name = check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles (bf16 matrix units), where bf16 convolutions beat fp32 several times."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - a private probe; absence means "no"
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """auto -> bf16 on CUDA GPUs with bf16 support and on CPUs with AMX, fp32 elsewhere; fp32 | bf16 as given."""
    name = check_precision(name)
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":   # auto
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def set_threads(threads: Any) -> int:
    """CPU threads for torch's kernels: `auto` = every core this process may run on, shared evenly among
    the processes torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    if str(threads) == "auto":
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n = os.cpu_count() or 1
        n = max(1, n // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    else:
        n = int(threads)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def runtime_from_config(cfg: Any) -> Runtime:
    """The Runtime a config asks for. Under torchrun each process computes on the GPU of its local rank
    and only rank 0 draws progress bars."""

    group = distributed.current()
    device = resolve_device(cfg.device)
    if group.enabled and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    dtype = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        set_threads(cfg.threads)
    channels_last = device.type == "cuda" or dtype is not None
    return Runtime(device=device, dtype=dtype, channels_last=channels_last,
                   progress=progress_enabled(cfg.progress) and group.is_main,
                   compile=bool(cfg.compile),
                   eval_batch_size=resolve_eval_batch_size(cfg.eval_batch_size, device))


def resolve_eval_batch_size(value: Any, device: torch.device) -> int:
    """auto -> 256 on a CPU (larger batches spill the caches: WRN-40-2 evaluates ~2.5x slower at 1,024 than at
    256 on the development machine), 1,024 on a GPU; a number as given."""
    if str(value) == "auto":
        return 1024 if device.type == "cuda" else 256
    return int(value)


def is_compiled(model: nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


def prepare_model(model: nn.Module, runtime: Runtime, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Move the model to the device in the runtime's memory format and, with compile=true, compile it in place
    (`nn.Module.compile`: parameter names stay unprefixed). Compilation is tried on one small eval-mode batch of
    `input_shape`; if it fails (no compiler, unsupported op) the model stays eager and a one-line note is printed."""
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    if not runtime.compile or is_compiled(model):
        return model
    model.compile(dynamic=False)
    if input_shape is None:
        return model
    was_training = model.training
    started = time.perf_counter()
    try:
        model.eval()
        with torch.no_grad(), runtime.autocast():
            model(torch.zeros((2, *input_shape), device=runtime.device).contiguous(memory_format=runtime.memory_format))
        log.info(f"torch.compile: ready in {time.perf_counter() - started:.1f}s")
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager execution
        model._compiled_call_impl = None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log.info(f"torch.compile failed ({type(exc).__name__}: {first}); running eagerly")
    finally:
        model.train(was_training)
    return model
