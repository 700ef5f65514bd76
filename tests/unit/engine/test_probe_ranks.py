"""Under torchrun every rank must build the same model (DDP compares its parameters' strides across ranks), so the
probe's CPU choices come from rank 0: the other ranks do not measure, they take rank 0's answer."""

import pytest
import torch

from energy_cli.commands import settings
from energy_cli.engine import distributed, probe
from energy_cli.engine.ranks import Group


def choices(channels_last: bool, batch: int) -> probe.Choices:
    return probe.Choices(bf16=False, channels_last=channels_last, eval_batch_size=batch,
                         threads=torch.get_num_threads())


@pytest.fixture
def ranks(monkeypatch):
    """Pretend to be `rank` of 2; this rank's own probe would say `own`; rank 0 says `main`. Returns the
    values this rank handed to the broadcast and the probe calls it made."""
    sent, probed = [], []
    main, own = choices(True, 64), choices(False, 256)

    def setup(rank: int):
        monkeypatch.setattr(distributed, "current", lambda: Group(rank=rank, world_size=2))
        monkeypatch.setattr(probe, "machine_choices", lambda *a, **k: probed.append(a) or (main if rank == 0 else own))
        monkeypatch.setattr(distributed, "broadcast", lambda value: sent.append(value) or main)
        return sent, probed, main

    return setup


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_takes_rank_0s_probe_answer(compose, ranks, rank):
    sent, probed, main = ranks(rank)
    runtime = settings.runtime_from_config(compose("train", ["device=cpu", "precision=fp32"]))
    assert sent == ([main] if rank == 0 else [None])          # rank 0 sends its answer, rank 1 only receives
    assert len(probed) == (1 if rank == 0 else 0)             # rank 1 never measures
    assert runtime.channels_last is True and runtime.eval_batch_size == 64


def test_a_single_process_probes_without_broadcasting(compose, monkeypatch):
    own, sent = choices(False, 256), []
    monkeypatch.setattr(probe, "machine_choices", lambda *a, **k: own)
    monkeypatch.setattr(distributed, "broadcast", lambda value: sent.append(value) or value)
    runtime = settings.runtime_from_config(compose("train", ["device=cpu", "precision=fp32"]))
    assert sent == [] and runtime.channels_last is False and runtime.eval_batch_size == 256
