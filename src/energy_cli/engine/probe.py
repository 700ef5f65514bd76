"""What is fast on this machine: a short micro-benchmark, run once per machine and cached.

On a CPU, `precision=auto`, the memory format of image batches, `eval_batch_size=auto` and `threads=auto` follow
what a probe measured here rather than what a CPU flag suggests. The probe times a 3x3 convolution + ReLU of the
shape that dominates WRN-40-2 (64 channels on 16x16 maps) in fp32 with contiguous and with channels-last memory,
the same under bf16 autocast, a few batch sizes, a layer of each of WRN-40-2's stages direct and as Winograd
convolutions, in eval and (two of them) forward + backward for training (`winograd=auto`, engine.winograd), and a
square matrix product in fp32 and bf16 (the machine's matrix peak). The candidates are timed in interleaved rounds and each keeps its fastest time (other processes
only ever slow a run down). A candidate replaces the safe default (fp32, contiguous, one thread per allowed core)
only when it is clearly faster (`MARGIN`), so the probe never picks a slower path; bf16 must be faster still
(`BF16_MARGIN`) because it changes the numbers, which rules it out wherever bf16 is emulated.

The answer is cached in `$XDG_CACHE_HOME/energy-ood/probe.json` (default `~/.cache/energy-ood/`) under a key of
CPU model, instruction sets (`cpu_isa`), torch version and thread count. `probe=off` (or the environment variable `ENERGY_OOD_PROBE=off`)
skips the probe and the cache and uses fixed rules instead (`static_choices`); `probe=refresh` measures again and
replaces the cached answer (after a hardware change, or when the first probe ran on a busy machine). GPUs are not probed: bf16 where
the GPU supports it, channels_last, eval batches of 1,024.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from energy_cli.config.paths import user_cache_dir

log = logging.getLogger(__name__)

PROBE_VERSION = 4
MARGIN = 1.05        # a candidate must be at least 5% faster than the default to replace it
BF16_MARGIN = 1.25   # bf16 must be at least 25% faster than the best fp32 path
EVAL_BATCHES = (64, 128, 256)
MODES = ("auto", "off", "refresh")


@dataclass(frozen=True)
class Timings:
    """Fastest seconds of each probe candidate; `per_image`: eval batch size -> seconds per image."""

    conv_contiguous: float
    conv_channels_last: float
    conv_bf16: float | None                   # None where bf16 autocast is unavailable
    per_image: dict[int, float]
    threads: dict[int, float] = field(default_factory=dict)   # thread count -> conv seconds (when tried)
    matmul_fp32_gflops: float = 0.0
    matmul_bf16_gflops: float = 0.0
    layers_direct: float = 0.0                # a layer of each of WRN-40-2's stages, direct (stage_layers)
    layers_winograd: float | None = None      # the same as Winograd F(4x4, 3x3); None where it cannot be built
    train_layers_direct: float = 0.0          # forward + backward of two of those layers at batch 128, direct
    train_layers_winograd: float | None = None   # the same as engine.winograd.TrainingConv2d


@dataclass(frozen=True)
class Choices:
    """What runs fastest here: bf16 autocast or fp32, the batches' memory format, eval batch size, threads, and
    whether eval's and training's fp32 convolutions run as Winograd convolutions."""

    bf16: bool
    channels_last: bool
    eval_batch_size: int
    threads: int
    winograd: bool = False
    winograd_train: bool = False              # training's fp32 convolutions too (forward and input gradient)
    source: str = "probe"                     # probe (measured now) | cache | rules (probe=off, or a GPU)
    matmul_fp32_gflops: float = 0.0
    matmul_bf16_gflops: float = 0.0


# --------------------------------------------------------------------------- decisions (pure)

def choose_channels_last(t: Timings) -> bool:
    """channels_last when its convolution takes at most 1/MARGIN of the contiguous one's time."""
    return t.conv_channels_last * MARGIN <= t.conv_contiguous


def choose_bf16(t: Timings) -> bool:
    """bf16 autocast when its convolution takes at most 1/BF16_MARGIN of the best fp32 time (never where bf16
    is emulated: there it is several times slower than fp32)."""
    if t.conv_bf16 is None:
        return False
    return t.conv_bf16 * BF16_MARGIN <= min(t.conv_contiguous, t.conv_channels_last)


