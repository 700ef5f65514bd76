"""Where this process stands among torchrun's processes, read from the environment alone (no torch import, so
that commands which compute nothing stay fast): see engine.distributed for the process group itself."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items (sizes differ by at most one; the first ranks get more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def from_env(environ: dict[str, str] | None = None) -> Group:
    """The group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    env = os.environ if environ is None else environ
    return Group(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                 local_rank=int(env.get("LOCAL_RANK", 0)))
