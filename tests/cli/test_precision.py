"""The fast paths change speed, not results: bf16 vs fp32, channels_last, compile fallback, threads, bench script."""

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from scipy.stats import spearmanr
from sklearn.datasets import load_digits

from energy_cli.commands.settings import runtime_from_config
from energy_cli.data.batches import Normalizer
from energy_cli.engine.inference import predict
from energy_cli.engine.runtime import (
    Runtime,
    is_compiled,
    prepare_model,
)
from energy_cli.models import build_model
from energy_cli.ood.metrics import auroc


def _null_auroc_sd(n_id: int, n_ood: int) -> float:
    """Standard deviation of the AUROC of n_id vs n_ood scores under random ranking (the Mann-Whitney U
    statistic over n_id * n_ood): sqrt((n_id + n_ood + 1) / (12 n_id n_ood)). The AUROC of one evaluation
    is uncertain by about this much from the sample alone, so a change of precision must move it by less."""
    return math.sqrt((n_id + n_ood + 1) / (12 * n_id * n_ood))


@pytest.mark.slow
def test_bf16_eval_ranks_images_like_fp32(cli):
    """Evaluate one fp32-trained checkpoint in fp32 and in bf16 (one thread, so both runs are deterministic on
    any CPU, whether bf16 is native or emulated). bf16 rounds every activation to an 8-bit mantissa, so scores
    move a little; what must hold is that the ranking of the images barely changes:
    - Spearman rank correlation of each score (ID and OOD images together) above 0.99;
    - per OOD set, |AUROC_bf16 - AUROC_fp32| below the AUROC's own sampling noise for these sample sizes;
    - every ID image whose predicted class changes had a near tie in fp32 (top-2 logit gap < 5% of the
      logit range), so accuracy moves only by such images.
    Per-set FPR95 is not compared: it counts OOD images near one threshold and jumps by whole images."""
    common = ["progress=false", "threads=1"]
    assert cli("train", *common, "precision=fp32", "hydra.run.dir=train").code == 0
    runs = {}
    for precision in ("fp32", "bf16"):
        result = cli("eval", "ckpt=train/checkpoint.pt", f"precision={precision}", "save_scores=true", *common,
                     f"hydra.run.dir=eval_{precision}")
        assert result.code == 0, result.err
        runs[precision] = dict(np.load(f"eval_{precision}/scores.npz"))
    a, b = runs["fp32"], runs["bf16"]
    sets = sorted({k.split("/")[0] for k in a} - {"id"})
    for score in ("msp", "energy"):
        s32 = np.concatenate([a[f"id/{score}"], *[a[f"{s}/{score}"] for s in sets]])
        s16 = np.concatenate([b[f"id/{score}"], *[b[f"{s}/{score}"] for s in sets]])
        rho = spearmanr(s32, s16).statistic
        assert rho > 0.99, (score, rho)
        for s in sets:
            n_id, n_ood = len(a[f"id/{score}"]), len(a[f"{s}/{score}"])
            delta = abs(auroc(a[f"id/{score}"], a[f"{s}/{score}"]) - auroc(b[f"id/{score}"], b[f"{s}/{score}"]))
            assert delta < _null_auroc_sd(n_id, n_ood), (score, s, delta)
    logits32, logits16 = a["id/logits"], b["id/logits"]
    flipped = np.flatnonzero(logits32.argmax(1) != logits16.argmax(1))
    top2 = np.sort(logits32, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    spread = logits32.max() - logits32.min()
    assert np.all(gap[flipped] < 0.05 * spread), (flipped, gap[flipped], spread)


@pytest.mark.slow
@pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines, reason="no x86 int8 kernels")
def test_int8_eval_ranks_images_like_fp32_and_score_uses_its_own_thresholds(cli):
    """precision=int8 quantizes the trained model (activation ranges from 512 ID training images); its scores
    move by the quantization error, and like bf16 the ranking must barely change: Spearman above 0.99 for the
    logit scores, per OOD set |AUROC change| below the AUROC's sampling noise. Its thresholds go to
    thresholds_int8.json next to the checkpoint, which `score precision=int8` reads; thresholds.json stays the
    fp32 eval's."""
    common = ["progress=false", "threads=1"]
    assert cli("train", *common, "precision=fp32", "hydra.run.dir=train").code == 0
    runs, beside = {}, {}
    for precision in ("fp32", "int8"):
        result = cli("eval", "ckpt=train/checkpoint.pt", f"precision={precision}", "save_scores=true",
                     "score=[msp,energy,knn]", *common, f"hydra.run.dir=eval_{precision}")
        assert result.code == 0, result.err
        runs[precision] = dict(np.load(f"eval_{precision}/scores.npz"))
        beside[precision] = open("train/thresholds.json").read()
    assert "calibrated on 512 ID training images" in result.err + result.out
    assert beside["int8"] == beside["fp32"]   # thresholds.json next to the checkpoint stays the fp32 eval's
    int8_thresholds = json.loads(open("train/thresholds_int8.json").read())
    assert int8_thresholds == json.loads(open("eval_int8/thresholds.json").read())
    # score precision=int8 quantizes the same way and flags by the int8 eval's energy threshold
    folder = Path("imgs")
    folder.mkdir()
    digits = load_digits().images
    for i in range(6):
        Image.fromarray((digits[i] * 255 / 16).astype(np.uint8)).save(folder / f"digit{i}.png")
    scored = cli("score", "imgs", "ckpt=train/checkpoint.pt", "precision=int8", *common, "hydra.run.dir=score_int8")
    assert scored.code == 0, scored.err
    threshold = int8_thresholds["scores"]["energy"]["threshold"]
    assert f"{threshold:.6g}" in scored.err + scored.out and "thresholds_int8.json" in scored.err + scored.out
    with open("score_int8/scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(int(r["ood"]) == (float(r["energy_score"]) < threshold) for r in rows)
    a, b = runs["fp32"], runs["int8"]
    sets = sorted({k.split("/")[0] for k in a} - {"id"})
    for score in ("msp", "energy", "knn"):
        s32 = np.concatenate([a[f"id/{score}"], *[a[f"{s}/{score}"] for s in sets]])
        s8 = np.concatenate([b[f"id/{score}"], *[b[f"{s}/{score}"] for s in sets]])
        assert spearmanr(s32, s8).statistic > 0.99, score
        for s in sets:
            n_id, n_ood = len(a[f"id/{score}"]), len(a[f"{s}/{score}"])
            delta = abs(auroc(a[f"id/{score}"], a[f"{s}/{score}"]) - auroc(b[f"id/{score}"], b[f"{s}/{score}"]))
            assert delta < _null_auroc_sd(n_id, n_ood), (score, s, delta)


def test_logits_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn"}, 10, 1).eval()
    runtime = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True, progress=False)
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad(), runtime.autocast():
        logits = model(Normalizer([0.3], [0.4])(x))
    assert logits.dtype == torch.float32
    # the head ran in fp32: logits are not restricted to bf16's 8-bit mantissa grid
    assert not torch.equal(logits, logits.to(torch.bfloat16).float())


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = build_model({"name": "wrn40_2", "depth": 10, "widen_factor": 1}, 10, 3)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    norm = Normalizer([0.5] * 3, [0.25] * 3)
    plain, _ = predict(model, x, norm, Runtime(torch.device("cpu")), batch_size=3)
    cl = prepare_model(build_model({"name": "wrn40_2", "depth": 10, "widen_factor": 1}, 10, 3),
                       Runtime(torch.device("cpu"), channels_last=True))
    cl.load_state_dict(model.state_dict())
    fast, _ = predict(cl, x, norm, Runtime(torch.device("cpu"), channels_last=True), batch_size=5)
    assert torch.allclose(plain, fast, atol=1e-4)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="energy_cli")
    def broken_compile(self, *args, **kwargs):
        self._compiled_call_impl = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no C++ compiler"))

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn"}, 10, 1)
    reference = build_model({"name": "small_cnn"}, 10, 1)
    reference.load_state_dict(model.state_dict())
    runtime = Runtime(torch.device("cpu"), compile=True)
    model = prepare_model(model, runtime, (1, 8, 8))
    assert "torch.compile failed (RuntimeError: no C++ compiler); running eagerly" in caplog.text
    assert not is_compiled(model)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    norm = Normalizer([0.3], [0.4])
    assert torch.allclose(predict(model, x, norm, runtime)[0], predict(reference, x, norm, runtime)[0])


