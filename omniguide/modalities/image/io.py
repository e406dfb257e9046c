"""Image outputs: one PNG per image and a contact sheet with the prompts, written atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...io import atomic_path


def to_uint8(images: Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in [0, 1] -> ``[N, H, W, 3]`` uint8 (rounded, clipped)."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def write_outputs(folder: Path, stem: str, data: Tensor, rate: int | None, options: Mapping[str, Any]) -> list[str]:
    """``<stem>_<k>.png`` for each image of ``data`` ``[N, 3, H, W]`` in [0, 1]; returns the names."""
    import imageio.v3 as iio

    names = []
    for k, image in enumerate(to_uint8(data)):
        name = f"{stem}_{k}.png"
        with atomic_path(Path(folder) / name) as tmp:
            iio.imwrite(tmp, image)
        names.append(name)
    return names


def contact_sheet(path: Path, rows: Sequence[tuple[str, Sequence[Path]]], cell: int = 96) -> Path:
    """A grid PNG: one row per item (its caption, then its images scaled to ``cell`` pixels)."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    columns = max((len(files) for _, files in rows), default=1)
    label = 180
    sheet = Image.new("RGB", (label + columns * (cell + 4), max(1, len(rows)) * (cell + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (caption, files) in enumerate(rows):
        y = r * (cell + 4)
        draw.multiline_text((4, y + 4), _wrap(caption, 28), fill="black")
        for c, file in enumerate(files):
            image = Image.fromarray(iio.imread(file)).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (label + c * (cell + 4), y))
    with atomic_path(path) as tmp:
        sheet.save(tmp)
    return path


def _wrap(text: str, width: int) -> str:
    words, lines, line = str(text).split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line][:6])


def pixel_stats(images: Tensor) -> dict[str, float]:
    """Saturation statistics of ``[N, 3, H, W]`` images in [0, 1]: mean chroma (max - min over
    channels), share of clipped channel values (<= 1/255 or >= 254/255), mean brightness."""
    x = images.detach().float().clamp(0, 1)
    chroma = (x.max(dim=1).values - x.min(dim=1).values).mean()
    clipped = ((x <= 1 / 255) | (x >= 254 / 255)).float().mean()
    return {"chroma": float(chroma), "clipped": float(clipped), "brightness": float(x.mean())}


def diversity(images: Tensor) -> float:
    """Mean pairwise RMS distance between images (0 when all are equal); ``[N, 3, H, W]``."""
    flat = images.detach().float().reshape(images.shape[0], -1)
    if flat.shape[0] < 2:
        return 0.0
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    n = flat.shape[0]
    return float(d.sum() / (n * (n - 1)))


def summarize(run_dir: Path, metas: Sequence[dict], options: Mapping[str, Any]) -> dict:
    """``contact_sheet.png`` of every item (a row per prompt) and the run's images per second."""
    folder = Path(run_dir) / "items"
    rows = [(str(m.get("prompt", "")), [folder / f for f in m.get("files", [])]) for m in metas]
    contact_sheet(Path(run_dir) / "contact_sheet.png", rows, int(options.get("cell", 96)))
    images = sum(len(m.get("files", [])) for m in metas)
    seconds = sum(m.get("seconds", 0.0) for m in metas)
    return {"images": images, "images_per_second": images / seconds if seconds else None}
