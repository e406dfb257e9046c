"""A small text-to-image model of our own: one coloured shape at a named position, 32x32 pixels.

* :mod:`.data`: the synthetic images and captions (``draw_batch``, ``prompt_set``);
* :mod:`.scorer`: reads colour, shape and position back from pixels (``accuracy``, ``pixel_stats``);
* :mod:`.pipeline`: ``ShapesPipeline``, a diffusers pipeline shaped like Stable Diffusion's;
* :mod:`.training`: the LightningModule behind ``configs/train/shapes.yaml``;
* :mod:`.evaluate`: the accuracy / saturation table over guidance scales.

``load_pipeline()`` loads the trained pipeline committed in ``omniguide/zoo/weights/shapes``.
See docs/zoo_shapes.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...core.errors import ConfigError

if TYPE_CHECKING:
    from .pipeline import ShapesPipeline

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "shapes"
REQUIRED_FILES = (
    "model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
)


def load_pipeline(path: str | Path | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> ShapesPipeline:
    """The trained :class:`ShapesPipeline` from ``path`` (default: the committed folder), on
    ``device`` in ``dtype``, with its progress bar off. Loads locally only (no network)."""
    from .pipeline import ShapesPipeline

    folder = Path(path) if path is not None else WEIGHTS
    if not folder.is_dir():
        raise ConfigError("path", f"no pipeline folder at {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError("path", f"incomplete pipeline folder {folder}: missing {missing[0]}")
    pipe = ShapesPipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
