"""A training step replayed as a CUDA graph.

On a GPU an eager training step of WRN-40-2 at batch 128 issues about a thousand small kernels (forward, backward,
optimiser update), and the CPU that launches them one by one, not the GPU, sets the pace: measured on an H200,
17 ms per step, 1.9% of its bf16 matrix rate (docs/performance.md). Captured once as a CUDA graph, the whole
step (forward under autocast, loss, backward, SGD update, BatchNorm statistics, dropout masks) is replayed with
one launch per step, and the GPU's own time becomes the limit.

What a replay needs, and how `GraphedStep` provides it:

- the same memory every time: each batch is copied into static input tensors first, and the outputs (loss,
  correct count) are read from static output tensors after the replay;
- the first steps run eagerly (on a side stream, as the CUDA documentation asks), so that momentum buffers,
  cuDNN's algorithm choices and autograd's worker exist before the capture; they are real steps of the run;
- a learning rate that changes every step (cosine schedule): during the capture the optimiser reads the
  learning rate from a one-element tensor on the GPU (SGD's fused kernel accepts one), which is set from the
  optimiser's own (float) learning rate before each replay; the optimiser keeps its floats, so schedulers and
  checkpoints see nothing different;
- one shape: the step is captured for the first batch shape it sees; other shapes (the shorter last batch of an
  epoch) run eagerly, with the same parameters, gradients' math and momentum buffers.

The step may call a compiled model (`compile=true`): it is compiled during the eager warm-up steps, and the
capture records the compiled kernels (other shapes and eval mode are compiled for themselves, outside it).

A replay repeats the GPU work recorded at the capture, nothing else: a forward that decides something in Python
(a Python random number, a branch on a tensor's value) keeps the decision it made then, and such a model needs
`cuda_graphs=false`. Random numbers drawn on the GPU (dropout) are fresh in every replay. A step that cannot be
captured (an operation that waits for the GPU, say) is trained eagerly from then on, with a one-line note.

The math of a step is the caller's (`step(x, y)`); this module only decides how it is launched.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


class GraphedStep:
    """Runs `step(x, y)` (which must zero the gradients, compute the loss, call backward and `optimizer.step()`,
    and return device tensors) eagerly for the first `warmup` calls, then captures it as a CUDA graph for that
    batch shape and replays the graph for every later call of the same shape. The returned tensors of a replay are
    the graph's static outputs: read or copy them before the next call."""

    def __init__(self, step: Step, optimizer: torch.optim.Optimizer, device: torch.device, warmup: int = 3):
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.step, self.optimizer, self.device, self.warmup = step, optimizer, device, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.eager_calls = 0
        self.replays = 0
        self._key: tuple | None = None
        self._seen: tuple | None = None
        self._stream: torch.cuda.Stream | None = None

    @staticmethod
    def _shape_key(x: torch.Tensor, y: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.stride(), x.dtype, tuple(y.shape), y.dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = self._shape_key(x, y)
        if self.graph is not None and key == self._key:
            return self._replay(x, y)
        if self.graph is None and not self.failed and key == self._seen and self.eager_calls >= self.warmup:
            return self._capture(x, y)
        if self.graph is None and key != self._seen:
            self._seen, self.eager_calls = key, 0      # warm up on the shape that will be captured
        return self._eager(x, y)

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One eager step on a side stream, ordered after and before the work on the current stream."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = self.step(x, y)
        current.wait_stream(self._stream)
        for t in (x, y):     # made on the current stream, read on the side stream
            t.record_stream(self._stream)
        for t in out:        # made on the side stream, read on the current one
            t.record_stream(current)
        self.eager_calls += 1
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        groups = self.optimizer.param_groups
        saved = [(g["lr"], g.get("foreach"), g.get("fused")) for g in groups]
        self._lrs = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device) for g in groups]
        self._x, self._y = x.clone(), y.clone()   # clone keeps the memory format (channels_last)
        self.optimizer.zero_grad(set_to_none=True)   # gradients are then allocated inside the graph's memory
        graph = torch.cuda.CUDAGraph()
        try:
            for g, lr in zip(groups, self._lrs):   # the fused SGD kernel reads the learning rate from the tensor
                g["lr"], g["foreach"], g["fused"] = lr, False, True
            with torch.cuda.graph(graph):
                self._out = self.step(self._x, self._y)
        except Exception as exc:  # noqa: BLE001 - an uncapturable step keeps training eagerly
            self.failed = True
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.info(f"CUDA graph capture failed ({type(exc).__name__}: {first}); training eagerly")
            return self._eager(x, y)
        finally:
            for g, (lr, foreach, fused) in zip(groups, saved):
                g["lr"], g["foreach"], g["fused"] = lr, foreach, fused
        self.graph, self._key = graph, self._shape_key(x, y)
        return self._replay(x, y)   # a capture records the step without running it: run it now

    def _replay(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._x.copy_(x, non_blocking=True)
        self._y.copy_(y, non_blocking=True)
        for g, lr in zip(self.optimizer.param_groups, self._lrs):
            lr.fill_(float(g["lr"]))
        self.graph.replay()
        self.replays += 1
        return self._out
