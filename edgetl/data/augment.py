"""Batch augmentation: RandomResizedCrop + horizontal flip + normalise for a whole batch at once.

The random numbers of an epoch are drawn in the main process (``draw_crop_randoms``) and turned
into crop boxes for each image's own size (``random_resized_crop_boxes``: torchvision's
``RandomResizedCrop.get_params`` algorithm, vectorised). Both image pipelines use them, so the
augmentation is a function of (seed, epoch, position) alone: independent of the worker count and
of persistent workers, which keeps resumed runs identical to uninterrupted ones.

Crop + resize of decoded images runs where the pixels are: one ``torchvision.ops.roi_align`` call
for the whole batch on CUDA; on CPU one uint8 antialiased ``F.interpolate`` per image (within one
level of PIL's ``resized_crop`` and about 10x cheaper than roi_align there), so CPU workers hand
over uint8 batches (4x less inter-process traffic than float). Normalisation is one multiply-add
per batch, on the training device.
"""

from __future__ import annotations

import math
from typing import Any, Tuple

from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.deps import require
from edgetl.data.decoded_cache import GEOMETRY_COLUMNS, upright_size

torch = require("torch")
F = torch.nn.functional

RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop defaults (what torch_transforms uses)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_TRIES = 10
RANDOMS_PER_IMAGE = 4 * RRC_TRIES + 1  # 4 per try (scale, ratio, top, left) + 1 for the flip


def draw_crop_randoms(count: int, generator: Any) -> Any:
    """Uniform [0, 1) numbers for ``count`` crops+flips, shape (count, RANDOMS_PER_IMAGE), float64."""
    return torch.rand(count, RANDOMS_PER_IMAGE, generator=generator, dtype=torch.float64)


def random_resized_crop_boxes(width: Any, height: Any, randoms: Any) -> Tuple[Any, Any]:
    """Crop boxes (top, left, height, width; int64, shape (N, 4)) and flip flags (bool, (N,)).

    ``width``/``height``: each image's size (N,). Same algorithm as torchvision's
    ``RandomResizedCrop.get_params`` (10 tries, then a central crop of clamped aspect ratio),
    fed with ``randoms`` instead of the global RNG.
    """
    width = torch.as_tensor(width, dtype=torch.float64).reshape(-1, 1)
    height = torch.as_tensor(height, dtype=torch.float64).reshape(-1, 1)
    u = randoms.to(torch.float64).reshape(len(randoms), -1)
    tries = u[:, : 4 * RRC_TRIES].reshape(len(u), RRC_TRIES, 4)
    area = width * height
    target_area = area * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * tries[..., 0])
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = torch.floor(tries[..., 2] * (height - h + 1))
    left = torch.floor(tries[..., 3] * (width - w + 1))
    first = ok.to(torch.int64).argmax(1, keepdim=True)  # the first try that fits

    def pick(values: Any) -> Any:
        return values.gather(1, first).squeeze(1)

    # fallback: centred crop of the whole image with its aspect ratio clamped to RRC_RATIO
    width, height = width.squeeze(1), height.squeeze(1)
    in_ratio = width / height
    fb_w = torch.where(in_ratio > RRC_RATIO[1], torch.round(height * RRC_RATIO[1]), width)
    fb_h = torch.where(in_ratio < RRC_RATIO[0], torch.round(width / RRC_RATIO[0]), height)
    fb_top, fb_left = torch.floor((height - fb_h) / 2), torch.floor((width - fb_w) / 2)
    found = ok.any(1)
    boxes = torch.stack(
        [
            torch.where(found, pick(top), fb_top),
            torch.where(found, pick(left), fb_left),
            torch.where(found, pick(h), fb_h),
            torch.where(found, pick(w), fb_w),
        ],
        1,
    )
    return boxes.to(torch.int64), flip_flags(u)


def flip_flags(randoms: Any) -> Any:
    """Which images of a batch are mirrored: the last of each image's crop randoms is below 0.5 (more randoms may
    follow: ``edgetl.data.strong_augment``)."""
    return randoms.reshape(len(randoms), -1)[:, RANDOMS_PER_IMAGE - 1] < 0.5


def normalize_batch(images: Any, spec: PreprocessSpec, memory_format: Any = None) -> Any:
    """uint8 (or float 0..255) NCHW -> float32 ``(x / 255 - mean) / std``: one multiply, one add.

    ``memory_format``: the layout of the result (``torch.channels_last`` for the CUDA paths), written
    directly rather than copied afterwards; default contiguous."""
    std = torch.tensor(spec.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    layout = torch.contiguous_format if memory_format is None else memory_format
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=layout)
    return torch.mul(images, 1.0 / (255.0 * std), out=out).sub_(mean / std)


