"""engine.memory: with freed memory kept by the allocator, the activations of a training pass reuse the pages of the
pass before instead of faulting new ones in; ENERGY_OOD_MALLOC=system leaves the C library alone. Each case runs
in a fresh interpreter, because the allocator settings are per process."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")

# Eight training passes (forward + backward, batch 128) of a WRN-10-2 on 32x32 images; the minor page faults of
# each. Its activations (4-16 MB each) are allocated and freed every pass: by default glibc returns some of that
# memory to the system and faults it in again on the next pass.
PROGRAM = """
import json, resource, torch
from energy_cli.engine import memory
from energy_cli.models import build_model
applied = memory.retain_freed_memory()
torch.manual_seed(0)
net = build_model({"name": "wrn40_2", "depth": 10, "widen_factor": 2, "dropout": 0.3}, 10, 3)
x = torch.randn(128, 3, 32, 32)
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net.zero_grad(set_to_none=True)
    net(x).sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": memory.retain_freed_memory(), "faults": faults[4:]}))
"""


def run(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ENERGY_OOD_MALLOC"} | env_extra
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not glibc(), reason="needs glibc")
def test_retained_memory_is_reused_without_page_faults():
    kept = run({})
    assert kept["applied"] is True and kept["again"] is True
    # once the heap has grown to a pass's peak, the passes reuse its pages: the last four fault in fewer pages than
    # one 16 MB activation has (4,096 pages), against tens of thousands by default
    assert sum(kept["faults"]) < 5_000, kept

    system = run({"ENERGY_OOD_MALLOC": "system"})
    assert system["applied"] is False
    assert sum(system["faults"]) > 5 * max(sum(kept["faults"]), 5_000), system   # glibc's default faults again


def test_runtime_from_config_keeps_freed_memory_on_a_cpu(monkeypatch):
    from omegaconf import OmegaConf

    from energy_cli.commands import settings
    from energy_cli.engine import memory

    calls = []
    monkeypatch.setattr(memory, "retain_freed_memory", lambda: calls.append(1) or True)
    cfg = OmegaConf.create({"device": "cpu", "threads": "auto", "probe": "off", "precision": "fp32",
                            "channels_last": "auto", "progress": False, "compile": False,
                            "eval_batch_size": "auto"})
    settings.runtime_from_config(cfg)
    assert calls == [1]


@pytest.mark.parametrize("value", ["System", " keep", ""])
def test_the_setting_accepts_keep_and_system(monkeypatch, value):
    from energy_cli.engine import memory

    monkeypatch.setenv("ENERGY_OOD_MALLOC", value)
    applied = memory._apply()
    assert applied is False if value.strip().lower() == "system" else applied == glibc()


def test_an_unknown_setting_is_one_clear_error(monkeypatch):
    from energy_cli.engine import memory
    from energy_cli.errors import UserError

    monkeypatch.setenv("ENERGY_OOD_MALLOC", "jemalloc")
    with pytest.raises(UserError, match=r"ENERGY_OOD_MALLOC='jemalloc': use 'keep' .* or 'system'"):
        memory._apply()
