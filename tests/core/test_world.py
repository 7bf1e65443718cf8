"""The process's role in a distributed job, read from torchrun's environment (torch-free)."""

from __future__ import annotations

import pytest

from edgetl.core.device import auto_workers, resolve_workers, usable_cores
from edgetl.core.world import ProcessRole, under_launcher
from edgetl.errors import ConfigError

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}


def test_role_from_torchruns_environment() -> None:
    role = ProcessRole.from_env(TORCHRUN)
    assert role == ProcessRole(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert role.distributed and not role.is_main and not role.builds_node_caches
    assert under_launcher(TORCHRUN) and not under_launcher({})
    assert ProcessRole.from_env({}) == ProcessRole() and not ProcessRole().distributed
    assert ProcessRole.from_env({"RANK": "1", "WORLD_SIZE": "2"}) == ProcessRole(1, 2, 1, 2)  # hand-made launch


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 and WORLD_SIZE=2 do not describe a process"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2"),
    ],
)
def test_a_broken_environment_is_a_one_line_error(env, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProcessRole.from_env(env)


def test_workers_auto_is_each_processs_share_of_the_cores() -> None:
    assert auto_workers() == max(1, min(8, usable_cores()))
    assert resolve_workers(None, 2) == max(1, min(8, usable_cores() // 2))
    assert resolve_workers(None, 10_000) == 1  # never none
    assert resolve_workers(3, 4) == 3  # a given count is per process
