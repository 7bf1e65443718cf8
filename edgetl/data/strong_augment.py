"""``--augment none|default|strong``: what each level does, and its per-image part, TrivialAugmentWide.

torchvision's v2 transforms draw their random choices from the global torch RNG, once per call: on a
batched tensor that is one choice for the whole batch, and the draws would depend on the worker and the
process that happens to run them, which breaks resume (and distributed) equivalence. Here every draw is
a number drawn up front for the whole epoch from the epoch seed, at the sample's position, beside its
crop randoms (``edgetl.data.pipelines.EpochBatchSampler``): TrivialAugmentWide takes three of them per
image (operation, magnitude bin, sign) and applies torchvision's own operation table to that image.
The per-batch parts of ``strong`` (RandomErasing, MixUp/CutMix) run on the training device:
``edgetl.data.batch_augment``.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, NamedTuple, Optional

from edgetl.core.deps import require
from edgetl.data.augment import RANDOMS_PER_IMAGE, draw_crop_randoms

torch = require("torch")

TRIVIAL_RANDOMS = 3  # operation, magnitude bin, sign
ERASE_P = 0.25  # torchvision's classification reference recipe (--random-erase 0.25)


class AugmentLevel(NamedTuple):
    """What one ``--augment`` level does to a training image."""

    crop: bool  # the train geometry's random crop + flip (else the eval view, or the train geometry unflipped)
    trivial: bool  # TrivialAugmentWide per image (uint8, after the crop)
    erase_p: float  # RandomErasing probability per image (on the device, after normalisation)


LEVELS: Dict[str, AugmentLevel] = {  # keyed by edgetl.contracts.formats.AUGMENTS (a test checks)
    "none": AugmentLevel(crop=False, trivial=False, erase_p=0.0),
    "default": AugmentLevel(crop=True, trivial=False, erase_p=0.0),
    "strong": AugmentLevel(crop=True, trivial=True, erase_p=ERASE_P),
}


def draw_epoch_randoms(count: int, generator: Any, trivial: bool) -> Any:
    """Per image: the crop + flip randoms, then (``trivial``) TrivialAugment's three; float64 (count, K).

    The crop randoms come first from the same generator, so ``default`` draws what it always drew."""
    crops = draw_crop_randoms(count, generator)
    if not trivial:
        return crops
    return torch.cat([crops, torch.rand(count, TRIVIAL_RANDOMS, generator=generator, dtype=torch.float64)], 1)


def trivial_randoms(randoms: Optional[Any]) -> Optional[Any]:
    """TrivialAugment's randoms of a batch's images, or None when the level has none."""
    if randoms is None or randoms.shape[1] <= RANDOMS_PER_IMAGE:
        return None
    return randoms[:, RANDOMS_PER_IMAGE : RANDOMS_PER_IMAGE + TRIVIAL_RANDOMS]


@functools.lru_cache(maxsize=None)
def _seeded_trivial_augment() -> Any:
    """torchvision's TrivialAugmentWide (bilinear, as its classification reference uses it) driven by given
    randoms; defined on first use so importing this module does not import torchvision."""
    v2 = require("torchvision.transforms.v2")

    class SeededTrivialAugment(v2.TrivialAugmentWide):  # type: ignore[name-defined]  # v2: a module found at run time
        def apply(self, image: Any, u: Any) -> Any:
            """``image`` (uint8 CHW) through one operation chosen by ``u`` = (operation, bin, sign) in [0, 1)."""
            names = list(self._AUGMENTATION_SPACE)
            name = names[min(int(u[0] * len(names)), len(names) - 1)]
            magnitudes_of, signed = self._AUGMENTATION_SPACE[name]
            magnitudes = magnitudes_of(self.num_magnitude_bins, image.shape[-2], image.shape[-1])
            magnitude = 0.0
            if magnitudes is not None:
                magnitude = float(magnitudes[min(int(u[1] * self.num_magnitude_bins), self.num_magnitude_bins - 1)])
                if signed and u[2] <= 0.5:
                    magnitude = -magnitude
            return self._apply_image_or_video_transform(image, name, magnitude, self.interpolation, self._fill)

    return SeededTrivialAugment(interpolation=v2.InterpolationMode.BILINEAR)


def trivial_augment(images: Any, randoms: Optional[Any]) -> Any:
    """TrivialAugmentWide on each image of an NCHW batch, where ``randoms`` carry its draws (else unchanged).

    Runs where the batch is (loader workers, or the device after the CUDA crop). A float batch (0..255, from
    the device crop) is rounded to uint8 first: the operations are defined on uint8 images."""
    draws = trivial_randoms(randoms)
    if draws is None:
        return images
    if images.is_floating_point():
        images = images.round().clamp_(0, 255).to(torch.uint8)
    augment = _seeded_trivial_augment()
    return torch.stack([augment.apply(image, u) for image, u in zip(images, draws.tolist())])
