"""Rolling out the zoo's video denoiser on sprite videos, and measuring the result against the known physics.

:class:`SpriteRollout` is what the ``rollout`` recipe and the ``bench-video-history`` benchmark need
from a model: the protocol model call, its noise path, the external conditions of a prompt and their
null values, ground-truth start frames rendered from the caption's physics, and a streaming
:class:`PhysicsScore` that compares every produced frame with where the sprites really are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.model_call import ModelCall
from ..core.noise import NoiseSchedule
from ..modalities.video.protocol import HistoryDenoiser
from .sprites import (
    SpriteState,
    SpriteWorld,
    locate,
    parse_caption,
    render,
    state_from_caption,
    trajectory,
    visible_share,
)
from .video_denoiser import DEFAULT_WEIGHTS, VideoDenoiser


@dataclass
class SpriteRollout:
    """The zoo video denoiser seen by a rollout (frames in [-1, 1], flow matching, 8 fps)."""

    net: VideoDenoiser
    rate: int = 8
    layout: str = "BCFHW"
    axis: int = 2
    frame_multiple: int = 1                       # any number of frames per window
    sampler: str = "flow-euler"                   # the default scheduler (flow matching)
    output_defaults: tuple = (("scale", 8),)      # 16 px frames, shown 8x

    @staticmethod
    def load(weights: str | Path | None = None) -> SpriteRollout:
        return SpriteRollout(VideoDenoiser.load(weights or DEFAULT_WEIGHTS))

    @property
    def world(self) -> SpriteWorld:
        c = self.net.config
        return SpriteWorld(size=c.size, sprite=c.sprite, max_sprites=c.max_sprites)

    @property
    def window(self) -> int:
        return self.net.config.max_frames

    @property
    def model(self) -> ModelCall:
        return ModelCall(HistoryDenoiser(self.net), module=self.net)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.flow(self.net.config.num_train_timesteps)

    def scheduler(self, name: str, path: str = "scheduler", **overrides: Any):
        """A sampler by short name (flow matching: ``flow-euler``)."""
        from ..core.schedulers import build_scheduler

        return build_scheduler(name, path, **overrides)

    def check_prompt(self, prompt: str, path: str = "prompt") -> None:
        self.caption(prompt, 1, path)

    def keyframe_inputs(self, stride: int) -> dict:
        """The condition that tells the model its keyframes are ``stride`` frames apart."""
        return {"stride": stride}

    def check_output(self, options: Mapping[str, Any]) -> None:
        from ..modalities.video.io import options_of

        options_of({**dict(self.output_defaults), **options}, self.rate)

    def stream(self, folder: Path, n: int, options: Mapping[str, Any]):
        """The writer of ``n`` videos (a rollout sink; ``finish()`` assembles MP4 / GIF and sheets)."""
        from ..modalities.video.io import FrameStream

        return FrameStream(folder, "video", n, {**dict(self.output_defaults), **options}, self.rate, self.to_pixels)

    def caption(self, prompt: str, n: int, where: str = "prompt") -> Tensor:
        return parse_caption(prompt, self.net.config.max_sprites, where).unsqueeze(0).expand(n, -1, -1).clone()

    def conditions(self, prompt: str, n: int, stride: int = 1) -> dict:
        return {"caption": self.caption(prompt, n), "stride": stride}

    def null(self, n: int) -> dict:
        return {"caption": torch.full((n, self.net.config.max_sprites, 3), -1, dtype=torch.long)}

    def start(self, prompt: str, n: int, frames: int, seed: int) -> tuple[Tensor, SpriteState]:
        """``n`` ground-truth starts for ``prompt``: the first ``frames`` frames in [-1, 1], and the states."""
        world = self.world
        state = state_from_caption(world, self.caption(prompt, n), torch.Generator().manual_seed(seed))
        return render(world, state, trajectory(world, state, frames)) * 2 - 1, state

    @staticmethod
    def to_pixels(x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def score(self, state: SpriteState) -> PhysicsScore:
        """A streaming comparison with the true trajectories of ``state``."""
        return PhysicsScore(self.world, state)


@dataclass
class PhysicsScore:
    """Streaming comparison of produced frames with the true trajectory (memory: a few floats per frame).

    Per frame and sprite: the position error (pixels, top-left corner, by colour centroid; only where
    the sprite is at least half visible in the truth and was found), whether it was found (colour
    mass between 25 % and 250 % of its area), the pixel change since the previous frame on background
    pixels (flicker), and the estimated displacement (motion)."""

    world: SpriteWorld
    state: SpriteState
    errors: list = field(default_factory=list)     # per frame: [n, K] error, nan where not measured
    found: list = field(default_factory=list)
    flicker: list = field(default_factory=list)
    motion: list = field(default_factory=list)
    true_motion: list = field(default_factory=list)
    _previous: tuple | None = None
    _found_prev: Tensor | None = None

    def __call__(self, frames: Tensor, start: int) -> None:
        """``frames [n, 3, m, H, W]`` in [-1, 1] for frames ``start .. start + m - 1``."""
        pixels = ((frames.detach().float().cpu() + 1) / 2).clamp(0, 1)
        m = pixels.shape[2]
        truth = trajectory(self.world, self.state, m, start=start)                 # [n, K, m, 2]
        visible = visible_share(self.world, self.state, truth)                    # [n, K, m]
        colours = self.state.attributes[..., 0]
        estimate, mass = locate(self.world, pixels, colours)
        present = self.state.present.unsqueeze(-1)
        error = (estimate - truth).norm(dim=-1)
        found = (mass >= 0.25) & (mass <= 2.5) & present      # a sprite's worth of colour, not a smear
        measured = found & (visible >= 0.5)
        error = torch.where(measured, error, torch.full_like(error, float("nan")))
        background = render(self.world, self.state, truth)
        nan = torch.full_like(error[:, :, 0], float("nan"))
        for j in range(m):
            self.errors.append(error[:, :, j])
            self.found.append(torch.where(present[..., 0], found[:, :, j].float(), nan))
            frame, pos, bg = pixels[:, :, j], estimate[:, :, j], background[:, :, j]
            if self._previous is not None:
                prev_frame, prev_pos, prev_bg, prev_truth = self._previous
                still = ((bg - 0.08).abs().amax(1) < 1e-3) & ((prev_bg - 0.08).abs().amax(1) < 1e-3)
                diff = (frame - prev_frame).abs().mean(1)
                self.flicker.append(float((diff * still).sum() / still.sum().clamp_min(1)))
                step = (pos - prev_pos).norm(dim=-1)
                ok = found[:, :, j] & (self._found_prev if self._found_prev is not None else found[:, :, j])
                self.motion.append(float(step[ok].mean()) if ok.any() else float("nan"))
                true_step = (truth[:, :, j] - prev_truth).norm(dim=-1)
                self.true_motion.append(float(true_step[present[..., 0]].mean()))
            self._previous = (frame, pos, bg, truth[:, :, j])
            self._found_prev = found[:, :, j]

    def window_error(self, first: int, last: int) -> float:
        """Mean position error over frames ``first .. last`` (inclusive)."""
        values = torch.stack(self.errors[first:last + 1])
        return float(values.nanmean()) if (~values.isnan()).any() else float("nan")

    def summary(self, given: int, chunk: int, windows: tuple[int, ...] = (1, 4, 16)) -> dict:
        """Position error in windows 1, 4, 16 (frames of window k after the given ones), the share of
        sprites found, flicker on the background and the motion ratio (estimated / true per-frame
        displacement) over the generated frames."""
        out = {}
        for k in windows:
            first, last = given + (k - 1) * chunk, given + k * chunk - 1
            if last < len(self.errors):
                out[f"pos_err_w{k}"] = self.window_error(first, last)
        generated = torch.stack(self.found[given:]) if len(self.found) > given else torch.zeros(0)
        out["found"] = float(generated.nanmean()) if generated.numel() else float("nan")
        tail = self.flicker[given - 1:] if given else self.flicker
        out["flicker"] = sum(tail) / len(tail) if tail else float("nan")
        motion = torch.tensor(self.motion[given - 1:])
        true = torch.tensor(self.true_motion[given - 1:])
        out["motion_ratio"] = float(motion.nanmean() / true.mean()) if len(true) else float("nan")
        return out


def build(cfg: dict, path: str = "model") -> SpriteRollout:
    """``model: {name: video-denoiser, weights: <file>}`` (default: the committed weights)."""
    from ..core.errors import ConfigError
    from ..io.config import find_file

    unknown = [k for k in cfg if k not in ("name", "weights")]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "unknown key for 'video-denoiser'; valid: weights")
    weights = cfg.get("weights")
    if weights is not None:
        weights = find_file(str(weights), f"{path}.weights")
    elif not DEFAULT_WEIGHTS.is_file():
        raise ConfigError(f"{path}.weights", f"the committed weights {DEFAULT_WEIGHTS} are missing; train them with "
                          "configs/train/video_denoiser.yaml")
    return SpriteRollout.load(weights)
