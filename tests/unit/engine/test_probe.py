"""engine.probe: the choices follow the measured times (never a slower path), and are measured once per machine."""

import dataclasses
import json
import platform

import pytest
import torch

from energy_cli.commands.settings import runtime_from_config
from energy_cli.engine import probe
from energy_cli.engine.probe import (
    Choices,
    Timings,
    choose_batch,
    choose_threads,
    decide,
)
from energy_cli.engine.runtime import (
    resolve_channels_last,
    resolve_eval_batch_size,
    resolve_precision,
)

CPU = torch.device("cpu")


def timings(contiguous=10.0, channels_last=10.0, bf16=None, per_image=None, threads=None):
    return Timings(conv_contiguous=contiguous, conv_channels_last=channels_last, conv_bf16=bf16,
                   per_image=per_image or {64: 1.0, 128: 1.0, 256: 1.0}, threads=threads or {},
                   matmul_fp32_gflops=118.0, matmul_bf16_gflops=12.0)


def test_emulated_bf16_is_never_chosen():
    """bf16 5x slower than fp32 (emulated, as on AVX2-only CPUs) -> fp32."""
    assert not decide(timings(bf16=50.0), 2).bf16


def test_bf16_must_be_clearly_faster_than_the_best_fp32_path():
    assert not decide(timings(contiguous=10, channels_last=8, bf16=7.0), 2).bf16    # 8 / 7 = 1.14 < 1.25
    chosen = decide(timings(contiguous=10, channels_last=8, bf16=6.0), 2)          # 8 / 6 = 1.33
    assert chosen.bf16 and chosen.channels_last                                     # bf16 was timed channels_last
    assert not decide(timings(bf16=None), 2).bf16                                   # no bf16 autocast at all


def test_channels_last_only_when_at_least_five_percent_faster():
    assert not decide(timings(contiguous=10, channels_last=9.6), 2).channels_last   # 1.04x
    assert decide(timings(contiguous=10, channels_last=9.5), 2).channels_last       # 1.053x
    assert not decide(timings(contiguous=9, channels_last=10), 2).channels_last


def test_eval_batch_is_the_largest_within_five_percent_of_the_best_time_per_image():
    assert choose_batch({64: 1.00, 128: 0.90, 256: 0.94}) == 256    # 0.94 <= 0.90 * 1.05
    assert choose_batch({64: 1.00, 128: 0.90, 256: 0.95}) == 128
    assert choose_batch({64: 1.00, 128: 1.20, 256: 1.50}) == 64


def test_fewer_threads_only_when_clearly_faster():
    assert choose_threads(4, {4: 1.0, 2: 0.8}) == 2
    assert choose_threads(4, {4: 1.0, 2: 0.98}) == 4
    assert choose_threads(4, {}) == 4


def test_winograd_only_when_at_least_five_percent_faster_and_buildable():
    def with_layers(direct, wino):
        return dataclasses.replace(timings(), layers_direct=direct, layers_winograd=wino)

    assert probe.choose_winograd(with_layers(10.0, 9.5))             # 1.053x
    assert not probe.choose_winograd(with_layers(10.0, 9.6))         # 1.042x
    assert not probe.choose_winograd(with_layers(10.0, None))        # no C compiler: never timed
    assert decide(with_layers(10.0, 5.0), 1).winograd and not decide(with_layers(10.0, 12.0), 1).winograd


def test_winograd_training_is_decided_on_its_own_forward_and_backward_timing():
    def with_training(direct, wino):
        return dataclasses.replace(timings(), layers_direct=10.0, layers_winograd=5.0, train_layers_direct=direct,
                                   train_layers_winograd=wino)

    assert probe.choose_winograd_train(with_training(10.0, 9.5))       # 1.053x
    assert not probe.choose_winograd_train(with_training(10.0, 9.6))   # 1.042x
    assert not probe.choose_winograd_train(with_training(10.0, None))
    slower = decide(with_training(10.0, 11.0), 1)                       # faster in eval, slower in training
    assert slower.winograd and not slower.winograd_train
    assert decide(with_training(10.0, 7.0), 1).winograd_train


def test_fastest_keeps_the_minimum_and_drops_hopeless_candidates():
    calls = {"quick": 0, "slow": 0}

    def quick():
        calls["quick"] += 1

    def slow():
        calls["slow"] += 1
        sum(range(200_000))

    best = probe.fastest({"quick": quick, "slow": slow}, rounds=3, hopeless=4.0)
    assert calls == {"quick": 4, "slow": 1}           # one warm-up each; the slow one is never run again
    assert 0 < best["quick"] < best["slow"]


@pytest.fixture
def counted_measure(monkeypatch):
    calls = []

    def fake(threads, physical=None, rounds=3):
        calls.append(threads)
        return timings(contiguous=10, channels_last=5, bf16=40, per_image={64: 1.0, 128: 0.8, 256: 0.9})

    monkeypatch.setattr(probe, "measure", fake)
    monkeypatch.setattr(probe, "load_average", lambda: 0.2)   # a quiet machine, whatever the test suite is doing
    monkeypatch.setattr(probe, "_UNSAVED", {})
    monkeypatch.delenv("ENERGY_OOD_PROBE", raising=False)
    return calls