def crop_resize_roi_align(pixels: Any, boxes: Any, transposed: Any, size: int) -> Any:
    """One roi_align call: NHWC uint8 ``pixels`` (crop b from image b) -> float NCHW (size x size).

    ``boxes`` (top, left, height, width) are in upright coordinates; an image stored transposed
    (``transposed[b]``) is cropped in stored coordinates and its output transposed back.
    """
    roi_align = require("torchvision.ops").roi_align
    boxes = boxes.to(pixels.device, torch.float32)
    top, left, height, width = boxes.unbind(1)
    flag = transposed.to(pixels.device)
    x0, y0 = torch.where(flag, top, left), torch.where(flag, left, top)
    x1, y1 = x0 + torch.where(flag, height, width), y0 + torch.where(flag, width, height)
    index = torch.arange(len(boxes), device=pixels.device, dtype=torch.float32)
    rois = torch.stack([index, x0, y0, x1, y1], 1)
    out = roi_align(pixels.permute(0, 3, 1, 2).float(), rois, (size, size), 1.0, -1, True)
    return torch.where(flag.view(-1, 1, 1, 1), out.transpose(-1, -2), out)


def crop_resize_per_image(
    pixels: Any, rows: Any, boxes: Any, transposed: Any, flips: Any, size: int, interpolation: str
) -> Any:
    """Per image: crop ``pixels[rows[b]]`` (NHWC uint8), resize (uint8 antialiased interpolate), flip."""
    crops = []
    for row, (top, left, height, width), flag, flip in zip(
        rows.tolist(), boxes.tolist(), transposed.tolist(), flips.tolist()
    ):
        if flag:
            crop = pixels[row, left : left + width, top : top + height].permute(2, 1, 0)
        else:
            crop = pixels[row, top : top + height, left : left + width].permute(2, 0, 1)
        resized = F.interpolate(
            crop.unsqueeze(0),
            size=(size, size),
            mode=interpolation,
            antialias=interpolation != "nearest",
            align_corners=None,
        )
        crops.append(resized.flip(-1) if flip else resized)
    return torch.cat(crops)


def augment_decoded(pixels: Any, rows: Any, geometry: Any, randoms: Any, spec: PreprocessSpec) -> Any:
    """Training batch from decoded images: random resized crop + flip, NCHW, not yet normalised.

    ``pixels``: (N, S, L, 3) uint8 (the whole cache or a gathered batch); ``rows``: the images
    of this batch; ``geometry``: their ``DecodedImages.geometry`` rows; ``randoms``: from
    ``draw_crop_randoms``. Runs on ``pixels.device``: uint8 out on CPU, float (0..255) on CUDA.
    """
    width, height, transposed = upright_size(geometry)
    boxes, flips = random_resized_crop_boxes(width, height, randoms)
    if not pixels.is_cuda:
        return crop_resize_per_image(pixels, rows, boxes, transposed, flips, spec.input_size, spec.interpolation)
    out = crop_resize_roi_align(pixels[rows.to(pixels.device)], boxes, transposed, spec.input_size)
    return torch.where(flips.to(out.device).view(-1, 1, 1, 1), out.flip(-1), out)


def eval_crop_decoded(pixels: Any, rows: Any, geometry: Any, spec: PreprocessSpec) -> Any:
    """Eval batch from decoded images: the exact centre crop of ``resize_and_crop``, uint8 NCHW.

    One gather for the whole batch; ``geometry``'s eval offsets are in upright coordinates.
    """
    device = pixels.device
    geometry = geometry.to(device)
    transposed = geometry[:, GEOMETRY_COLUMNS.index("transposed")].bool().view(-1, 1, 1)
    top = geometry[:, GEOMETRY_COLUMNS.index("eval_top")].view(-1, 1, 1)
    left = geometry[:, GEOMETRY_COLUMNS.index("eval_left")].view(-1, 1, 1)
    steps = torch.arange(spec.input_size, device=device)
    y, x = top + steps.view(1, -1, 1), left + steps.view(1, 1, -1)
    stored_rows = torch.where(transposed, x, y)
    stored_cols = torch.where(transposed, y, x)
    return pixels[rows.to(device).view(-1, 1, 1), stored_rows, stored_cols].permute(0, 3, 1, 2)
