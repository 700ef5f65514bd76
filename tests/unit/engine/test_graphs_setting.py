"""cuda_graphs: where training steps are replayed as CUDA graphs (the replays themselves are tested on a GPU, in
test_cuda.py), and the one-line errors of settings that cannot be honoured."""

import pytest
import torch

from energy_cli.engine.graphs import GraphedStep
from energy_cli.engine.runtime import resolve_cuda_graphs
from energy_cli.errors import UserError

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_auto_means_a_gpu_outside_torchrun():
    assert resolve_cuda_graphs("auto", GPU, distributed=False)
    assert not resolve_cuda_graphs("auto", CPU, distributed=False)
    assert not resolve_cuda_graphs("auto", GPU, distributed=True)
    assert not resolve_cuda_graphs(False, GPU, distributed=False)
    assert not resolve_cuda_graphs("false", CPU, distributed=True)
    assert resolve_cuda_graphs(True, GPU, distributed=False)


@pytest.mark.parametrize("device, distributed, why", [
    (CPU, False, "needs a CUDA device, not cpu"),
    (CPU, True, "needs a CUDA device, not cpu"),
    (GPU, True, "is not used under torchrun"),
])
def test_true_where_graphs_cannot_run_is_refused_with_one_line(device, distributed, why):
    with pytest.raises(UserError, match=f"^cuda_graphs=true {why}.*; use cuda_graphs=auto or cuda_graphs=false$"):
        resolve_cuda_graphs(True, device, distributed)


def test_the_key_is_validated_and_a_cpu_run_refuses_true(compose):
    from energy_cli.commands.settings import runtime_from_config
    from energy_cli.commands.validate import validate

    validate(compose("train", ["cuda_graphs=false"]))
    with pytest.raises(UserError, match="cuda_graphs='often' must be auto, true or false"):
        validate(compose("finetune", ["cuda_graphs=often"]))
    assert runtime_from_config(compose("train", ["device=cpu"])).cuda_graphs is False
    with pytest.raises(UserError, match="cuda_graphs=true needs a CUDA device, not cpu"):
        runtime_from_config(compose("train", ["device=cpu", "cuda_graphs=true"]))


def test_graphed_step_needs_a_cuda_device():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        GraphedStep(lambda x, y: (x,), opt, CPU)