def test_compiled_predict_pads_the_last_batch(monkeypatch):
    """With a compiled model, every batch has the same shape (no recompilation); results are unchanged."""
    shapes = []
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn"}, 10, 1).eval()
    eager = model.forward

    def recording_call(*args, **kwargs):
        shapes.append(tuple(args[0].shape))
        return eager(*args, **kwargs)

    x = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    norm = Normalizer([0.3], [0.4])
    want, _ = predict(model, x, norm, Runtime(torch.device("cpu")), batch_size=4)
    model._compiled_call_impl = recording_call   # what nn.Module.compile installs
    got, _ = predict(model, x, norm, Runtime(torch.device("cpu")), batch_size=4)
    assert shapes == [(4, 1, 8, 8)] * 3
    assert torch.allclose(want, got)


def test_threads_key(compose):
    old = torch.get_num_threads()
    try:
        runtime_from_config(compose("eval", ["threads=1", "device=cpu"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_bench_script_quick(tmp_path):
    int8 = "x86" in torch.backends.quantized.supported_engines
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--rounds", "2",
                           "--out", str(tmp_path)] + (["--int8"] if int8 else []),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if int8:   # an eval-only row: its training cells stay empty
        quantized = rows.pop()
        assert quantized["path"] == "ours int8 (eval only)" and quantized["precision"] == "int8"
        assert float(quantized["eval_img_s"]) > 0 and quantized["train_img_s"] == quantized["epoch_s_cifar10"] == ""
    if rows[1]["winograd"] == "True":   # the probe chose Winograd convolutions: the direct ones are measured beside
        direct = rows.pop()
        trained = "in training yes" in proc.stdout     # and training too where they train as Winograd as well
        assert direct["path"] == "ours, direct convolutions" + ("" if trained else " (eval only)")
        assert direct["winograd"] == "False" and float(direct["eval_img_s"]) > 0
        assert float(direct["train_img_s"]) > 0 if trained else direct["train_img_s"] == ""
    assert [r["path"] for r in rows] == ["plain fp32 eager + DataLoader", "ours"]
    assert float(rows[0]["eval_speedup"]) == 1.0
    assert proc.stdout.count("  round ") == 2 and all(r["rounds"] == "2" for r in rows)
    for r in rows:   # two rounds: a speed-up is the median (here the mean) of the rounds' ratios, within their range
        for kind in ("eval", "train"):
            low, mid, high = (float(r[f"{kind}_speedup{end}"]) for end in ("_min", "", "_max"))
            assert low <= mid <= high and mid == pytest.approx((low + high) / 2, rel=2e-3)
    for r in rows:
        assert float(r["eval_img_s"]) > 0 and float(r["train_img_s"]) > 0
        assert float(r["epoch_s_cifar10"]) == pytest.approx(50_000 / float(r["train_img_s"]), rel=1e-3)
        # WRN-40-2: 0.655 GFLOP per image forward, 1.965 forward + backward (counted by torch)
        assert float(r["eval_gflops"]) == pytest.approx(0.655 * float(r["eval_img_s"]), rel=2e-3)
        assert float(r["train_gflops"]) == pytest.approx(1.965 * float(r["train_img_s"]), rel=2e-3)
        assert float(r["eval_frac_fp32_peak"]) == pytest.approx(
            float(r["eval_gflops"]) / float(r["peak_fp32_gflops"]), rel=2e-3)
        assert (r["peak_bf16_gflops"] == "") == (r["eval_frac_bf16_peak"] == "")   # only where bf16 is native
    assert "paper protocol from score vectors" in proc.stdout
    assert "matmul peak: fp32" in proc.stdout and "probe (" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(__import__("energy_cli.engine.kernels", fromlist=["x"]).compiler() is None,
                    reason="needs a C compiler (cc or $CC)")
def test_winograd_eval_gives_the_direct_evaluation_s_results(cli):
    """The default backbone's three layers of 32 or 64 channels as Winograd convolutions (winograd=true) against
    the direct ones:
    every score moves by fp32 rounding only (about 1e-6 here). An AUROC can still move in its last printed digit
    when two scores a rounding apart swap places (one pair in 360,000 moves it by 0.0003 points), so the metrics
    must agree to 0.01 points and every other column exactly."""
    common = ["progress=false", "precision=fp32", "threads=1"]
    assert cli("train", "epochs=2", *common, "hydra.run.dir=train").code == 0
    rows, scores = {}, {}
    for flag in ("true", "false"):
        result = cli("eval", "ckpt=train/checkpoint.pt", f"winograd={flag}", "save_scores=true", *common,
                     f"hydra.run.dir=eval_{flag}")
        assert result.code == 0, result.err
        with open(f"eval_{flag}/results.csv", newline="") as f:
            rows[flag] = list(csv.DictReader(f))
        scores[flag] = dict(np.load(f"eval_{flag}/scores.npz"))
    assert "Winograd convolutions" in (Path("eval_true") / "eval.log").read_text()
    metrics = ("id_acc", "fpr95", "auroc", "aupr_in", "aupr_out")
    assert len(rows["true"]) == len(rows["false"]) > 0
    for a, b in zip(rows["false"], rows["true"]):
        assert {k: v for k, v in a.items() if k not in metrics} == {k: v for k, v in b.items() if k not in metrics}
        assert all(abs(float(a[m]) - float(b[m])) < 0.01 for m in metrics), (a, b)
    for key, a in scores["false"].items():
        b = scores["true"][key]
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max()), key


@pytest.mark.slow
@pytest.mark.skipif(__import__("energy_cli.engine.kernels", fromlist=["x"]).compiler() is None,
                    reason="needs a C compiler (cc or $CC)")
def test_winograd_training_gives_the_direct_training_s_weights(cli):
    """An epoch of the default training with its convolutions as Winograd convolutions (forward and input
    gradients) against the direct ones, from the same seed: the log says so, and every weight ends as close to the
    direct run's as rounding alone puts two direct runs. An epoch of SGD amplifies rounding differences: two direct
    runs that differ only in memory layout (channels_last, so oneDNN sums in another order) end up to 0.7% apart
    on an Intel Xeon, as far as a 1% change of the learning rate moves them. So the bound is that measured spread,
    taken on this machine, with a floor for machines where both layouts round alike."""
    from energy_cli.runs.checkpoint import load_checkpoint

    common = ["progress=false", "precision=fp32", "threads=1", "epochs=1"]
    runs = {"wino": ["winograd=true", "channels_last=false"], "direct": ["winograd=false", "channels_last=false"],
            "direct_cl": ["winograd=false", "channels_last=true"]}
    for name, args in runs.items():
        assert cli("train", *args, *common, f"hydra.run.dir={name}").code == 0
    assert "Winograd convolutions" in (Path("wino") / "train.log").read_text()
    assert "Winograd convolutions" not in (Path("direct") / "train.log").read_text()
    w = {name: load_checkpoint(f"{name}/checkpoint.pt")["model"] for name in runs}
    assert w["wino"].keys() == w["direct"].keys()
    assert any(not torch.equal(w["wino"][k], w["direct"][k]) for k in w["direct"])   # it did run another way

    def spread(a, b):   # the largest difference of any weight, relative to that tensor's size (at least 1)
        return max(float((a[k] - b[k]).abs().max()) / max(1.0, float(b[k].abs().max()))
                   for k in b if b[k].is_floating_point())

    rounding = spread(w["direct_cl"], w["direct"])
    assert spread(w["wino"], w["direct"]) <= 3 * max(rounding, 2e-3), rounding