def choose_winograd(t: Timings) -> bool:
    """Winograd convolutions in fp32 eval when they took at most 1/MARGIN of the direct ones' time."""
    if t.layers_winograd is None:
        return False
    return t.layers_winograd * MARGIN <= t.layers_direct


def choose_winograd_train(t: Timings) -> bool:
    """Winograd convolutions in fp32 training when their forward + backward took at most 1/MARGIN of the
    direct ones' time."""
    if t.train_layers_winograd is None:
        return False
    return t.train_layers_winograd * MARGIN <= t.train_layers_direct


def choose_batch(per_image: dict[int, float]) -> int:
    """The largest batch whose seconds per image are within MARGIN of the best (fewer, larger steps)."""
    best = min(per_image.values())
    return max(b for b, s in per_image.items() if s <= best * MARGIN)


def choose_threads(default: int, timings: dict[int, float]) -> int:
    """Fewer threads than `default` (one per physical core on an SMT machine) only when clearly faster."""
    if default not in timings:
        return default
    best = min(timings, key=lambda n: timings[n])
    return best if timings[best] * MARGIN <= timings[default] else default


def decide(t: Timings, default_threads: int) -> Choices:
    """The choices a probe's timings imply (bf16 was timed in channels_last, so it brings channels_last)."""
    bf16 = choose_bf16(t)
    return Choices(bf16=bf16, channels_last=bf16 or choose_channels_last(t), eval_batch_size=choose_batch(t.per_image),
                   threads=choose_threads(default_threads, t.threads), winograd=choose_winograd(t),
                   winograd_train=choose_winograd_train(t),
                   matmul_fp32_gflops=t.matmul_fp32_gflops, matmul_bf16_gflops=t.matmul_bf16_gflops)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles (bf16 matrix units): the fixed rule of probe=off."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - a private check; absence means "no"
        return False


def static_choices(threads: int, device: torch.device | None = None) -> Choices:
    """The fixed rules (probe=off, and GPUs): on a CPU bf16 with channels_last only where it has AMX, else fp32
    contiguous, eval batches of 256; on a GPU bf16 where supported, channels_last, eval batches of 1,024."""
    if device is not None and device.type == "cuda":
        return Choices(bf16=torch.cuda.is_bf16_supported(), channels_last=True, eval_batch_size=1024,
                       threads=threads, source="rules")
    amx = cpu_has_fast_bf16()
    return Choices(bf16=amx, channels_last=amx, eval_batch_size=256, threads=threads, source="rules")


# --------------------------------------------------------------------------- measurement

def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fastest(candidates: dict[str, Callable[[], object]], rounds: int,
            hopeless: float = float("inf")) -> dict[str, float]:
    """Fastest wall-clock seconds of each candidate over `rounds` interleaved runs after one warm-up run each.
    For candidates doing the same work, a candidate whose warm-up took over `hopeless` times the quickest warm-up
    cannot win and is not run again (its warm-up time stands): an emulated bf16 path then costs one run only."""
    best = {name: _seconds(fn) for name, fn in candidates.items()}
    quickest = min(best.values())
    live = {name: fn for name, fn in candidates.items() if best[name] <= hopeless * quickest}
    for _ in range(rounds):
        for name, fn in live.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 512, rounds: int = 5,
                  device: torch.device | str = "cpu", repeat: int = 1) -> float:
    """Matrix-product rate of this machine: 2 n^3 flops per n x n product over the fastest time, in GFLOP/s
    (`repeat` products per timed run, so that a fast GPU's run is long enough to time)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    cuda = torch.device(device).type == "cuda"

    def run():
        for _ in range(repeat):
            torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        seconds = fastest({"mm": run}, rounds)["mm"]
    return 2 * n**3 * repeat / seconds / 1e9


def conv_step(batch: int, memory_format: torch.memory_format, bf16: bool = False) -> Callable[[], object]:
    """A 3x3 convolution + ReLU of WRN-40-2's middle stage, (batch, 64, 16, 16) -> (batch, 64, 16, 16)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, 16, 16, generator=g).contiguous(memory_format=memory_format)
    w = (torch.randn(64, 64, 3, 3, generator=g) * 0.05).contiguous(memory_format=memory_format)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return F.relu(F.conv2d(x, w, padding=1))
    return run


