"""engine.fit on a training set streamed from disk: the same batches as the in-memory set, and a run stopped
in the middle of an epoch and resumed ends with the weights of an uninterrupted one."""

from __future__ import annotations

import copy

import pytest
import torch
from folderdata import make_folder

from energy_cli.data import folder_dataset
from energy_cli.data.batches import Normalizer
from energy_cli.engine.loop import LoopState, TrainSpec, fit, make_optimizer, make_scheduler
from energy_cli.engine.runtime import Runtime
from energy_cli.models import build_model
from energy_cli.ood.losses import cross_entropy


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("fit") / "data", n_train=7, n_test=2)

    def load(stream):
        dataset = {"name": "folder", "path": str(root), "channels": 3, "image_size": 12, "stream": stream,
                   "workers": 0}
        return folder_dataset.load(dataset, cache_dir=None)

    return load(False), load(True)


def train(data, stop_after=None):
    """Two epochs of batch 4 (6 steps each); with `stop_after`, stop after that many steps, restore the saved
    state into fresh objects and finish. Returns the final weights and the loop state."""
    train_set, test_set = data
    torch.manual_seed(0)
    model = build_model({"name": "small_cnn", "width": 4, "dropout": 0.0}, 3, 3)
    spec = TrainSpec(train=train_set, test=test_set, normalizer=Normalizer([0.5] * 3, [0.25] * 3),
                     objective=lambda logits, labels, n: cross_entropy(logits, labels), epochs=2, batch_size=4,
                     seed=5, crop_pad=2, flip=True, eval_batch_size=8)
    runtime = Runtime(torch.device("cpu"))
    opt = make_optimizer(model, 0.05, 0.9, 5e-4, True)
    sched = make_scheduler(opt, 12, 0.05)
    saved = {}

    def save(state):
        saved.update(model=copy.deepcopy(model.state_dict()), opt=copy.deepcopy(opt.state_dict()),
                     sched=copy.deepcopy(sched.state_dict()), loop=copy.deepcopy(state.to_dict()))

    steps = {"n": 0}

    def stop():
        steps["n"] += 1
        return stop_after is not None and steps["n"] > stop_after

    state = fit(model, spec, runtime, opt, sched, LoopState(), save, stop)
    if stop_after is not None:
        assert state.epoch < 2
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = fit(model, spec, runtime, opt, sched, LoopState.from_dict(saved["loop"]), save)
    return model.state_dict(), state


def test_streamed_fit_equals_in_memory_fit(sets):
    memory, streamed = sets
    assert streamed[0].streamed and not memory[0].streamed
    a, sa = train(memory)
    b, sb = train(streamed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in sa.history] == [r["loss"] for r in sb.history]


@pytest.mark.parametrize("stop_after", [3, 8])
def test_streamed_fit_resumes_mid_epoch(sets, stop_after):
    _, streamed = sets
    whole, _ = train(streamed)
    resumed, _ = train(streamed, stop_after)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
