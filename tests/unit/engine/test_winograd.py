"""engine.winograd and engine.kernels: Winograd F(4x4, 3x3) convolutions give the direct convolution's results
(up to fp32 rounding) with the bias, residual sum and ReLU they take in; batches they do not fit, and machines
without a C compiler, run the direct convolution; the kernels are built once into the user cache folder."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energy_cli.engine import kernels, winograd
from energy_cli.engine.fusion import fold_batchnorm
from energy_cli.engine.probe import Choices
from energy_cli.engine.runtime import resolve_winograd
from energy_cli.engine.winograd import TrainingConv2d as WinogradTrainingConv2d
from energy_cli.engine.winograd import WinogradConv2d
from energy_cli.errors import UserError
from trained_models import trained_looking

CPU = torch.device("cpu")
needs_cc = pytest.mark.skipif(kernels.compiler() is None, reason="needs a C compiler (cc or $CC)")


@pytest.fixture(autouse=True)
def _fresh_kernels():
    """Each test looks for the kernels afresh (some change $CC or the cache folder), and so does the next module."""
    kernels.forget()
    yield
    kernels.forget()


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def conv(c_in, c_out, seed=0, bias=True):
    torch.manual_seed(seed)
    layer = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        if bias:
            layer.bias.normal_(0, 0.5)
    return layer


def test_the_transform_matrices_give_the_direct_convolution_exactly_in_float64():
    """Y = AT [(G g G^T) * (BT d BT^T)] AT^T, with the module's BT, G and AT, in float64: equal to conv2d to
    1e-12, so the constants (and the tiling) are right before any C code runs."""
    layer = conv(8, 16).double()
    x = torch.randn(2, 8, 12, 8, dtype=torch.float64)
    with torch.no_grad():
        direct = F.conv2d(x, layer.weight, layer.bias, padding=1)
        assert relative_error(winograd.reference(x, layer.weight, layer.bias), direct) < 1e-12


@needs_cc
@pytest.mark.parametrize("n, c_in, c_out, h, w", [
    (2, 64, 64, 8, 8), (3, 64, 128, 4, 12), (1, 128, 64, 16, 4),
    # 96 tiles: two blocks of 48 (winograd.block_size); 24 outputs: a panel of 16 channels and one of 8
    (3, 16, 24, 16, 32),
    # one tile (a panel of 1 row, not 6), 40 inputs, 8 outputs
    (1, 40, 8, 4, 4),
    # 40 and 56 outputs: with AVX-512 a panel of 32 channels, then 16 and/or 8; with AVX2 panels of 16, then 8
    (2, 16, 40, 8, 8), (1, 24, 56, 12, 8),
])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_the_kernels_match_conv2d_with_bias_residual_and_relu(monkeypatch, n, c_in, c_out, h, w, relu,
                                                               with_residual):
    layer = conv(c_in, c_out)
    x = torch.randn(n, c_in, h, w).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(n, c_out, h, w) if with_residual else None
    with torch.no_grad():
        expected = layer(x) + (residual if with_residual else 0)
        expected = F.relu(expected) if relu else expected
        module = WinogradConv2d(layer, relu=relu)
        monkeypatch.setattr(WinogradConv2d, "direct", lambda *a: pytest.fail("took the direct convolution"))
        got = module(x, residual)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, expected) < 2e-5
    if relu:
        assert float(got.min()) == 0.0


@needs_cc
@pytest.mark.parametrize("isa", ["AVX2", "AVX512"])
def test_each_instruction_set_s_build_matches_conv2d(tmp_path, monkeypatch, isa):
    """The AVX2 build (panels of 8-float vectors) and the AVX-512 one (panels of 32 output channels in 16-float
    vectors, then 16 and 8) on the same layers, each where this CPU runs it; the build for a machine is the one
    its ATen capability names."""
    capability = kernels.cpu_capability()
    if not capability.startswith(("AVX2", "AVX512") if isa == "AVX2" else ("AVX512",)):
        pytest.skip(f"this CPU's kernels are {capability or 'unknown'}, not {isa}")
    monkeypatch.setattr(kernels, "isa_flags", lambda: kernels.ISA_FLAGS[isa])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert winograd.available(), winograd.why_unavailable()
    assert kernels.library_path(winograd.KERNELS, kernels.compiler()).exists()
    for n, c_in, c_out, h, w in [(2, 16, 40, 8, 8), (1, 24, 56, 12, 8), (2, 32, 64, 8, 16), (1, 16, 8, 4, 4),
                                 (3, 64, 24, 8, 4)]:
        layer = conv(c_in, c_out)
        x = torch.randn(n, c_in, h, w).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            got, expected = WinogradConv2d(layer, relu=True)(x), F.relu(layer(x))
        assert relative_error(got, expected) < 2e-5, (n, c_in, c_out, h, w)


def test_the_build_flags_follow_aten_s_capability(monkeypatch):
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    for capability, flags in [("AVX512", ["-mavx2", "-mfma", "-mavx512f"]), ("AVX512_VNNI", ["-mavx2", "-mfma", "-mavx512f"]),
                              ("AVX2", ["-mavx2", "-mfma"]), ("DEFAULT", []), ("", [])]:
        monkeypatch.setattr(kernels, "cpu_capability", lambda c=capability: c)
        assert kernels.isa_flags() == flags
    monkeypatch.setattr(kernels.platform, "machine", lambda: "aarch64")
    assert kernels.isa_flags() == []


@needs_cc
@pytest.mark.parametrize("team", ["openmp", "pool"])
def test_contiguous_inputs_and_any_thread_count_give_the_same_values(monkeypatch, team):
    """Each tile is computed on its own, so how the tiles are split among threads changes nothing: on PyTorch's
    OpenMP team (where this process has one) or on the module's own thread pool."""
    lib = winograd._library()
    if team == "openmp" and not lib._openmp:
        pytest.skip("this PyTorch runs no OpenMP runtime")
    monkeypatch.setattr(lib, "_openmp", team == "openmp")
    module = WinogradConv2d(conv(64, 64), relu=True)
    x = torch.randn(5, 64, 12, 8)
    with torch.no_grad():
        expected = F.relu(module.direct(x, None))
    saved = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                outputs.append(module(x))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])
    assert relative_error(outputs[0], expected) < 2e-5


