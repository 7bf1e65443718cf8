"""Which process of a distributed job this is, read from the environment that ``torchrun`` (or any
launcher following ``torch.distributed``'s env:// convention) sets: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. Torch-free: the CLI reads it to quieten ranks other than 0
before any stage is imported."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from edgetl.errors import ConfigError

LAUNCHER_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker it starts


@dataclass(frozen=True)
class ProcessRole:
    """This process's place in the job; ``ProcessRole()`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "ProcessRole":
        """The role the environment gives; a one-line ConfigError for values that make no sense.

        Without ``LOCAL_WORLD_SIZE`` (a hand-made launch) every process is taken to share this node."""
        env = os.environ if environ is None else environ
        world_size = _integer(env, "WORLD_SIZE", 1)
        rank = _integer(env, "RANK", 0)
        local_rank = _integer(env, "LOCAL_RANK", rank)
        local_world_size = _integer(env, "LOCAL_WORLD_SIZE", world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("RANK={} and WORLD_SIZE={} do not describe a process of a job".format(rank, world_size))
        if not 1 <= local_world_size <= world_size or not 0 <= local_rank < local_world_size:
            raise ConfigError(
                "LOCAL_RANK={} and LOCAL_WORLD_SIZE={} do not fit WORLD_SIZE={}".format(
                    local_rank, local_world_size, world_size
                )
            )
        return cls(rank, world_size, local_rank, local_world_size)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and logs at the user's level."""
        return self.rank == 0

    @property
    def builds_node_caches(self) -> bool:
        """Local rank 0 builds this node's data caches; the node's other ranks wait for them."""
        return self.local_rank == 0


def under_launcher(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether torchrun started this process (so ``--nproc-per-node`` must not launch again)."""
    return LAUNCHER_VARIABLE in (os.environ if environ is None else environ)


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError("{}={!r} is not a whole number (set by the launcher?)".format(name, value)) from None
