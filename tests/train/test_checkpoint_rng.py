"""Resuming restores the RNG states it can: a run saved on more GPUs than this machine sees restores the states
of the visible devices only (on a CPU machine, none) instead of failing."""

from __future__ import annotations

import random

import torch

from edgetl.train import checkpoint


def _record_cuda_restores(monkeypatch, visible: int):
    """torch.cuda as a machine with ``visible`` GPUs shows it to the RNG restore: the device indices restored,
    and IndexError past the visible devices (torch's callback indexes torch.cuda.default_generators)."""
    restored = []

    def set_rng_state(state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index
        if index >= visible:
            raise IndexError("tuple index out of range")
        restored.append(index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    return restored


def _saved_on(gpus: int):
    state = checkpoint.rng_state()  # this machine: no "cuda" entry
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(gpus)]
    return state


def test_a_run_saved_on_more_gpus_restores_the_visible_ones(monkeypatch):
    saved = _saved_on(4)
    restored = _record_cuda_restores(monkeypatch, visible=2)
    checkpoint.set_rng_state(saved)
    assert restored == [0, 1]


def test_on_a_cpu_machine_no_cuda_state_is_restored_and_the_rest_is(monkeypatch):
    saved = _saved_on(2)
    expected = random.random()
    random.random()  # moves the Python RNG on
    restored = _record_cuda_restores(monkeypatch, visible=0)
    checkpoint.set_rng_state(saved)
    assert restored == [] and random.random() == expected
