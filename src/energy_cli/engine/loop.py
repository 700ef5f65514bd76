"""The training loop that `train` and `finetune` share: SGD, the per-step cosine schedule, and `fit`.

The loop keeps the uint8 data on the device, draws every batch by index, augments and normalises it
there, and never waits for the device inside an epoch (losses are summed on the device and read once
per epoch). All randomness of step b of epoch e comes from generators seeded with (seed, e, b), so a run
restarted from a checkpoint at any step sees exactly the batches, augmentations and outliers it would
have seen; the global torch RNG (dropout) is saved and restored with the checkpoint.

A training set streamed from disk (its images a data.streams.LazyImages) takes the same per-epoch order: a
DataLoader decodes batch b of the epoch from the files order[b*B:(b+1)*B] (the batches from the resumed step
on), and augmentation and normalisation happen on the device as for the in-memory set; both give the same
batches bit for bit."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from energy_cli.data.batches import Normalizer, random_crop_flip
from energy_cli.data.images import ImageSet
from energy_cli.data.streams import LazyImages
from energy_cli.engine import distributed, winograd
from energy_cli.engine.graphs import GraphedStep
from energy_cli.engine.inference import accuracy, predict
from energy_cli.engine.runtime import Runtime
from energy_cli.engine.seeding import mix_seed
from energy_cli.errors import UserError

log = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                   nesterov: bool) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and weight decay on every parameter, as in the paper."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def cosine_factor(step: int, total_steps: int, lr: float, lr_min: float = 1e-6) -> float:
    """Multiplier of the base lr at `step`: cosine from 1 down to lr_min / lr over `total_steps`
    (the paper's per-step schedule)."""
    if total_steps <= 0:
        return 1.0
    floor = min(1.0, lr_min / lr)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total_steps, lr))