def test_a_busy_machine_is_measured_but_its_answer_not_cached(tmp_path, monkeypatch, counted_measure, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(probe, "load_average", lambda: 2.5)
    monkeypatch.setattr(probe, "machine_cpus", lambda: 2)
    with caplog.at_level("INFO", logger="energy_cli.engine.probe"):
        assert probe.machine_choices(2).source == "probe"
    assert "this machine is busy (load 2.5 on 2 CPUs)" in caplog.text
    assert not (tmp_path / "energy-ood" / "probe.json").exists()
    assert probe.machine_choices(2).source == "probe" and counted_measure == [2]   # this process keeps its answer
    probe._UNSAVED.clear()                                                          # as in a later process:
    monkeypatch.setattr(probe, "load_average", lambda: 0.4)
    assert probe.machine_choices(2).source == "probe" and counted_measure == [2, 2]  # measured again, quiet now
    assert probe.machine_choices(2).source == "cache" and counted_measure == [2, 2]


def test_quiet_means_fewer_runnable_threads_than_cpus():
    assert probe.is_quiet(0.9, 2) and probe.is_quiet(None, 2)
    assert not probe.is_quiet(2.0, 2) and not probe.is_quiet(5.3, 4)


def test_measured_once_per_machine_and_cached_in_the_user_cache_folder(tmp_path, monkeypatch, counted_measure):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = probe.machine_choices(3)
    assert (first.source, first.bf16, first.channels_last, first.eval_batch_size, first.threads) == \
        ("probe", False, True, 128, 3)
    again = probe.machine_choices(3)
    assert again.source == "cache" and (again.channels_last, again.eval_batch_size) == (True, 128)
    assert counted_measure == [3]
    stored = json.loads((tmp_path / "energy-ood" / "probe.json").read_text())
    (key,) = stored
    assert probe.cpu_model() in key and torch.__version__ in key and "3 threads" in key
    probe.machine_choices(1)                             # another thread count is another key
    assert counted_measure == [3, 1]


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch, counted_measure):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "energy-ood").mkdir()
    (tmp_path / "energy-ood" / "probe.json").write_text("{not json")
    assert probe.machine_choices(2).source == "probe"
    assert counted_measure == [2]
    assert probe.machine_choices(2).source == "cache"


def test_probe_off_uses_fixed_rules_without_measuring(tmp_path, monkeypatch, counted_measure):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(probe, "cpu_has_fast_bf16", lambda: False)
    assert probe.machine_choices(2, "off") == Choices(False, False, 256, 2, source="rules")
    monkeypatch.setenv("ENERGY_OOD_PROBE", "off")           # the environment wins over probe=auto
    assert probe.machine_choices(2, probe.mode_from("auto")).source == "rules"
    assert counted_measure == [] and not (tmp_path / "energy-ood").exists()


def test_a_real_probe_runs_and_gives_valid_choices():
    t = probe.measure(1, rounds=1)
    assert t.conv_contiguous > 0 and t.conv_channels_last > 0 and t.matmul_fp32_gflops > 0
    assert set(t.per_image) == set(probe.EVAL_BATCHES) and all(s > 0 for s in t.per_image.values())
    assert t.layers_direct > 0 and (t.layers_winograd is None or t.layers_winograd > 0)
    c = decide(t, 1)
    assert c.eval_batch_size in probe.EVAL_BATCHES and c.threads == 1


def test_runtime_follows_the_probe_and_explicit_keys_win(compose, monkeypatch):
    fast_cl = Choices(bf16=False, channels_last=True, eval_batch_size=64, threads=torch.get_num_threads())
    monkeypatch.setattr(probe, "machine_choices", lambda threads, mode="auto", device=None: fast_cl)
    runtime = runtime_from_config(compose("eval", ["device=cpu"]))
    assert (runtime.dtype, runtime.channels_last, runtime.eval_batch_size) == (None, True, 64)
    runtime = runtime_from_config(compose("eval", ["device=cpu", "channels_last=false", "eval_batch_size=100"]))
    assert (runtime.channels_last, runtime.eval_batch_size) == (False, 100)
    assert resolve_precision("auto", CPU, Choices(True, True, 256, 1)) == torch.bfloat16
    assert resolve_precision("auto", CPU, fast_cl) is None
    assert resolve_precision("bf16", CPU, fast_cl) == torch.bfloat16
    assert resolve_channels_last("auto", CPU, torch.bfloat16, Choices(False, False, 256, 1))   # bf16 runs NHWC
    assert resolve_eval_batch_size("auto", CPU) == 256 and resolve_eval_batch_size("auto", CPU, fast_cl) == 64


def test_refresh_measures_again_and_replaces_the_cached_answer(tmp_path, monkeypatch, counted_measure):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    probe.machine_choices(2)
    assert probe.machine_choices(2, "refresh").source == "probe"
    assert probe.machine_choices(2).source == "cache"
    assert counted_measure == [2, 2]


def test_probe_key_is_validated(compose):
    from energy_cli.commands.validate import validate
    from energy_cli.errors import UserError

    validate(compose("eval", ["probe=refresh", "channels_last=true"]))
    with pytest.raises(UserError, match="probe=sometimes is not known; choose one of: auto, off, refresh"):
        validate(compose("eval", ["probe=sometimes"]))
    with pytest.raises(UserError, match="channels_last='maybe' must be auto, true or false"):
        validate(compose("eval", ["channels_last=maybe"]))


def test_cpu_model_names_the_generation_that_one_model_name_can_hide():
    """Two hosts that both say "AMD EPYC" but differ in CPU family get different probe cache keys."""
    zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n" \
           "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 99\nmodel name\t: other\n"
    zen5 = zen4.replace(": 25\n", ": 26\n", 1).replace(": 17\n", ": 2\n", 1)
    assert probe.cpu_model(zen4) == "AMD EPYC (family 25, model 17)"      # the first processor's block
    assert probe.cpu_model(zen5) == "AMD EPYC (family 26, model 2)"
    assert probe.cpu_model("processor\t: 0\nmodel name\t: Some CPU\n") == "Some CPU"   # no numbers: the name
    assert probe.cpu_model("processor\t: 0\nBogoMIPS\t: 50.00\n") == (platform.processor() or platform.machine()
                                                                        or "unknown cpu")   # no name (e.g. ARM)
