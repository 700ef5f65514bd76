"""Winograd F(4x4, 3x3) convolutions for the fp32 eval path on a CPU (`winograd=auto|true|false`).

A 3x3 convolution (stride 1, zero padding 1) computes each 4x4 block of output pixels from the 6x6 input pixels
around it. Winograd's minimal filtering algorithm does that with 36 products per input-output channel pair
instead of 144 (4x fewer multiplications):

    Y = AT [ (G g G^T) * (BT d BT^T) ] AT^T        (* elementwise over the 6x6 positions)

for a 3x3 filter g, a 6x6 input tile d and the constant matrices BT (6x6), G (6x3), AT (4x6) below (the
interpolation points 0, 1, -1, 2, -2 and infinity). Over channels it becomes: U[k] = (G g G^T)[k] for each
filter (once, when the model is prepared), V[k] = (BT d BT^T)[k] for each tile (the input transform), then for
each of the 36 positions k one matrix product M[k] = V[k] U[k] over the input channels, and the output transform
Y = AT M AT^T per tile, with the bias, the residual sum and the ReLU that follow the convolution applied as Y is
written. All three run in C (`winograd.c`, engine.kernels) on blocks of tiles small enough for V and M to stay in
a core's cache (`block_size`); the tiles are split among torch's threads.

The result equals the direct convolution up to floating-point rounding (the transforms add terms up to 8x the
inputs' size: relative differences of about 1e-6 in the tests, 1e-5 at most on WRN-40-2's logits). Measured on a
2-core AVX2 CPU (docs/performance.md), each of WRN-40-2's layers took about half the time of the direct
convolution (32 channels at 32x32: 12.5 against 24.5 ms for a batch of 256). Convolutions with fewer than
MIN_CHANNELS input channels are left alone, `winograd=auto` uses it only where the probe timed it faster on this
machine, and a batch it does not fit (a side not a multiple of 4, another dtype or device, an input that needs
gradients: ODIN) runs the direct convolution instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import fx, nn

from energy_cli.engine import kernels

KERNELS = "winograd"
MIN_CHANNELS = 16
CACHE_BYTES = 384 * 1024      # V and M of one block of tiles (a core's L2 cache holds them, with U[k])

BT = ((4, 0, -5, 0, 1, 0),
      (0, -4, -4, 1, 1, 0),
      (0, 4, -4, -1, 1, 0),
      (0, -2, -1, 2, 1, 0),
      (0, 2, -1, -2, 1, 0),
      (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0),
     (-1 / 6, -1 / 6, -1 / 6),
     (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6),
     (1 / 24, -1 / 12, 1 / 6),
     (0, 0, 1))
AT = ((1, 1, 1, 1, 1, 0),
      (0, 1, -1, 2, -2, 0),
      (0, 1, 1, 4, 4, 0),
      (0, 1, -1, 8, -8, 1))


def filter_transform(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[6 i + j, c, o] = (G g G^T)[i, j] for each filter g = weight[o, c] (3x3): shape (36, C_in, C_out),
    computed in float64 and stored in `dtype`."""
    g = torch.tensor(G, dtype=torch.float64)
    u = torch.einsum("ia,ocab,jb->ijco", g, weight.detach().to(torch.float64), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(dtype).contiguous()


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same F(4x4, 3x3) convolution in float64 PyTorch operations, without the C kernels (tests compare the
    kernels' tile transforms with it)."""
    n, c, h, w = x.shape
    bt, at = torch.tensor(BT, dtype=torch.float64), torch.tensor(AT, dtype=torch.float64)
    tiles = F.pad(x.double(), (1, 1, 1, 1)).unfold(2, 6, 4).unfold(3, 6, 4)       # (n, c, h/4, w/4, 6, 6)
    v = torch.einsum("ia,nctsab,jb->ijntsc", bt, tiles, bt).reshape(36, -1, c)
    m = torch.bmm(v, filter_transform(weight, torch.float64)).reshape(6, 6, n, h // 4, w // 4, -1)
    y = torch.einsum("pi,ijntso,qj->ntpsqo", at, m, at).reshape(n, h, w, -1).permute(0, 3, 1, 2)
    return y if bias is None else y + bias.double().view(1, -1, 1, 1)


def available() -> bool:
    """Whether the transforms' C kernels are built and loaded (engine.kernels)."""
    return _library() is not None


def why_unavailable() -> str:
    return kernels.why_not(KERNELS)


def _library() -> ctypes.CDLL | None:
    lib = kernels.load(KERNELS)
    if lib is not None and not getattr(lib, "_typed", False):
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.wino_fused.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, i64, i64, i64]
        lib.wino_fused.restype = ctypes.c_int
        lib.wino_parallel.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, i64, ctypes.c_int]
        lib.wino_parallel.restype = ctypes.c_int
        lib.wino_use_openmp.argtypes = [ptr, ptr, ptr]
        lib.wino_use_openmp.restype = None
        entry_points = kernels.openmp_entry_points()
        if entry_points is not None:
            lib.wino_use_openmp(*entry_points)
        lib._openmp = entry_points is not None
        lib._typed = True
    return lib


_POOL: dict[int, ThreadPoolExecutor] = {}


def _split(fn, tiles: int, *args) -> list:
    """fn(*args, t0, t1) over [0, tiles) in torch.get_num_threads() parts: this thread runs the last part, a
    small pool the others (ctypes releases the GIL while C runs). Returns the parts' results."""
    parts = max(1, min(torch.get_num_threads(), tiles))
    step = -(-tiles // parts)
    bounds = [(a, min(tiles, a + step)) for a in range(0, tiles, step)]
    if len(bounds) == 1:
        return [fn(*args, 0, tiles)]
    pool = _POOL.get(len(bounds) - 1)
    if pool is None:
        pool = _POOL[len(bounds) - 1] = ThreadPoolExecutor(len(bounds) - 1, thread_name_prefix="winograd")
    futures = [pool.submit(fn, *args, a, b) for a, b in bounds[:-1]]
    last = fn(*args, *bounds[-1])
    return [f.result() for f in futures] + [last]


def block_size(c_in: int, c_out: int) -> int:
    """Tiles per block: V (36 x block x c_in floats) and M (36 x block x c_out) within CACHE_BYTES, a multiple of
    6 (the products' panel height) from 12 to 48 (measured best for 16 to 256 channels, docs/performance.md)."""
    block = CACHE_BYTES // (36 * 4 * (c_in + c_out))
    return max(12, min(48, block - block % 6))


def fits(conv: nn.Module) -> bool:
    """A convolution this module can replace: 3x3, stride 1, zero padding 1, no groups or dilation, at least
    MIN_CHANNELS input channels, channel counts multiples of 8."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= MIN_CHANNELS
            and conv.in_channels % 8 == 0 and conv.out_channels % 8 == 0)


class WinogradConv2d(nn.Module):
    """An eval-only 3x3 convolution computed as F(4x4, 3x3), with the ReLU (`relu`) and the residual sum
    (`forward(x, residual)`) that follow it applied as its output is written. Batches it does not fit run
    `conv2d(x) (+ residual) (then ReLU)` directly, with the original weights."""

    def __init__(self, conv: nn.Conv2d, relu: bool = False):
        super().__init__()
        self.relu = bool(relu)
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.to(torch.float32).contiguous())
        self.register_buffer("u", filter_transform(conv.weight))

    def extra_repr(self) -> str:
        return f"{self.u.shape[1]}, {self.u.shape[2]}, F(4x4, 3x3), relu={self.relu}"

    def direct(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, padding=1)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        lib = _library()
        if (lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or h % 4 or w % 4
                or c != self.u.shape[1] or self.u.dtype != torch.float32
                or (torch.is_grad_enabled() and x.requires_grad)
                or (residual is not None and (residual.dtype != torch.float32 or residual.shape[1:] != (self.u.shape[2], h, w)))):
            return self.direct(x, residual)
        x = x.contiguous(memory_format=torch.channels_last)
        out = self.u.shape[2]
        y = torch.empty((n, out, h, w), dtype=torch.float32, memory_format=torch.channels_last)
        res = None
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last)
            res = residual.data_ptr()
        args = (x.data_ptr(), self.u.data_ptr(), self.bias.data_ptr(), res, y.data_ptr(), n, h, w, c, out,
                int(self.relu), block_size(c, out))
        threads = torch.get_num_threads()
        if lib._openmp and threads > 1:
            done = [lib.wino_parallel(*args, threads)]
        else:
            done = _split(lib.wino_fused, n * (h // 4) * (w // 4), *args)
        if any(done):
            raise MemoryError("the Winograd convolution could not allocate its scratch memory")
        return y


def filter_transform_fp32(weight: torch.Tensor) -> torch.Tensor:
    """filter_transform in fp32 with two matrix products (G g, then (G g) G^T): cheap enough to redo at every
    training step, as the weights change."""
    g = torch.tensor(G, dtype=torch.float32)
    k, c = weight.shape[:2]
    u = torch.matmul(torch.matmul(g, weight.reshape(k * c, 3, 3)), g.t())          # (k c, 6, 6)
    return u.reshape(k, c, 36).permute(2, 1, 0).contiguous()


def _run(lib: ctypes.CDLL, x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The convolution of NCHW-shaped `x` with transformed filters `u` (36, C, K), plus `bias`, in channels-last
    memory."""
    n, c, h, w = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    out = u.shape[2]
    y = torch.empty((n, out, h, w), dtype=torch.float32, memory_format=torch.channels_last)
    args = (x.data_ptr(), u.data_ptr(), bias.data_ptr(), None, y.data_ptr(), n, h, w, c, out, 0, block_size(c, out))
    threads = torch.get_num_threads()
    done = [lib.wino_parallel(*args, threads)] if lib._openmp and threads > 1 else _split(
        lib.wino_fused, n * (h // 4) * (w // 4), *args)
    if any(done):
        raise MemoryError("the Winograd convolution could not allocate its scratch memory")
    return y


class _TrainingConvolution(torch.autograd.Function):
    """y = conv3x3(x, weight) + bias as Winograd F(4x4, 3x3), with its gradients: the input's is the same kind
    of convolution of the output's gradient with the filters turned by 180 degrees and their channels swapped
    (again F(4x4, 3x3)); the weights' and the bias's come from PyTorch's direct convolution backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        lib = _library()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        b = bias.detach().contiguous() if bias is not None else torch.zeros(weight.shape[0])
        return _run(lib, x.detach(), filter_transform_fp32(weight.detach()), b)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx = None
        if ctx.needs_input_grad[0]:
            turned = weight.detach().flip(2, 3).transpose(0, 1)
            gx = _run(_library(), grad, filter_transform_fp32(turned), torch.zeros(weight.shape[1]))
        _, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [False, bool(ctx.needs_input_grad[1]), bool(ctx.has_bias and ctx.needs_input_grad[2])])
        return gx, gw, gb


class TrainingConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters and state dict) whose fp32 CPU forward and input gradient are Winograd
    convolutions; anything else (bf16 autocast, a side not a multiple of 4, another device) runs conv2d."""

    def _conv_forward(self, input, weight, bias):
        n, c, h, w = input.shape
        if (input.device.type != "cpu" or input.dtype != torch.float32 or weight.dtype != torch.float32 or h % 4
                or w % 4 or torch.is_autocast_enabled("cpu") or _library() is None):
            return super()._conv_forward(input, weight, bias)
        return _TrainingConvolution.apply(input, weight, bias)


@contextlib.contextmanager
def training_convolutions(model: nn.Module):
    """Within the block, the 3x3 convolutions of `model` that `fits` train as TrainingConv2d (their class is
    switched, and switched back at the end; parameters, state dict and optimizer are untouched). Yields how
    many."""
    switched = [m for m in model.modules() if fits(m)]
    for m in switched:
        m.__class__ = TrainingConv2d
    try:
        yield len(switched)
    finally:
        for m in switched:
            m.__class__ = nn.Conv2d


_RELUS = (F.relu, torch.relu, torch.relu_)
_ADDS = (operator.add, torch.add)


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _RELUS:
        return len(node.args) == 1
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1
    return node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU


def _residual_of(add: fx.Node, conv: fx.Node) -> fx.Node | None:
    """The other summand of `add` = conv + other (no alpha), when it is a tensor computed in the graph."""
    if add.op != "call_function" or add.target not in _ADDS or add.kwargs or len(add.args) != 2:
        return None
    a, b = add.args
    other = b if a is conv else a if b is conv else None
    return other if isinstance(other, fx.Node) and other is not conv else None


def convert_graph(gm: fx.GraphModule) -> int:
    """Replace each convolution of traced graph `gm` that `fits` by a WinogradConv2d, taking in the residual
    sum and then the ReLU that directly follow it (when nothing else reads the intermediate results). Returns
    how many were replaced; `gm` is changed in place."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not fits(modules.get(node.target)):
            continue
        fused = [node]
        user = _only_user(node)
        residual = _residual_of(user, node) if user is not None else None
        if residual is not None:
            fused.append(user)
            user = _only_user(user)
        relu = user is not None and _is_relu(user, modules)
        if relu:
            fused.append(user)
        name = f"winograd_{count}"
        while hasattr(gm, name):
            name += "_"
        gm.add_submodule(name, WinogradConv2d(modules[node.target], relu=relu))
        with gm.graph.inserting_before(fused[-1]):
            args = (node.args[0],) if residual is None else (node.args[0], residual)
            new = gm.graph.call_module(name, args)
        fused[-1].replace_all_uses_with(new)
        for old in reversed(fused):
            gm.graph.erase_node(old)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return count


def convert(model: nn.Module) -> int:
    """convert_graph on every traced graph inside `model` (the BN-folded eval copy, engine.fusion). Returns
    how many convolutions were replaced in all (0 for a model that was not traced)."""
    return sum(convert_graph(m) for m in list(model.modules()) if isinstance(m, fx.GraphModule))
