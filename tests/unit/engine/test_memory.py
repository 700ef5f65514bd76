"""engine.memory: with freed memory kept by the allocator, large tensors reuse the pages of freed ones instead of
faulting new ones in; ENERGY_OOD_MALLOC=system leaves the C library alone. The page-fault cases run in a fresh
interpreter, because the allocator settings are per process."""

import json
import os
import subprocess
import sys

import pytest

from energy_cli.engine import memory

# One 64 MB tensor, freed; then tensors of 48, 44, 40 and 36 MB, each filled and freed: the minor page faults of
# each. Blocks above 32 MB are always a fresh mmap under glibc's defaults, so each faults in all its pages (one per
# 4 kB); kept, each reuses the pages of the 64 MB block. (A whole training pass behaves the same way but less
# regularly, as glibc's thresholds adapt: docs/performance.md has the measured steps.)
PROGRAM = """
import json, resource, torch
from energy_cli.engine import memory
applied = memory.retain_freed_memory()
torch.set_num_threads(1)
first = torch.empty(16 * 2**20).fill_(1.0)
del first
faults = []
for floats in (12 * 2**20, 11 * 2**20, 10 * 2**20, 9 * 2**20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(floats).fill_(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": memory.retain_freed_memory(), "faults": faults}))
"""


def run(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ENERGY_OOD_MALLOC"} | env_extra
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(memory.glibc() is None, reason="needs glibc")
def test_retained_memory_is_reused_without_page_faults():
    kept = run({})
    assert kept["applied"] is True and kept["again"] is True
    # the freed pages are reused: fewer faults than one 16 MB tensor has pages (4,096), against 43,008 by default
    assert sum(kept["faults"]) < 5_000, kept

    system = run({"ENERGY_OOD_MALLOC": "system"})
    assert system["applied"] is False
    assert sum(system["faults"]) > 5 * max(sum(kept["faults"]), 5_000), system   # glibc's default faults again


def test_runtime_from_config_keeps_freed_memory_on_a_cpu(monkeypatch):
    from omegaconf import OmegaConf

    from energy_cli.commands import settings

    calls = []
    monkeypatch.setattr(memory, "retain_freed_memory", lambda: calls.append(1) or True)
    cfg = OmegaConf.create({"device": "cpu", "threads": "auto", "probe": "off", "precision": "fp32",
                            "channels_last": "auto", "progress": False, "compile": False,
                            "eval_batch_size": "auto"})
    settings.runtime_from_config(cfg)
    assert calls == [1]


@pytest.mark.parametrize("value", ["System", " keep", ""])
def test_the_setting_accepts_keep_and_system(monkeypatch, value):
    monkeypatch.setenv("ENERGY_OOD_MALLOC", value)
    applied = memory._apply()
    assert applied is False if value.strip().lower() == "system" else applied == (memory.glibc() is not None)


def test_an_unknown_setting_is_one_clear_error(monkeypatch):
    from energy_cli.errors import UserError

    monkeypatch.setenv("ENERGY_OOD_MALLOC", "jemalloc")
    with pytest.raises(UserError, match=r"ENERGY_OOD_MALLOC='jemalloc': use 'keep' .* or 'system'"):
        memory._apply()