def stage_layers(batch: int, memory_format: torch.memory_format, winograd: bool = False) -> Callable[[], object]:
    """A 3x3 convolution + ReLU at each of WRN-40-2's stages (32 channels at 32x32, 64 at 16x16, 128 at 8x8,
    where eval's Winograd convolutions apply), direct or as engine.winograd computes them."""
    from energy_cli.engine.winograd import WinogradConv2d

    g = torch.Generator().manual_seed(0)
    layers = []
    for channels, side in ((32, 32), (64, 16), (128, 8)):
        x = torch.randn(batch, channels, side, side, generator=g).contiguous(memory_format=memory_format)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
        conv = conv.to(memory_format=memory_format)
        layers.append((x, WinogradConv2d(conv, relu=True) if winograd else
                       (lambda x, conv=conv: F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)))))

    def run():
        with torch.inference_mode():
            return [layer(x) for x, layer in layers]
    return run


def training_layers(batch: int, memory_format: torch.memory_format, winograd: bool = False) -> Callable[[], object]:
    """Forward and backward (input and weight gradients) of a 3x3 convolution + ReLU at 32 channels on 32x32 and
    at 64 on 16x16 (batch 128, the paper's training batch), direct or as engine.winograd.TrainingConv2d."""
    from energy_cli.engine.winograd import training_convolutions

    g = torch.Generator().manual_seed(0)
    layers = []
    for channels, side in ((32, 32), (64, 16)):
        x = torch.randn(batch, channels, side, side, generator=g).contiguous(memory_format=memory_format)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(memory_format=memory_format)
        layers.append((x.requires_grad_(), conv))

    def run():
        with training_convolutions(torch.nn.ModuleList([c for _, c in layers])) if winograd else nullcontext():
            for x, conv in layers:
                F.relu(conv(x)).sum().backward()
    return run


def bf16_autocast_works() -> bool:
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            F.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3))
        return True
    except Exception:  # noqa: BLE001 - any failure means bf16 autocast is not usable here
        return False