def test_the_openmp_runtime_is_found_where_pytorch_uses_one():
    """PyTorch's OpenMP team is what the kernels run on: its entry points are found in this process's memory
    map whenever PyTorch's parallel backend is OpenMP."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch's parallel backend is not OpenMP")
    import sklearn.metrics  # noqa: F401 - scikit-learn's wheels load their own libgomp: it must not be the one
    points = kernels.openmp_entry_points()
    assert points is not None and len(points) == 3 and all(isinstance(p, int) and p > 0 for p in points)
    with open("/proc/self/maps") as f:
        maps = [line.split(maxsplit=5)[-1].strip() for line in f if "/lib" in line]
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    picked = kernels.pick_openmp_runtime(maps, torch_dir)
    assert picked.startswith(torch_dir + os.sep) or f"{os.sep}torch.libs{os.sep}" in picked


def test_pytorch_s_own_openmp_runtime_is_picked_over_other_packages_copies():
    sp = "/env/lib/python3.11/site-packages"
    sklearn, torch_lib = f"{sp}/scikit_learn.libs/libgomp-a34b3233.so.1.0.0", f"{sp}/torch/lib/libgomp.so.1"
    wheel = f"{sp}/torch.libs/libgomp-804f19d4.so.1.0.0"
    other = ["/usr/lib/libc.so.6", f"{sp}/torch/lib/libtorch_cpu.so"]
    assert kernels.pick_openmp_runtime([sklearn, torch_lib, *other], f"{sp}/torch") == torch_lib
    assert kernels.pick_openmp_runtime([sklearn, wheel, *other], f"{sp}/torch") == wheel
    assert kernels.pick_openmp_runtime([sklearn, *other], f"{sp}/torch") == sklearn      # the only one loaded
    assert kernels.pick_openmp_runtime(["/opt/a/libgomp.so.1", sklearn], f"{sp}/torch") is None   # which one?
    assert kernels.pick_openmp_runtime(other, f"{sp}/torch") is None
    assert kernels.pick_openmp_runtime([f"{sp}/torch/lib/libiomp5.so"], f"{sp}/torch").endswith("libiomp5.so")


@pytest.mark.parametrize("c_in, c_out, block", [(32, 32, 42), (16, 32, 54), (64, 64, 18), (128, 128, 12),
                                                 (256, 256, 12), (8, 8, 48)])
def test_the_block_of_tiles_fits_the_cache_budget_in_multiples_of_six(c_in, c_out, block):
    """block = CACHE_BYTES / (36 x 4 bytes x (c_in + c_out)), down to a multiple of 6, within [12, 48]."""
    got = winograd.block_size(c_in, c_out)
    assert got == min(block, 48)
    assert got % 6 == 0 and (got == 12 or 36 * 4 * got * (c_in + c_out) <= winograd.CACHE_BYTES)


@pytest.mark.parametrize("case", ["side of 6", "float64", "input gradients"])
def test_batches_it_does_not_fit_run_the_direct_convolution(case):
    layer = conv(64, 64)
    module = WinogradConv2d(layer, relu=True)
    x = torch.randn(2, 64, 6 if case == "side of 6" else 8, 8)
    if case == "float64":
        layer, module, x = layer.double(), module.double(), x.double()
    if case == "input gradients":   # ODIN and Mahalanobis perturb the input along the score's gradient
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        F.relu(layer(xs[0])).sum().backward()
        module(xs[1]).sum().backward()
        assert torch.allclose(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-6)
        return
    with torch.no_grad():
        assert torch.equal(module(x), F.relu(layer(x)))




@needs_cc
@pytest.mark.parametrize("backbone, channels, size, replaced, relus, residuals", [
    # WRN-40-2: every 3x3 convolution but the stem (3 inputs) and the first of the 2nd and 3rd stages (stride 2):
    # 6 + 5 + 5 conv1 (+ ReLU) and 6 conv2 (+ the residual sum) per stage
    ({"name": "wrn40_2"}, 3, 32, 34, 16, 18),
    # ResNet-18 at 32x32: every 3x3 convolution but the three with stride 2 (layer4's maps are 4x4); each
    # of the 8 blocks' second convolutions takes in the sum and the ReLU after it
    ({"name": "resnet18"}, 3, 32, 13, 13, 8),
    # the default backbone: all but its first layer (1 input): 32 to 32 at 8x8, 32 to 64 and 64 to 64 at 4x4
    ({"name": "small_cnn"}, 1, 8, 3, 3, 0),
])
def test_a_folded_model_converted_gives_the_same_logits_and_features(backbone, channels, size, replaced, relus,
                                                                     residuals):
    folded = fold_batchnorm(trained_looking(backbone, channels))
    converted = fold_batchnorm(trained_looking(backbone, channels))
    assert winograd.convert(converted) == replaced
    layers = [m for m in converted.modules() if isinstance(m, WinogradConv2d)]
    assert (len(layers), sum(m.relu for m in layers)) == (replaced, relus)
    body = next(m for m in converted.modules() if isinstance(m, torch.fx.GraphModule))
    calls = [n for n in body.graph.nodes if n.op == "call_module" and n.target.startswith("winograd_")]
    assert sum(len(n.args) == 2 for n in calls) == residuals
    x = torch.randn(4, channels, size, size)
    with torch.inference_mode():
        logits, feats = folded.forward_with_features(x)
        logits2, feats2 = converted.forward_with_features(x)
    assert relative_error(logits2, logits) < 1e-4 and relative_error(feats2, feats) < 1e-4


def test_a_model_that_was_not_traced_is_left_alone():
    model = trained_looking({"name": "small_cnn"}, 1)
    assert winograd.convert(model) == 0
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())


@needs_cc
def test_the_kernels_are_built_once_into_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert winograd.available()
    built = list((tmp_path / "energy-ood" / "kernels").iterdir())
    assert len(built) == 1 and built[0].name.startswith("winograd-") and built[0].suffix == ".so"
    kernels.forget()
    monkeypatch.setattr(kernels, "build", lambda *a: pytest.fail("built again"))
    assert winograd.available()


@needs_cc
def test_a_damaged_copy_is_built_again(tmp_path, monkeypatch):
    """In a fresh process (this one has the library loaded, and the loader would hand it out again)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = kernels.library_path(winograd.KERNELS, kernels.compiler())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    code = "from energy_cli.engine import winograd; print(winograd.available(), winograd.why_unavailable())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr[-2000:]
    assert path.read_bytes() != b"not a shared library"


