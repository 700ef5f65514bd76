"""The GPU paths (run by scripts/gpu_check.sh on a machine with CUDA; skipped elsewhere): bf16 autocast,
channels_last, device-resident training data, training steps replayed as CUDA graphs, a one-process DDP group on
NCCL, torch.compile."""

import contextlib
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.detectors import build_detectors
from energy_cli.detectors.scoring import score_images
from energy_cli.engine.fusion import fold_batchnorm
from energy_cli.engine.graphs import GraphedStep
from energy_cli.engine.inference import predict
from energy_cli.engine.loop import (
    LoopState,
    TrainSpec,
    fit,
    make_optimizer,
    make_scheduler,
)
from energy_cli.engine.runtime import (
    Runtime,
    is_compiled,
    prepare_model,
    resolve_channels_last,
    resolve_precision,
)
from energy_cli.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL_WRN = {"name": "wrn40_2", "depth": 10, "widen_factor": 2, "dropout": 0.3}
NORM = Normalizer([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


def cuda():
    return torch.device("cuda")


def images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def model_pair(runtime_a, runtime_b):
    torch.manual_seed(0)
    a = build_model(SMALL_WRN, 10, 3)
    b = build_model(SMALL_WRN, 10, 3)
    b.load_state_dict(a.state_dict())
    return prepare_model(a, runtime_a), prepare_model(b, runtime_b)


def test_auto_picks_bf16_and_channels_last_on_a_gpu_with_bf16():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    dtype = resolve_precision("auto", cuda())
    assert dtype == torch.bfloat16 and resolve_channels_last("auto", cuda(), dtype)


def test_bf16_autocast_keeps_fp32_logits_and_the_ranking():
    fp32, bf16 = Runtime(cuda(), None, channels_last=True), Runtime(cuda(), torch.bfloat16, channels_last=True)
    a, b = model_pair(fp32, bf16)
    x, _ = images(512)
    la, _ = predict(a, x, NORM, fp32, 256)
    lb, _ = predict(b, x, NORM, bf16, 256)
    assert lb.dtype == torch.float32
    energy_a, energy_b = torch.logsumexp(la, 1), torch.logsumexp(lb, 1)
    rank_a, rank_b = energy_a.argsort().argsort().double(), energy_b.argsort().argsort().double()
    assert torch.corrcoef(torch.stack([rank_a, rank_b]))[0, 1] > 0.99


def test_channels_last_gives_the_same_logits_on_the_gpu():
    torch.backends.cudnn.allow_tf32 = False     # compare fp32 with fp32, not TF32 rounding
    try:
        plain, cl = Runtime(cuda(), None, channels_last=False), Runtime(cuda(), None, channels_last=True)
        a, b = model_pair(plain, cl)
        x, _ = images(64)
        la, _ = predict(a, x, NORM, plain, 32)
        lb, _ = predict(b, x, NORM, cl, 32)
        assert torch.allclose(la, lb, rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_folded_batchnorm_matches_on_the_gpu():
    runtime = Runtime(cuda(), None, channels_last=True)
    torch.manual_seed(0)
    model = build_model(SMALL_WRN, 10, 3).eval()
    folded = prepare_model(fold_batchnorm(model), runtime)
    model = prepare_model(model, runtime)
    x, _ = images(64)
    la, _ = predict(model, x, NORM, runtime, 64)
    lb, _ = predict(folded, x, NORM, runtime, 64)
    assert torch.allclose(la, lb, rtol=1e-2, atol=1e-3)     # TF32 convolutions round differently


def test_training_keeps_the_data_on_the_device_and_learns():
    runtime = Runtime(cuda(), torch.bfloat16 if torch.cuda.is_bf16_supported() else None, channels_last=True,
                      progress=False)
    torch.manual_seed(0)
    model = prepare_model(build_model(SMALL_WRN, 10, 3), runtime)
    x, y = images(512)
    y = (x.float().mean((1, 2, 3)) > 127.5).long()        # a learnable label: bright vs dark
    spec = TrainSpec(train=ImageSet("train", x, y), test=ImageSet("test", x[:128], y[:128]), normalizer=NORM,
                     objective=lambda logits, labels, n: F.cross_entropy(logits, labels), epochs=3, batch_size=64,
                     seed=0, crop_pad=4, flip=True, description="gpu")
    opt = make_optimizer(model, 0.05, 0.9, 5e-4, True)
    state = fit(model, spec, runtime, opt, make_scheduler(opt, 3 * 8, 0.05), LoopState(), save=lambda s: None)
    losses = [row["loss"] for row in state.history]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def _train(graphs: bool, lr: float, n: int = 520, batch: int = 64, epochs: int = 2, compile: bool = False):
    """fp32 training of a small WRN (no dropout) from the same start on the same data, eagerly or with CUDA
    graphs, compiled or not: (model, optimizer, loop state)."""
    runtime = Runtime(cuda(), None, channels_last=True, cuda_graphs=graphs, compile=compile)
    torch.manual_seed(0)
    model = prepare_model(build_model({**SMALL_WRN, "dropout": 0.0}, 10, 3), runtime)
    x, _ = images(n, seed=1)
    y = (x.float().mean((1, 2, 3)) > 127.5).long()
    spec = TrainSpec(train=ImageSet("train", x, y), test=ImageSet("test", x[:64], y[:64]), normalizer=NORM,
                     objective=lambda logits, labels, n_in: F.cross_entropy(logits, labels), epochs=epochs,
                     batch_size=batch, seed=0, crop_pad=4, flip=True, description="graphs")
    steps = epochs * -(-n // batch)
    opt = make_optimizer(model, lr, 0.9, 5e-4, True)
    state = fit(model, spec, runtime, opt, make_scheduler(opt, steps, lr), LoopState(), save=lambda s: None)
    return model, opt, state


@contextlib.contextmanager
def exact_fp32():
    """fp32 without TF32 and with deterministic cuDNN algorithms, so that two runs can be compared closely."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a.state_dict().values(),
                                                                           b.state_dict().values()))


def _assert_same_training(eager, eager_opt, eager_state, graphed, graphed_opt, graphed_state):
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), (name, max_difference(eager, graphed))
    for p, q in zip(eager.parameters(), graphed.parameters()):
        ma, mb = eager_opt.state[p]["momentum_buffer"], graphed_opt.state[q]["momentum_buffer"]
        assert torch.allclose(ma, mb, rtol=1e-3, atol=1e-4)
    assert graphed_opt.param_groups[0]["lr"] == eager_opt.param_groups[0]["lr"]    # floats, as eager keeps them
    assert isinstance(graphed_opt.param_groups[0]["lr"], float)
    assert len(eager_state.history) == len(graphed_state.history) == 2
    for a, b in zip(eager_state.history, graphed_state.history):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["train_acc"] == pytest.approx(b["train_acc"], abs=2 / 520)


@pytest.fixture
def graphed_steps(monkeypatch):
    """The GraphedStep objects that `fit` builds, to check that their steps were replayed."""
    from energy_cli.engine import loop

    built = []

    class Recorded(GraphedStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(loop, "GraphedStep", Recorded)
    return built


def _replayed(built, epochs=2, steps=9):
    """One GraphedStep, captured; every full batch after the 3 warm-up steps replayed, the short ones eager."""
    assert len(built) == 1 and built[0].graph is not None and not built[0].failed
    assert built[0].replays == epochs * (steps - 1) - 3 and built[0].eager_calls == 3 + epochs


@pytest.mark.parametrize("lr", [0.01, 0.05])
def test_cuda_graph_training_gives_the_eager_weights(lr, graphed_steps):
    """Graphed steps follow the eager ones: the same weights, BatchNorm statistics, momentum buffers and losses
    after 2 epochs with a cosine learning rate that changes every step and a shorter last batch (run eagerly)."""
    with exact_fp32():
        eager = _train(False, lr)
        assert graphed_steps == []
        graphed = _train(True, lr)
    _replayed(graphed_steps)
    _assert_same_training(*eager, *graphed)


def test_compiled_training_with_cuda_graphs_gives_the_compiled_eager_weights(graphed_steps):
    """compile=true and cuda_graphs together: the compiled step is captured and replayed, and it trains as the
    compiled step run eagerly does (the shorter last batch and the end-of-epoch eval are compiled for their own
    shapes and mode, outside the capture)."""
    with exact_fp32():
        eager = _train(False, 0.05, compile=True)
        graphed = _train(True, 0.05, compile=True)
    assert is_compiled(graphed[0])
    _replayed(graphed_steps)
    _assert_same_training(*eager, *graphed)


def test_graphed_step_replays_after_warmup_and_runs_other_shapes_eagerly():
    model = prepare_model(build_model(SMALL_WRN, 10, 3), Runtime(cuda(), torch.bfloat16, channels_last=True))
    opt = make_optimizer(model, 0.1, 0.9, 5e-4, True)

    def step(x, y):
        with torch.autocast("cuda", torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return (loss.detach(),)

    graphed = GraphedStep(step, opt, cuda(), warmup=2)
    xs = [torch.randn(32, 3, 32, 32, device=cuda()).contiguous(memory_format=torch.channels_last) for _ in range(6)]
    ys = [torch.randint(0, 10, (32,), device=cuda()) for _ in range(6)]
    losses = [float(graphed(xs[i], ys[i])[0]) for i in range(5)]
    assert graphed.graph is not None and not graphed.failed
    assert graphed.eager_calls == 2 and graphed.replays == 3      # 2 eager warm-up steps, then capture + 2 replays
    graphed(xs[5][:7], ys[5][:7])                                 # another shape: eager
    assert graphed.replays == 3 and graphed.eager_calls == 3
    assert all(torch.isfinite(torch.tensor(losses)))
    before = [p.detach().clone() for p in model.parameters()]
    graphed(xs[0], ys[0])
    assert graphed.replays == 4
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))   # a replay updates the weights


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_one_process_on_nccl_gives_the_plain_gradients():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from energy_cli.engine import distributed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = build_model(SMALL_WRN, 10, 3).to(cuda())
        twin = build_model(SMALL_WRN, 10, 3).to(cuda())
        twin.load_state_dict(plain.state_dict())
        ddp = DistributedDataParallel(twin, device_ids=[0])
        x = torch.randn(16, 3, 32, 32, device=cuda())
        y = torch.randint(0, 10, (16,), device=cuda())
        torch.manual_seed(1)
        F.cross_entropy(plain(x), y).backward()
        torch.manual_seed(1)
        F.cross_entropy(ddp(x), y).backward()
        for p, q in zip(plain.parameters(), twin.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5)
        total = torch.tensor([2.0, 3.0], device=cuda())
        dist.all_reduce(total)
        assert total.tolist() == [2.0, 3.0]
        assert torch.equal(distributed.weights_checksum(plain), distributed.weights_checksum(twin))
    finally:
        dist.destroy_process_group()


def test_compile_on_the_gpu_gives_the_eager_scores():
    runtime = Runtime(cuda(), None, channels_last=True, progress=False)
    compiled_rt = Runtime(cuda(), None, channels_last=True, progress=False, compile=True)
    torch.manual_seed(0)
    eager = prepare_model(build_model(SMALL_WRN, 10, 3).eval(), runtime)
    twin = build_model(SMALL_WRN, 10, 3)
    twin.load_state_dict(eager.state_dict())
    compiled = prepare_model(twin.eval(), compiled_rt, (3, 32, 32))
    assert is_compiled(compiled)
    x, _ = images(300)
    dets = build_detectors(["msp", "energy"], eager, NORM, runtime, batch_size=128)
    _, want = score_images(eager, x, dets, NORM, runtime, 128)
    dets = build_detectors(["msp", "energy"], compiled, NORM, compiled_rt, batch_size=128)
    _, got = score_images(compiled, x, dets, NORM, compiled_rt, 128)
    for name in want:
        assert torch.allclose(want[name], got[name], rtol=1e-2, atol=1e-3), name
