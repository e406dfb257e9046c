"""Video outputs: MP4 and GIF (imageio with ffmpeg), a contact-sheet PNG per video, written atomically;
and a streaming writer for long rollouts that stores frames as they are produced.

Options (a recipe's ``output:`` section): ``formats`` (``[mp4, gif]``), ``fps`` (default: the
model's frame rate), ``scale`` (integer nearest-neighbour upscaling, default 1; tiny latent videos
are easier to see at 4), ``sheet_frames`` (frames on a contact sheet, default 16).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ...core.errors import ConfigError
from ...io import atomic_path

FORMATS = ("mp4", "gif")


def options_of(options: Mapping[str, Any], rate: int | None) -> dict[str, Any]:
    """The writer options with defaults; a one-line error for unknown formats or keys."""
    known = ("formats", "fps", "scale", "sheet_frames")
    for key in options:
        if key not in known:
            raise ConfigError(f"output.{key}", f"unknown video output option; valid: {', '.join(known)}")
    formats = list(options.get("formats", FORMATS))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError("output.formats", f"unknown video format '{bad[0]}'; valid: {', '.join(FORMATS)}")
    scale = int(options.get("scale", 1))
    if scale < 1:
        raise ConfigError("output.scale", f"must be >= 1, got {scale}")
    return {"formats": formats, "fps": float(options.get("fps") or rate or 8), "scale": scale,
            "sheet_frames": int(options.get("sheet_frames", 16))}


def to_uint8(frames: Tensor, scale: int = 1) -> np.ndarray:
    """``[F, 3, H, W]`` in [0, 1] -> ``[F, H * scale, W * scale, 3]`` uint8 (rounded, clipped)."""
    x = (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    return x


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write uint8 frames ``[H, W, 3]`` (an iterable, consumed one at a time for MP4) to ``path``
    (``.mp4``: H.264 through imageio-ffmpeg; ``.gif``: looping GIF), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".mp4":
            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", macro_block_size=2, ffmpeg_log_level="error")
        else:
            writer = imageio.get_writer(tmp, format="GIF", mode="I", duration=1000.0 / fps, loop=0)
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def contact_sheet(path: Path, frames: Sequence[np.ndarray], labels: Sequence[str], columns: int = 8) -> Path:
    """A grid PNG of ``frames`` (uint8 ``[H, W, 3]``) with a label under each, written atomically."""
    from PIL import Image, ImageDraw

    h, w = frames[0].shape[:2]
    columns = max(1, min(columns, len(frames)))
    rows = (len(frames) + columns - 1) // columns
    pad, text = 4, 12
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad + text) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (frame, label) in enumerate(zip(frames, labels)):
        x, y = pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad + text)
        sheet.paste(Image.fromarray(frame), (x, y))
        draw.text((x, y + h), label, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp)
    return Path(path)


def sheet_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` frame indices spread evenly over ``count`` frames (first and last included)."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def write_outputs(folder: Path, stem: str, data: Tensor, rate: int | None, options: Mapping[str, Any]) -> list[str]:
    """For each video of ``data`` ``[N, F, 3, H, W]`` in [0, 1]: ``<stem>_<k>.mp4`` / ``.gif`` and
    ``<stem>_<k>_sheet.png``; returns the file names."""
    opts = options_of(options, rate)
    if data.ndim != 5 or data.shape[2] != 3:
        raise ConfigError("output", f"video outputs are [N, F, 3, H, W], got {tuple(data.shape)}")
    names = []
    for k, video in enumerate(data):
        frames = to_uint8(video, opts["scale"])
        for fmt in opts["formats"]:
            name = f"{stem}_{k}.{fmt}"
            write_video(Path(folder) / name, iter(frames), opts["fps"])
            names.append(name)
        picks = sheet_indices(len(frames), opts["sheet_frames"])
        sheet = f"{stem}_{k}_sheet.png"
        contact_sheet(Path(folder) / sheet, [frames[i] for i in picks], [f"f{i}" for i in picks])
        names.append(sheet)
    return names


def summarize(run_dir: Path, metas: Sequence[dict], options: Mapping[str, Any]) -> dict:
    """The run's videos and frames per second of generation."""
    videos = sum(int(m.get("num_samples", 1)) for m in metas)
    frames = sum(int(m.get("frames", 0)) for m in metas)
    seconds = sum(m.get("seconds", 0.0) for m in metas)
    return {"videos": videos, "frames": frames, "videos_per_second": videos / seconds if seconds else None}


class FrameStream:
    """Frames of ``N`` videos written as they are produced (``frames/<name>_<k>/000123.png``,
    each atomically), so nothing already generated is lost if a run stops; :meth:`finish` assembles
    MP4 / GIF and contact sheets from the PNGs, one frame in memory at a time for MP4.

    Call it as a rollout's sink: ``stream(frames [N, 3, n, H, W] in [0, 1], start)``. ``to_pixels``
    maps the model's frames to [0, 1] (e.g. ``lambda x: (x + 1) / 2``)."""

    def __init__(self, folder: Path, name: str, count: int, options: Mapping[str, Any], rate: int | None = None,
                 to_pixels: Callable[[Tensor], Tensor] | None = None):
        self.folder, self.name, self.count = Path(folder), name, count
        self.opts = options_of(options, rate)
        self.to_pixels = to_pixels or (lambda x: x)
        self.frames = 0

    def frame_dir(self, k: int) -> Path:
        return self.folder / "frames" / f"{self.name}_{k}"

    def __call__(self, frames: Tensor, start: int) -> None:
        import imageio.v3 as iio

        if start != self.frames:
            raise ConfigError("frames", f"frames arrive out of order: got frame {start}, expected {self.frames}")
        pixels = self.to_pixels(frames.detach().float().cpu())       # [N, 3, n, H, W]
        for k in range(pixels.shape[0]):
            for j, frame in enumerate(to_uint8(pixels[k].transpose(0, 1))):
                with atomic_path(self.frame_dir(k) / f"{start + j:06d}.png") as tmp:
                    iio.imwrite(tmp, frame)
        self.frames += frames.shape[2]

    def read(self, k: int, index: int) -> np.ndarray:
        import imageio.v3 as iio

        return iio.imread(self.frame_dir(k) / f"{index:06d}.png")

    def finish(self) -> list[str]:
        """MP4 / GIF and a contact sheet per video from the frames written so far; returns the names."""
        names = []
        scale = self.opts["scale"]

        def scaled(frame: np.ndarray) -> np.ndarray:
            return frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame
        for k in range(self.count):
            if self.frames == 0:
                break
            for fmt in self.opts["formats"]:
                name = f"{self.name}_{k}.{fmt}"
                write_video(self.folder / name, (scaled(self.read(k, i)) for i in range(self.frames)), self.opts["fps"])
                names.append(name)
            picks = sheet_indices(self.frames, self.opts["sheet_frames"])
            sheet = f"{self.name}_{k}_sheet.png"
            contact_sheet(self.folder / sheet, [scaled(self.read(k, i)) for i in picks], [f"f{i}" for i in picks])
            names.append(sheet)
        return names
