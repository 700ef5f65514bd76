"""The benchmark's plain loop runs the paper's model: the same WideResNet and weights with F.dropout in its blocks
(scripts/bench.py), while our model keeps models.wrn.dropout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from energy_cli.models import build_model
from energy_cli.models.wrn import dropout as our_dropout

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_script", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_model_uses_the_papers_dropout_and_ours_keeps_ours():
    bench = load_bench()
    backbone = {"name": "wrn40_2", "depth": 10, "widen_factor": 1, "dropout": 0.3}
    torch.manual_seed(0)
    ours = build_model(backbone, 10, 3)
    plain = bench.with_paper_dropout(build_model(backbone, 10, 3))
    plain.load_state_dict(ours.state_dict())
    blocks = [m for m in plain.modules() if hasattr(m, "dropout_fn")]
    assert len(blocks) == 3 and all(b.dropout_fn is bench.paper_dropout for b in blocks)   # one block per stage
    assert [m.dropout_fn for m in ours.modules() if hasattr(m, "dropout_fn")] == [our_dropout] * 3
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():   # eval mode: no dropout, the same function
        assert torch.equal(plain.eval()(x), ours.eval()(x))
    h = torch.randn(64, 16, 8, 8)
    torch.manual_seed(5)
    expected = F.dropout(h, p=0.3, training=True)
    torch.manual_seed(5)
    assert torch.equal(bench.paper_dropout(h, 0.3, True), expected)