@dataclass
class LoopState:
    """Where the loop stands: finished epochs, batches done in the current epoch, running sums of the
    current epoch, and the rows logged so far. Saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# objective(logits fp32 of the whole forward batch, ID labels, number of ID rows) -> scalar loss
Objective = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class TrainSpec:
    """Everything the loop needs beyond the model: data, objective and optimisation settings."""

    train: ImageSet
    test: ImageSet
    normalizer: Normalizer
    objective: Objective
    epochs: int
    batch_size: int
    seed: int
    crop_pad: int = 0
    flip: bool = False
    outliers: ImageSet | None = None
    outlier_batch_size: int = 0
    eval_batch_size: int = 1024
    checkpoint_every_steps: int = 0
    description: str = "train"


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def fit(model: nn.Module, spec: TrainSpec, runtime: Runtime, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, state: LoopState,
        save: Callable[[LoopState], None], stop_requested: Callable[[], bool] | None = None) -> LoopState:
    """Train from `state` to `spec.epochs`, calling `save(state)` after every epoch (and every
    `checkpoint_every_steps` steps).

    Before each step `stop_requested()` is asked; when it says yes, the state after the last finished
    step is saved and returned (with `state.epoch < spec.epochs`). Raises NonFiniteLoss, before saving
    anything more, as soon as the loss stops being finite (checked every step on the CPU, every 50 steps
    and before every save on a GPU), so the last saved checkpoint is the last good one.

    Under torchrun (distributed.current().enabled) the model is wrapped in DistributedDataParallel: every
    rank builds and augments the same global batch and trains on its own slice of it (distributed.Group.shard);
    each rank's loss is weighted by its share of the batch, so the averaged gradient is the gradient of the
    global batch mean whenever the batch splits evenly. Stop requests and the finite check are agreed by all
    ranks; the logged sums are totals over all ranks. A final batch with fewer images than ranks is skipped."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm


    group = distributed.current()
    dev = runtime.device
    lazy = spec.train.images if isinstance(spec.train.images, LazyImages) else None
    images = spec.train.images.to(dev) if lazy is None else None
    labels = spec.train.labels.to(dev)
    out_images = spec.outliers.images.to(dev) if spec.outliers is not None else None
    norm = spec.normalizer.to(dev)
    n = len(spec.train)
    steps = steps_per_epoch(n, spec.batch_size)
    every = int(spec.checkpoint_every_steps)
    check_every = 1 if dev.type == "cpu" else 50   # reading the loss waits for a GPU; on a CPU it is free
    gen = runtime.generator(0)
    model.train()
    net: nn.Module = model
    if group.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def train_step(x: torch.Tensor, y: torch.Tensor, share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the batch x (the first len(y) images labelled y, outliers after them); its
        loss and the number of labelled images classified correctly, as device tensors."""
        n_in = len(y)
        with runtime.autocast():
            logits = net(x)
        loss = spec.objective(logits.float(), y, n_in)
        optimizer.zero_grad(set_to_none=True)
        (loss * share if share != 1.0 else loss).backward()
        optimizer.step()
        return loss.detach(), (logits[:n_in].detach().argmax(dim=1) == y).sum()

    # on a GPU the step is replayed as a CUDA graph (engine.graphs); never under torchrun (DDP's hooks)
    graphed = GraphedStep(train_step, optimizer, dev) if runtime.cuda_graphs and not group.enabled else None
    total = spec.epochs * steps
    saved_step = state.step
    open_until_done = contextlib.ExitStack()
    bar = open_until_done.enter_context(tqdm(total=total, initial=min(state.step, total), desc=spec.description,
                                             unit="step", disable=not runtime.progress, leave=False,
                                             dynamic_ncols=True))
    if runtime.progress:   # while the bar is drawn, log lines are written above it instead of through it
        open_until_done.enter_context(logging_redirect_tqdm())
    if runtime.winograd_train:   # the fp32 3x3 convolutions train as Winograd convolutions until fit returns
        open_until_done.enter_context(winograd.training_convolutions(model))
    try:
        while state.epoch < spec.epochs:
            epoch = state.epoch
            started = time.perf_counter()
            order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(spec.seed, epoch, 0)))
            # a streamed set: the epoch's remaining batches, decoded ahead by the loader's workers
            streamed = None if lazy is None else lazy.batches(
                order[b * spec.batch_size:(b + 1) * spec.batch_size].tolist() for b in range(state.batch, steps))
            order = order.to(dev)
            if out_images is not None:
                out_order = torch.randperm(len(out_images), generator=torch.Generator().manual_seed(
                    mix_seed(spec.seed, epoch, 1))).to(dev)
            # this process's sums since the epoch (re)started; the state holds the totals saved before
            loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
            correct = torch.zeros((), device=dev, dtype=torch.int64)
            count = torch.zeros((), device=dev, dtype=torch.int64)

            def totals() -> tuple[float, int, int]:
                """The epoch's loss sum, correct and seen counts so far, over all ranks."""
                t = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(), count.double()]))
                return state.loss_sum + float(t[0]), state.correct + int(t[1]), state.count + int(t[2])

            def agreed(check_loss: bool) -> tuple[bool, bool]:
                """(stop now, the loss is not finite), the same answer on every rank."""
                stop = stop_requested is not None and stop_requested()
                bad = check_loss and not math.isfinite(float(loss_sum))
                if group.enabled:
                    flags = distributed.any_rank(torch.tensor([float(stop), float(bad)], device=dev))
                    stop, bad = bool(flags[0]), bool(flags[1])
                return stop, bad

            def save_mid_epoch() -> None:
                """Save the position inside the epoch (running sums included) after a finite step."""
                nonlocal started, saved_step, loss_sum, correct, count
                total_loss, total_correct, total_count = totals()
                _check_finite(total_loss, epoch, state)
                state.loss_sum, state.correct, state.count = total_loss, total_correct, total_count
                loss_sum, correct, count = loss_sum * 0, correct * 0, count * 0
                distributed.sync_buffers(model)
                state.seconds += time.perf_counter() - started
                started = time.perf_counter()
                save(state)
                saved_step = state.step

            for b in range(state.batch, steps):
                stop, bad = agreed(check_loss=state.step % check_every == 0 and state.step != saved_step)
                if bad:
                    local = float(loss_sum)
                    raise NonFiniteLoss(local if not math.isfinite(local) else float("nan"), epoch + 1, state.step)
                if stop:
                    if state.step != saved_step:
                        save_mid_epoch()
                    return state
                gen.manual_seed(mix_seed(spec.seed, epoch, b, 2))
                idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
                batch = images[idx] if streamed is None else next(streamed).to(dev, non_blocking=True)
                if len(idx) < group.world_size:   # too few images to give every rank one: skip
                    state.batch = b + 1
                    continue
                x = random_crop_flip(batch, spec.crop_pad, spec.flip, gen)
                y = labels[idx]
                if out_images is not None:
                    pos = (b * spec.outlier_batch_size + torch.arange(spec.outlier_batch_size, device=dev)) % len(out_images)
                    xo = random_crop_flip(out_images[out_order[pos]], spec.crop_pad, spec.flip, gen)
                share = 1.0
                if group.enabled:   # this rank's slice of the global batch
                    part = group.shard(len(idx))
                    x, y = x[part], y[part]
                    share = len(y) * group.world_size / len(idx)
                    if out_images is not None:
                        xo = xo[group.shard(len(xo))]
                n_in = len(y)
                if out_images is not None:
                    x = torch.cat([x, xo])
                x = norm(x, runtime.memory_format)
                loss, hits = graphed(x, y) if graphed is not None else train_step(x, y, share)
                scheduler.step()
                loss_sum += loss.double() * n_in
                correct += hits
                count += n_in
                state.batch = b + 1
                state.step += 1
                bar.update(1)
                if every and state.step % every == 0 and state.batch < steps:
                    save_mid_epoch()
            total_loss, total_correct, total_count = totals()
            epoch_loss = total_loss / max(total_count, 1)
            _check_finite(epoch_loss, epoch, state)
            distributed.sync_buffers(model)
            test_logits, _ = predict(model, spec.test.images, spec.normalizer, runtime, spec.eval_batch_size)
            state.seconds += time.perf_counter() - started
            row = {
                "epoch": epoch + 1,
                "loss": epoch_loss,
                "train_acc": total_correct / max(total_count, 1),
                "test_acc": accuracy(test_logits, spec.test.labels),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": state.seconds,
            }
            state.history.append(row)
            state.epoch, state.batch = epoch + 1, 0
            state.loss_sum, state.correct, state.count, state.seconds = 0.0, 0, 0, 0.0
            bar.set_postfix(loss=f"{row['loss']:.4f}", test_acc=f"{row['test_acc']:.4f}")
            save(state)
            saved_step = state.step
            log.info(f"epoch {row['epoch']:>3}/{spec.epochs}  loss {row['loss']:.4f}  train_acc "
                     f"{row['train_acc']:.4f}  test_acc {row['test_acc']:.4f}  lr {row['lr']:.2e}  "
                     f"{row['seconds']:.1f}s")
    finally:
        open_until_done.close()
    return state


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; `epoch` (from 1) and `step` say where."""

    def __init__(self, value: float, epoch: int, step: int):
        self.value, self.epoch, self.step = value, epoch, step
        super().__init__(f"the training loss became {value} in epoch {epoch} (by step {step}); "
                         "start again with a smaller lr or loss.weight")


def _check_finite(loss: float, epoch: int, state: LoopState) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLoss(loss, epoch + 1, state.step)