def measure(threads: int, physical_cores: int | None = None, rounds: int = 3) -> Timings:
    """Time the candidates with `threads` torch threads (and with `physical_cores` threads when fewer)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cl, contiguous = torch.channels_last, torch.contiguous_format
        candidates = {"contiguous": conv_step(16, contiguous), "channels_last": conv_step(16, cl)}
        has_bf16 = bf16_autocast_works()
        if has_bf16:
            candidates["bf16"] = conv_step(16, cl, bf16=True)
        formats = fastest(candidates, rounds, hopeless=4.0)
        fmt = cl if formats["channels_last"] * MARGIN <= formats["contiguous"] else contiguous
        per_batch = fastest({str(b): conv_step(b, fmt) for b in EVAL_BATCHES}, max(1, rounds - 1))
        batch = choose_batch({b: per_batch[str(b)] / b for b in EVAL_BATCHES})
        layers = {"direct": stage_layers(batch, fmt)}
        from energy_cli.engine import winograd

        if winograd.available():
            layers["winograd"] = stage_layers(batch, fmt, winograd=True)
        layer_times = fastest(layers, rounds)
        training = {"direct": training_layers(128, fmt)}
        if winograd.available():
            training["winograd"] = training_layers(128, fmt, winograd=True)
        training_times = fastest(training, rounds)
        thread_times: dict[int, float] = {}
        if physical_cores and physical_cores < threads:
            step = conv_step(16, fmt)
            for n in (threads, physical_cores):
                torch.set_num_threads(n)
                thread_times[n] = fastest({"conv": step}, rounds)["conv"]
            torch.set_num_threads(threads)
        return Timings(conv_contiguous=formats["contiguous"], conv_channels_last=formats["channels_last"],
                       conv_bf16=formats.get("bf16"), per_image={b: per_batch[str(b)] / b for b in EVAL_BATCHES},
                       threads=thread_times, layers_direct=layer_times["direct"],
                       layers_winograd=layer_times.get("winograd"), train_layers_direct=training_times["direct"],
                       train_layers_winograd=training_times.get("winograd"), matmul_fp32_gflops=matmul_gflops(torch.float32, rounds=rounds),
                       matmul_bf16_gflops=matmul_gflops(torch.bfloat16, n=256, rounds=1) if has_bf16 else 0.0)
    finally:
        torch.set_num_threads(saved)


# --------------------------------------------------------------------------- the machine, the cache

def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name with its family and model numbers (the first processor in /proc/cpuinfo on Linux, or
    the `cpuinfo` text given), else what the platform module knows. The numbers tell apart CPU generations that a
    virtual machine reports under one name (e.g. "AMD EPYC")."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break                                   # the first processor's block is enough
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    if "model name" not in fields:
        return platform.processor() or platform.machine() or "unknown cpu"
    family, model = fields.get("cpu family"), fields.get("model")
    numbers = f" (family {family}, model {model})" if family and model else ""
    return fields["model name"] + numbers


def physical_cores(cpus: set[int] | None = None) -> int | None:
    """Distinct physical cores among the CPUs this process may use (Linux sysfs), or None when unknown."""
    try:
        cpus = cpus if cpus is not None else os.sched_getaffinity(0)
        cores = set()
        for cpu in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        return len(cores) or None
    except (AttributeError, OSError):
        return None


def cpu_isa() -> str:
    """The instruction sets the kernels use: ATen's CPU capability (AVX2, AVX512, ...; ATEN_CPU_CAPABILITY may
    lower it), oneDNN's ceiling when ONEDNN_MAX_CPU_ISA sets one, and whether AMX tiles exist. CPU model names
    are not enough: one name ("AMD EPYC") covers machines with and without native bf16."""
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch
        capability = "unknown"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f"{capability}{' amx' if cpu_has_fast_bf16() else ''}{f' onednn<={onednn}' if onednn else ''}"


def machine_key(threads: int) -> str:
    return f"{cpu_model()} | {cpu_isa()} | torch {torch.__version__} | {threads} threads | probe {PROBE_VERSION}"


def cache_file() -> Path:
    return user_cache_dir() / "probe.json"


def read_cache(path: Path | None = None) -> dict[str, dict]:
    """{machine key: stored choices}; an unreadable or foreign file counts as empty."""
    try:
        data = json.loads((path or cache_file()).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache_entry(key: str, entry: dict, path: Path | None = None) -> None:
    """Add or replace one entry; written to a temporary file and renamed, so readers never see half a file.
    A cache that cannot be written (read-only home) is silently skipped: the probe then runs again next time."""
    path = path or cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**read_cache(path), key: entry}
        fd, tmp = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def mode_from(value: object = None) -> str:
    """probe=auto|off; the environment variable ENERGY_OOD_PROBE, when set, wins over `value`."""
    mode = str(os.environ.get("ENERGY_OOD_PROBE") or (value if value is not None else "auto")).lower()
    return {"false": "off", "true": "auto", "0": "off", "1": "auto"}.get(mode, mode)


# answers measured on a busy machine: kept for this process only (machine key -> choices)
_UNSAVED: dict[str, Choices] = {}


def machine_choices(threads: int, mode: str = "auto", device: torch.device | None = None) -> Choices:
    """The choices for a CPU run with `threads` threads: from the cache, else (and with mode=refresh) measured
    now and cached; with mode=off (or on a GPU) the fixed rules."""
    if mode == "off" or (device is not None and device.type != "cpu"):
        return static_choices(threads, device)
    key = machine_key(threads)
    stored = read_cache().get(key) if mode != "refresh" else None
    if isinstance(stored, dict):
        try:
            return replace(Choices(**{k: stored[k] for k in Choices.__dataclass_fields__ if k in stored}),
                           source="cache")
        except TypeError:
            pass   # an entry of another shape: measure again
    if key in _UNSAVED and mode != "refresh":
        return _UNSAVED[key]
    choices = decide(measure(threads, physical_cores()), threads)
    load, cpus = load_average(), machine_cpus()
    if not is_quiet(load, cpus):
        log.info(f"note: this machine is busy (load {load:.1f} on {cpus} CPUs): the speed probe's answer is used "
                 "by this process only and not cached; a later run on a quiet machine measures again")
        _UNSAVED[key] = choices
        return choices
    write_cache_entry(key, {**asdict(choices), "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return choices


def is_quiet(load: float | None, cpus: int) -> bool:
    """A measurement worth keeping: fewer runnable threads, averaged over the last minute, than the machine has
    CPUs (other work competing for the cores slows every candidate unevenly, and an answer measured then would
    stay in the cache). Unknown load (no os.getloadavg) counts as quiet."""
    return load is None or load < cpus


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable threads), or None where the OS does not report it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_cpus() -> int:
    """The machine's CPUs (the load average counts the whole machine's runnable threads too)."""
    return os.cpu_count() or 1
