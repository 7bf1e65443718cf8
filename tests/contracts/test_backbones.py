"""Contract tests of the backbone registry and the transfer strategies."""

from __future__ import annotations

import pytest
import torch

from edgetl.contracts.backbones import (
    BACKBONES,
    build_torchvision_model,
    get_backbone,
    preprocess_spec,
    stage_of_parameter,
)
from edgetl.errors import ConfigError
from edgetl.train.config import trainable_stage_names
from edgetl.train.model import EdgeClassifier, HeadConfig, build_model, parameter_groups
from edgetl.train.weights import expected_hash_prefix, weights_filename


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_entry_matches_torchvision(name: str) -> None:
    spec = get_backbone(name)
    model = build_torchvision_model(spec)
    assert isinstance(model.get_submodule(spec.classifier), torch.nn.Linear)
    for _, paths in spec.stages:
        for path in paths:
            model.get_submodule(path)  # raises if the stage names a missing module
    classifier = spec.classifier + "."
    for param_name, _ in model.named_parameters():
        if not param_name.startswith(classifier):
            assert stage_of_parameter(spec, param_name) is not None, param_name
    assert len(expected_hash_prefix(weights_filename(spec))) >= 6
    if spec.weights_sha256:  # a pinned full digest is torchvision's: it starts with the prefix in the file name
        assert len(spec.weights_sha256) == 64 and int(spec.weights_sha256, 16) >= 0
        assert spec.weights_sha256.startswith(expected_hash_prefix(weights_filename(spec)))
    preprocess = preprocess_spec(spec)
    assert preprocess.input_size == 224 and preprocess.mean == (0.485, 0.456, 0.406)
    assert set(spec.conv_stage_names) <= set(spec.stage_names)


def test_mobilenet_v2_weights_are_pinned_by_their_full_sha256() -> None:
    assert get_backbone("mobilenet_v2").weights_sha256.startswith("b0353104")
    assert get_backbone("mobilenet_v2", cut_at="stage4").weights_sha256 == get_backbone("mobilenet_v2").weights_sha256


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: .*mobilenet_v2"):
        get_backbone("vgg_tiny")


def _tiny_model(strategy: str, k: int = 2) -> EdgeClassifier:
    torch.manual_seed(0)
    return build_model(get_backbone("mobilenet_v3_small"), 3, HeadConfig(), strategy, k, weights=None)


def _step(model: EdgeClassifier) -> None:
    groups = parameter_groups(model, lr=0.1, head_lr_mult=10)
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_feature_extractor_keeps_base_bit_identical_and_trains_head() -> None:
    model = _tiny_model("feature-extractor")
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}  # params AND BN buffers
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    _step(model)
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert not torch.equal(model.head.weight, head_before["weight"])
    assert all(not m.training for m in model.base.modules())
    assert [g["name"] for g in parameter_groups(model, 0.01, 10)] == ["head"]


def test_partial_freezes_exactly_the_named_stages() -> None:
    model = _tiny_model("partial", k=2)
    spec = model.spec
    trainable = trainable_stage_names(spec, "partial", 2)
    assert trainable == ["conv_head", "pre_logits"]
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    _step(model)
    for name, param in model.base.named_parameters():
        in_trainable = stage_of_parameter(spec, name) in trainable
        assert param.requires_grad == in_trainable, name
        assert (param.grad is not None) == in_trainable, name
    for key, value in model.base.state_dict().items():
        changed = not torch.equal(value, before[key])
        if stage_of_parameter(spec, key) not in trainable:
            assert not changed, key  # frozen weights and BatchNorm running stats
        elif key.endswith("running_mean"):
            assert changed, key  # trainable BatchNorm layers are in train mode
    for stage in spec.stage_names:
        modules = [model.base.get_submodule(p) for p in spec.modules_of(stage)]
        bn = [m for mod in modules for m in mod.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(m.training == (stage in trainable) for m in bn), stage


def test_optimizer_groups_carry_two_learning_rates() -> None:
    model = _tiny_model("full")
    groups = parameter_groups(model, lr=0.002, head_lr_mult=10)
    assert [(g["name"], g["lr"]) for g in groups] == [("base", 0.002), ("head", pytest.approx(0.02))]
    head_ids = {id(p) for p in model.head.parameters()}
    assert head_ids == {id(p) for p in groups[1]["params"]}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_new_head_is_xavier_initialised() -> None:
    model = _tiny_model("full")
    fan_in, fan_out = model.feature_dim, 3
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    assert model.head.weight.abs().max() <= bound and model.head.weight.std() > bound / 4
    assert torch.count_nonzero(model.head.bias) == 0
    mlp = build_model(get_backbone("mobilenet_v3_small"), 3, HeadConfig("mlp", hidden=16), "full", 1, None)
    assert [type(m).__name__ for m in mlp.head] == ["Linear", "ReLU", "Dropout", "Linear"]


def test_strategy_and_stage_count_validation() -> None:
    spec = get_backbone("resnet18")
    assert trainable_stage_names(spec, "partial", 1) == ["layer4"]
    assert trainable_stage_names(spec, "full", 1) == spec.stage_names
    with pytest.raises(ConfigError, match="between 1 and 5"):
        trainable_stage_names(spec, "partial", 6)
    with pytest.raises(ConfigError, match="strategy must be one of"):
        trainable_stage_names(spec, "everything", 1)


def test_cut_base_is_smaller_and_loads_pretrained_weights(pretrained_mobilenet_v2) -> None:
    from edgetl.train.weights import load_state_dict

    cut = get_backbone("mobilenet_v2", cut_at="stage4")
    assert cut.stage_names[-1] == "stage4" and "features.18" in cut.removed_modules()
    model = build_model(cut, 5, HeadConfig(), "feature-extractor", 1, weights=pretrained_mobilenet_v2)
    full = build_model(get_backbone("mobilenet_v2"), 5, HeadConfig(), "feature-extractor", 1, weights=None)
    assert model.feature_dim == 64 and model.head.in_features == 64
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters()) / 4
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 5)
    pretrained = load_state_dict(pretrained_mobilenet_v2)
    assert torch.equal(model.base.features[10].conv[0][0].weight, pretrained["features.10.conv.0.0.weight"])
    assert trainable_stage_names(cut, "partial", 2) == ["stage3", "stage4"]


def test_cut_drops_pre_logit_layers_and_refuses_non_conv_stages() -> None:
    cut = get_backbone("mobilenet_v3_small", cut_at="conv_head")
    model = build_model(cut, 2, HeadConfig(), "full", 1, weights=None)
    assert model.feature_dim == 576 and "pre_logits" not in cut.stage_names
    with pytest.raises(ConfigError, match="cannot cut mobilenet_v3_small at 'pre_logits'"):
        get_backbone("mobilenet_v3_small", cut_at="pre_logits")
    with pytest.raises(ConfigError, match="convolutional stages: stem, layer1"):
        get_backbone("resnet18", cut_at="fc")
