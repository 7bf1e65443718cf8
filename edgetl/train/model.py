"""EdgeClassifier: pretrained base + new head, with the three transfer strategies.

feature-extractor: the whole base frozen (no grads, BatchNorm in eval mode so its running
statistics never move); partial: the last K named stages train; full: everything trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgetl.contracts.backbones import (
    BackboneSpec,
    build_torchvision_model,
    get_submodule_parent,
    stage_of_parameter,
    strip_classifier,
)
from edgetl.core.deps import require
from edgetl.errors import ConfigError, WeightsError
from edgetl.train.config import HEADS, trainable_stage_names
from edgetl.train.weights import load_state_dict

torch = require("torch")
nn = torch.nn


@dataclass(frozen=True)
class HeadConfig:
    kind: str = "linear"
    hidden: int = 512
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in HEADS:
            raise ConfigError("head must be one of {}, got {!r}".format(", ".join(HEADS), self.kind))


def build_head(in_features: int, num_classes: int, config: HeadConfig) -> nn.Module:
    """A new classifier head with Xavier-uniform weights and zero biases."""
    if config.kind == "linear":
        head = nn.Linear(in_features, num_classes)
    else:
        head = nn.Sequential(
            nn.Linear(in_features, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, num_classes),
        )
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return head


class EdgeClassifier(nn.Module):
    """``base`` returns pooled pre-logit features; ``head`` maps them to class logits."""

    def __init__(self, spec: BackboneSpec, num_classes: int, head: HeadConfig) -> None:
        super().__init__()
        self.spec = spec
        self.base = build_torchvision_model(spec)
        self.feature_dim = strip_classifier(spec, self.base)
        if spec.cut_at:
            for path in spec.removed_modules():
                parent, leaf = get_submodule_parent(self.base, path)
                setattr(parent, leaf, nn.Identity())
            with torch.no_grad():
                self.feature_dim = int(self.base.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
        self.head = build_head(self.feature_dim, num_classes, head)
        self.frozen_stages: List[str] = []

    def freeze(self, trainable: Sequence[str]) -> None:
        """Freeze every base stage not in ``trainable``: no grads, BatchNorm statistics fixed."""
        self.frozen_stages = [s for s in self.spec.stage_names if s not in trainable]
        for name, param in self.base.named_parameters():
            param.requires_grad_(stage_of_parameter(self.spec, name) in trainable)
        self.train(self.training)

    @property
    def base_frozen(self) -> bool:
        return len(self.frozen_stages) == len(self.spec.stage_names)

    def frozen_modules(self) -> List[nn.Module]:
        return [self.base.get_submodule(p) for s in self.frozen_stages for p in self.spec.modules_of(s)]

    def train(self, mode: bool = True) -> "EdgeClassifier":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # frozen layers keep their BatchNorm statistics (and no dropout)
        if self.base_frozen:
            self.base.eval()
        return self

    def forward_features(self, x: Any) -> Any:
        if self.base_frozen:
            with torch.no_grad():
                return self.base(x)
        return self.base(x)

    def forward(self, x: Any) -> Any:
        return self.head(self.forward_features(x))


def load_base_weights(model: EdgeClassifier, state: Dict[str, Any], source: Path) -> None:
    """Load a torchvision state dict into the base; its classifier (and any stages cut off) are dropped."""
    dropped = tuple(p + "." for p in [model.spec.classifier] + model.spec.removed_modules())
    base_state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    result = model.base.load_state_dict(base_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            "{} does not match {}: {} missing keys (e.g. {}), {} unexpected (e.g. {})".format(
                source,
                model.spec.name,
                len(result.missing_keys),
                result.missing_keys[:1],
                len(result.unexpected_keys),
                result.unexpected_keys[:1],
            )
        )


def parameter_groups(model: EdgeClassifier, lr: float, head_lr_mult: float) -> List[Dict[str, Any]]:
    """Two optimizer groups: trainable pretrained layers at ``lr``, the head at ``lr * head_lr_mult``."""
    base_params = [p for p in model.base.parameters() if p.requires_grad]
    groups = [{"name": "head", "params": list(model.head.parameters()), "lr": lr * head_lr_mult}]
    if base_params:
        groups.insert(0, {"name": "base", "params": base_params, "lr": lr})
    return groups


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(
    spec: BackboneSpec,
    num_classes: int,
    head: HeadConfig,
    strategy: str,
    trainable_stages: int,
    weights: Optional[Path],
) -> EdgeClassifier:
    """An EdgeClassifier with pretrained base weights (unless ``weights`` is None) and the strategy applied."""
    if num_classes < 2:
        raise ConfigError("need at least 2 classes, got {}".format(num_classes))
    model = EdgeClassifier(spec, num_classes, head)
    if weights is not None:
        load_base_weights(model, load_state_dict(weights), weights)
    model.freeze(trainable_stage_names(spec, strategy, trainable_stages))
    return model
