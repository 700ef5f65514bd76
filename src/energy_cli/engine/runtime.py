"""Where and how to compute: the device, the precision (autocast dtype), the memory format, CPU threads,
the eval batch size, and preparing (moving, optionally compiling) a model for them. Every `auto` follows what
engine.probe measured to be fast on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energy_cli.config.values import check_device, check_precision
from energy_cli.engine.probe import Choices, cpu_has_fast_bf16
from energy_cli.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The compute device, the autocast dtype (None = fp32) and the memory format of image batches. A command
    builds it from its config (commands/settings.py: runtime_from_config); the defaults here serve code that
    builds one by hand (tests, scripts): no progress bars."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False
    progress: bool = False
    compile: bool = False
    eval_batch_size: int = 256
    int8: bool = False            # precision=int8: eval runs an int8-quantized model (engine.quantize), fp32 around it
    cuda_graphs: bool = False     # training steps replayed as a CUDA graph (engine.graphs)
    winograd: bool = False        # eval's 3x3 convolutions as Winograd F(4x4, 3x3) (engine.winograd)
    winograd_train: bool = False  # training's too (forward and input gradient: engine.winograd.TrainingConv2d)

    @property
    def precision(self) -> str:
        if self.int8:
            return "int8"
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


def resolve_precision(name: str, device: torch.device, choices: Choices | None = None) -> torch.dtype | None:
    """auto -> bf16 where it is fast: on CUDA GPUs with bf16 support, and on CPUs where the probe (`choices`)
    measured bf16 clearly faster than fp32 (without `choices`: CPUs with AMX); fp32 elsewhere. fp32 | bf16 as
    given; int8 computes in fp32 around its quantized model (no autocast)."""
    name = check_precision(name)
    if name in ("fp32", "int8"):
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":   # auto
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    fast = choices.bf16 if choices is not None else cpu_has_fast_bf16()
    return torch.bfloat16 if fast else None


def auto_or_flag(key: str, value: Any) -> str:
    """A key's value as "auto", "true" or "false" (booleans and strings accepted); anything else is refused."""
    text = str(value).lower()
    if text not in ("auto", "true", "false"):
        raise UserError(f"{key}={value} is not known; use auto, true or false")
    return text


def resolve_channels_last(value: Any, device: torch.device, dtype: torch.dtype | None,
                          choices: Choices | None = None) -> bool:
    """auto -> channels_last on GPUs and under bf16; on a CPU in fp32 where the probe measured it clearly
    faster (`choices`; without them: no). true | false as given."""
    text = auto_or_flag("channels_last", value)
    if text != "auto":
        return text == "true"
    if device.type == "cuda" or dtype is not None:
        return True
    return bool(choices.channels_last) if choices is not None else False


def resolve_cuda_graphs(value: Any, device: torch.device, distributed: bool) -> bool:
    """auto -> training steps replayed as CUDA graphs on a CUDA device, compiled or not, except under torchrun
    (DDP's gradient hooks); true | false as given, where true needs a CUDA device and no torchrun."""
    text = auto_or_flag("cuda_graphs", value)
    if text == "false":
        return False
    usable = device.type == "cuda" and not distributed
    if text == "auto" or usable:
        return usable
    why = f"needs a CUDA device, not {device}" if device.type != "cuda" else "is not used under torchrun (DDP)"
    raise UserError(f"cuda_graphs=true {why}; use cuda_graphs=auto or cuda_graphs=false")


def resolve_winograd(value: Any, device: torch.device, dtype: torch.dtype | None, int8: bool = False,
                     compile: bool = False, choices: Choices | None = None, training: bool = False) -> bool:
    """auto -> Winograd convolutions in eval (engine.winograd; in training with `training`) on a CPU in fp32,
    eager, where the probe measured them faster here (`choices`; without them: no); true -> the same wherever it
    applies, and an error where it cannot (another device or precision, compile=true, no C compiler); false ->
    never."""
    text = auto_or_flag("winograd", value)
    if text == "false":
        return False
    usable = device.type == "cpu" and dtype is None and not int8 and not compile
    if text == "auto":
        from energy_cli.engine import winograd

        chosen = choices is not None and (choices.winograd_train if training else choices.winograd)
        return usable and bool(chosen) and winograd.available()
    if not usable:
        why = (f"device {device}" if device.type != "cpu" else "precision=int8" if int8
               else "compile=true" if compile else "bf16")
        raise UserError(f"winograd=true runs on a CPU in fp32 without compile, not with {why}; use winograd=auto "
                        "or winograd=false")
    from energy_cli.engine import winograd

    if not winograd.available():
        raise UserError(f"winograd=true needs its C kernels, which could not be built here "
                        f"({winograd.why_unavailable()}); install a C compiler, or use winograd=auto or false")
    return True


def default_threads() -> int:
    """Every core this process may run on, shared evenly among the processes torchrun started on this machine
    (LOCAL_WORLD_SIZE)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, n // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def set_threads(threads: Any, choices: Choices | None = None) -> int:
    """CPU threads for torch's kernels: `auto` = the probe's choice (`choices`: fewer than the cores only where
    that measured clearly faster), else `default_threads()`; a number as given."""
    if str(threads) == "auto":
        n = choices.threads if choices is not None else default_threads()
    else:
        n = int(threads)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def resolve_eval_batch_size(value: Any, device: torch.device, choices: Choices | None = None) -> int:
    """auto -> the probe's choice on a CPU (the largest batch within 5% of the best time per image; without
    `choices`: 256, as larger batches spill the caches), 1,024 on a GPU; a number as given."""
    if str(value) == "auto":
        if device.type == "cuda":
            return 1024
        return choices.eval_batch_size if choices is not None else 256
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