@pytest.mark.parametrize("cc, why", [("/nonexistent/cc", "no C compiler"), ("false", "false failed")])
def test_without_working_kernels_the_direct_path_runs_and_true_is_refused(tmp_path, monkeypatch, cc, why):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", cc)
    if cc == "false" and kernels.compiler() is None:
        pytest.skip("no `false` program")
    assert not winograd.available() and why in winograd.why_unavailable()
    assert not any((tmp_path / "energy-ood" / "kernels").glob("*")) if (tmp_path / "energy-ood").exists() else True
    keen = Choices(bf16=False, channels_last=True, eval_batch_size=128, threads=1, winograd=True)
    assert resolve_winograd("auto", CPU, None, choices=keen) is False
    with pytest.raises(UserError, match=r"^winograd=true needs its C kernels, which could not be built here \(.*"
                                        r"\); install a C compiler, or use winograd=auto or false$"):
        resolve_winograd("true", CPU, None)
    layer = conv(64, 64)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(WinogradConv2d(layer)(x), layer(x))


@needs_cc
def test_auto_follows_the_probe_on_a_cpu_in_fp32_and_explicit_values_win():
    keen = Choices(bf16=False, channels_last=True, eval_batch_size=128, threads=1, winograd=True)
    slow = Choices(bf16=False, channels_last=True, eval_batch_size=128, threads=1, winograd=False)
    assert resolve_winograd("auto", CPU, None, choices=keen) is True
    assert resolve_winograd("auto", CPU, None, choices=slow) is False
    assert resolve_winograd("auto", CPU, None) is False                         # no probe (probe=off): no
    assert resolve_winograd("auto", CPU, torch.bfloat16, choices=keen) is False
    assert resolve_winograd("auto", CPU, None, int8=True, choices=keen) is False
    assert resolve_winograd("auto", CPU, None, compile=True, choices=keen) is False
    assert resolve_winograd("auto", torch.device("cuda"), None, choices=keen) is False
    assert resolve_winograd(True, CPU, None, choices=slow) is True
    assert resolve_winograd("false", CPU, None, choices=keen) is False
    # training follows the probe's training timing, not eval's
    both = Choices(bf16=False, channels_last=True, eval_batch_size=128, threads=1, winograd=True, winograd_train=True)
    assert resolve_winograd("auto", CPU, None, choices=keen, training=True) is False
    assert resolve_winograd("auto", CPU, None, choices=both, training=True) is True
    assert resolve_winograd("auto", CPU, torch.bfloat16, choices=both, training=True) is False
    assert resolve_winograd(True, CPU, None, choices=slow, training=True) is True


