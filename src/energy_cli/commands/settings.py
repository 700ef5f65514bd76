"""A command's config -> the plain values the layers below take: the Runtime (engine: where and how to compute)
and the DataSettings (data: what to load, from where). Below commands/, no function reads the Hydra config."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from energy_cli.config.logs import progress_enabled
from energy_cli.data.settings import DataSettings
from energy_cli.engine import distributed, memory, probe
from energy_cli.engine.probe import Choices
from energy_cli.engine.runtime import (
    Runtime,
    default_threads,
    resolve_channels_last,
    resolve_cuda_graphs,
    resolve_device,
    resolve_eval_batch_size,
    resolve_precision,
    resolve_winograd,
    set_threads,
)
from energy_cli.errors import UserError


def machine_choices_for(cfg: Any, device: torch.device) -> Choices:
    """The probe's choices for this machine (cached per machine; fixed rules with probe=off or on a GPU)."""
    threads = int(cfg.get("threads", "auto")) if str(cfg.get("threads", "auto")) != "auto" else default_threads()
    return probe.machine_choices(threads, probe.mode_from(cfg.get("probe")), device)


def runtime_from_config(cfg: Any) -> Runtime:
    """The Runtime a config asks for; every `auto` follows what is fast on this machine (engine.probe). Under
    torchrun each process computes on the GPU of its local rank and only rank 0 draws progress bars."""

    group = distributed.current()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        memory.retain_freed_memory()   # freed activations are reused, not faulted in again (before the probe too)
    if group.enabled and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    if group.enabled and device.type == "cpu":
        # every rank must build the same model (DDP checks its parameters' strides): rank 0 probes, the rest
        # take its answer, instead of each rank measuring on its own (and perhaps deciding otherwise)
        choices = distributed.broadcast(machine_choices_for(cfg, device) if group.is_main else None)
    else:
        choices = machine_choices_for(cfg, device)
    if device.type == "cpu":
        set_threads(cfg.threads, choices)
    dtype = resolve_precision(cfg.precision, device, choices)
    int8 = str(cfg.precision) == "int8"
    if int8 and device.type != "cpu":
        raise UserError(f"precision=int8 runs on a CPU (PyTorch's x86 int8 kernels), not on {device}; add device=cpu, "
                        "or use precision=bf16 on a GPU")
    winograd = resolve_winograd(cfg.get("winograd", "auto"), device, dtype, int8, bool(cfg.compile), choices)
    winograd_train = resolve_winograd(cfg.get("winograd", "auto"), device, dtype, int8, bool(cfg.compile), choices,
                                      training=True)
    return Runtime(device=device, dtype=dtype, winograd=winograd, winograd_train=winograd_train,
                   channels_last=resolve_channels_last(cfg.get("channels_last", "auto"), device, dtype, choices),
                   progress=progress_enabled(cfg.progress) and group.is_main,
                   compile=bool(cfg.compile),
                   eval_batch_size=resolve_eval_batch_size(cfg.eval_batch_size, device, choices), int8=int8,
                   cuda_graphs=resolve_cuda_graphs(cfg.get("cuda_graphs", "auto"), device, group.enabled))


def data_settings(cfg: DictConfig) -> DataSettings:
    """What the data sources need from a command's config (interpolations resolved)."""
    def plain(key: str) -> dict[str, Any]:
        node = cfg.get(key)
        return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}  # type: ignore[arg-type]

    cache_dir = cfg.get("cache_dir")
    return DataSettings(dataset=plain("dataset"), outliers=plain("outliers"), data_root=str(cfg.data_root),
                        download=bool(cfg.download), cache_dir=None if cache_dir in (None, "") else str(cache_dir),
                        progress=progress_enabled(cfg.progress), seed=int(cfg.seed),
                        device=str(resolve_device(cfg.device)),
                        ood_resize=str(cfg.get("ood_resize", "resize")))
