"""Contact sheets for ``edgetl inspect``: tile grids with captions, heat-map overlays, PNG output (PIL only)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgetl.core.fileio import atomic_path

PAD = 6  # pixels between tiles and around the sheet
LINE = 14  # height of one caption or title line
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
# "inferno"-like ramp: dark purple (weak) -> orange -> pale yellow (strong)
_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def fit_text(text: str, width: int) -> str:
    """``text`` shortened with a leading ellipsis so that it fits ``width`` pixels."""
    font = _font()
    if font.getbbox(text)[2] <= width:
        return text
    while text and font.getbbox("..." + text)[2] > width:
        text = text[1:]
    return "..." + text


def tile_grid(
    tiles: Sequence[Image.Image], captions: Sequence[Sequence[str]], columns: int, title: Sequence[str] = ()
) -> Image.Image:
    """Equal-sized tiles in rows of ``columns``, each with its caption lines below, title lines on top.

    Size: width ``PAD + columns * (tile_w + PAD)``, height ``PAD + len(title) * LINE + rows * (tile_h +
    caption_lines * LINE + PAD)`` where caption_lines is the longest caption."""
    tile_w, tile_h = tiles[0].size
    caption_lines = max((len(c) for c in captions), default=0)
    rows = -(-len(tiles) // columns)
    cell_h = tile_h + caption_lines * LINE + PAD
    top = PAD + len(title) * LINE
    sheet = Image.new("RGB", (PAD + columns * (tile_w + PAD), top + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, line in enumerate(title):
        draw.text((PAD, PAD + index * LINE), fit_text(line, sheet.width - 2 * PAD), fill=INK, font=_font())
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        x = PAD + (index % columns) * (tile_w + PAD)
        y = top + (index // columns) * cell_h
        sheet.paste(tile.convert("RGB"), (x, y))
        for line_index, line in enumerate(caption):
            draw.text((x, y + tile_h + line_index * LINE), fit_text(line, tile_w), fill=INK, font=_font())
    return sheet


def side_by_side(panels: Sequence[Image.Image], title: Sequence[str] = ()) -> Image.Image:
    """Panels next to each other, top-aligned, ``PAD`` apart, under ``title`` lines spanning them all
    (the sheet widens to fit the longest title line)."""
    width = max(
        [sum(p.width for p in panels) + PAD * (len(panels) - 1)]
        + [_font().getbbox(line)[2] + 2 * PAD for line in title]
    )
    top = len(title) * LINE + (PAD if title else 0)
    sheet = Image.new("RGB", (width, top + max(p.height for p in panels)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, line in enumerate(title):
        draw.text((PAD, PAD + index * LINE), fit_text(line, width - 2 * PAD), fill=INK, font=_font())
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, top))
        x += panel.width + PAD
    return sheet


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) for values in [0, 1] (clipped) on the dark-to-bright ramp."""
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, _RAMP_STOPS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def heat_overlay(image: Image.Image, heat: np.ndarray, vmax: float, alpha: float = 0.55) -> Image.Image:
    """A (h, w) activation map, scaled by ``vmax``, upsampled bilinearly and blended over ``image``."""
    scaled = np.clip(np.asarray(heat, dtype=np.float32) / max(float(vmax), 1e-12), 0.0, 1.0)
    upsampled = Image.fromarray(scaled, "F").resize(image.size, Image.BILINEAR)
    ramp = Image.fromarray(colour_ramp(np.asarray(upsampled)), "RGB")
    return Image.blend(image.convert("RGB"), ramp, alpha)


def filter_tiles(weights: Sequence[np.ndarray], cell: int) -> List[List[Image.Image]]:
    """First-conv filters (out, 3, kh, kw) as colour tiles of ``cell`` px, one list per weight set; each
    filter is scaled by its min/max over all sets, so the same colour means the same weight in every set."""
    stacked = np.stack([np.asarray(w, dtype=np.float64) for w in weights])  # (sets, out, c, kh, kw)
    if stacked.shape[2] != 3:  # not RGB: show the mean over input channels as grey
        stacked = np.repeat(stacked.mean(axis=2, keepdims=True), 3, axis=2)
    low = stacked.min(axis=(0, 2, 3, 4), keepdims=True)
    high = stacked.max(axis=(0, 2, 3, 4), keepdims=True)
    pixels = np.round(255 * (stacked - low) / np.maximum(high - low, 1e-12)).astype(np.uint8)
    return [
        [Image.fromarray(f.transpose(1, 2, 0), "RGB").resize((cell, cell), Image.NEAREST) for f in one]
        for one in pixels
    ]


def change_tiles(before: np.ndarray, after: np.ndarray, cell: int) -> List[Image.Image]:
    """``after - before`` per filter as tiles: mid-grey is no change, brighter/darker colours show which
    weights moved; one scale (the largest change) for all filters, so still filters stay grey."""
    delta = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if delta.shape[1] != 3:
        delta = np.repeat(delta.mean(axis=1, keepdims=True), 3, axis=1)
    scaled = 127.5 + 127.5 * delta / max(float(np.abs(delta).max()), 1e-12)
    pixels = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return [Image.fromarray(f.transpose(1, 2, 0), "RGB").resize((cell, cell), Image.NEAREST) for f in pixels]


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as PNG atomically; return the path."""
    with atomic_path(Path(path)) as tmp:
        image.save(str(tmp), format="PNG")
    return Path(path)


def grid_columns(count: int) -> int:
    """Columns of a near-square grid for ``count`` tiles."""
    return max(1, int(np.ceil(np.sqrt(count))))


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """A ``size`` x ``size`` tile of a square (centre-cropped) image."""
    return image.convert("RGB").resize((size, size), Image.BILINEAR)