@pytest.mark.parametrize("kwargs, why", [
    ({"device": torch.device("cuda")}, "device cuda"),
    ({"dtype": torch.bfloat16}, "bf16"),
    ({"int8": True}, "precision=int8"),
    ({"compile": True}, "compile=true"),
])
def test_true_where_it_cannot_apply_is_refused_with_one_line(kwargs, why):
    args = {"device": CPU, "dtype": None, **kwargs}
    with pytest.raises(UserError, match=f"^winograd=true runs on a CPU in fp32 without compile, not with {why}; "
                                        "use winograd=auto or winograd=false$"):
        resolve_winograd("true", args.pop("device"), args.pop("dtype"), **args)


def test_the_key_is_validated(compose):
    from energy_cli.commands.validate import validate

    validate(compose("eval", ["winograd=false"]))
    with pytest.raises(UserError, match="winograd='often' must be auto, true or false"):
        validate(compose("score", ["winograd=often"]))


@needs_cc
@pytest.mark.parametrize("n, c_in, c_out, h, w, bias", [(2, 16, 32, 8, 8, False), (3, 64, 24, 4, 12, True),
                                                         (4, 32, 32, 16, 16, False)])
def test_training_convolutions_give_conv2d_s_outputs_and_gradients(n, c_in, c_out, h, w, bias):
    """TrainingConv2d's output and its gradients (input: the Winograd convolution of the output's gradient with the
    turned filters; weights and bias: PyTorch's) against nn.Conv2d's, for the same upstream gradient."""
    layer = conv(c_in, c_out, bias=bias)
    x = torch.randn(n, c_in, h, w).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(n, c_out, h, w)
    results = []
    for switched in (False, True):
        xs = x.clone().requires_grad_(True)
        with winograd.training_convolutions(layer) if switched else contextlib.nullcontext():
            assert type(layer) is (WinogradTrainingConv2d if switched else nn.Conv2d)
            y = layer(xs)
            params = [xs, layer.weight] + ([layer.bias] if bias else [])
            results.append([y.detach()] + list(torch.autograd.grad(y, params, upstream)))
    for direct, wino in zip(*results):
        assert relative_error(wino, direct) < 1e-4
    assert type(layer) is nn.Conv2d


@needs_cc
def test_training_convolutions_switch_back_keep_the_state_dict_and_train_like_conv2d():
    """A training step of the small CNN (three of its four convolutions switched) gives the direct step's loss and
    gradients; the classes are switched back afterwards (also after an error); the state dict is unchanged."""
    model = trained_looking({"name": "small_cnn"}, 1).train()
    keys = list(model.state_dict())
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10

    def grads():
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    torch.manual_seed(1)
    loss, direct = grads()
    with winograd.training_convolutions(model) as switched:
        assert switched == 3 and list(model.state_dict()) == keys
        torch.manual_seed(1)
        loss2, wino = grads()
    assert float(loss2) == pytest.approx(float(loss), rel=1e-5)
    assert all(relative_error(b, a) < 1e-4 for a, b in zip(direct, wino))
    with pytest.raises(ZeroDivisionError):
        with winograd.training_convolutions(model):
            1 / 0
    assert not any(isinstance(m, WinogradTrainingConv2d) for m in model.modules())


@needs_cc
def test_training_convolutions_under_bf16_autocast_run_conv2d():
    layer = conv(16, 16)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(x)
        with winograd.training_convolutions(layer):
            got = layer(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
