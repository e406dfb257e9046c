"""``kind: rollout`` -- a long video (or audio) from a few history frames, window by window, with history guidance.

    kind: rollout
    model: {name: video-denoiser}                 # the zoo's sprite model (committed weights)
    prompt: "a red square moving horizontally fast and a blue square moving vertically slow"
    history: 4                                    # ground-truth start frames (the caption's physics)
    frames: 64                                    # in all, history included
    context: 4
    chunk: 4
    guider: {name: history, scheme: vanilla, scale: 2.0}

Frames are written as they are produced (``frames/video_<k>/000123.png``, atomically), so a run
that stops keeps everything generated so far; MP4 / GIF and a contact sheet per video are assembled
at the end (also after an error, from the frames written). ``metrics.json``: NFE per frame, windows,
seconds and, for models with known physics, the position error against the truth per window.
Progress: one log line per window and a bar over windows.

The same kind continues audio on the zoo's text-to-audio model (``model: {name: toy-audio}``,
``configs/audio/continuation.yaml``): frames are latent (spectrogram) frames, the output is one WAV
and one log-mel PNG per sample, decoded from the whole latent at the end (also after an error), and
the metrics compare each window with the known signal (pitch, timbre, level, seams). What a model
must offer is in :data:`ROLLOUT_MODELS`' builders: the rollout subject of
:class:`~omniguide.modalities.video.rollout.RolloutSubject` plus ``rate``, ``frame_multiple``,
``scheduler``, ``check_prompt``, ``keyframe_inputs``, ``check_output``, ``stream``, ``start`` and
optionally ``score``.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any

from ... import errors
from ..registry import listing, register_listing, register_recipe
from ..run import RunContext
from ..schema import option, require_finite

# model name -> "module:function" building what a rollout needs from ``model:`` (cfg, path)
ROLLOUT_MODELS: dict[str, str] = {
    "video-denoiser": "omniguide.zoo.sprite_rollout:build",
    "toy-audio": "omniguide.zoo.audio_rollout:build",
}
register_listing("rollout-models", lambda: listing("rollout model", ROLLOUT_MODELS))   # in `omniguide list`


@dataclass
class RolloutConfig:
    """A long rollout of a model with per-frame noise levels (a video, or an audio latent)."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "video-denoiser"})
    prompt: str = "a red square moving horizontally fast and a blue square moving vertically slow"
    history: int = option(4, ge=1)                 # given (ground-truth) frames
    frames: int = option(64, ge=2)                 # frames in all, history included
    window: int | None = option(None, ge=2)        # None: the model's window
    context: int = option(4, ge=0)
    chunk: int = option(4, ge=1)
    keyframe_stride: int = option(1, ge=1)
    steps: int = option(10, ge=1, le=1000)
    scheduler: dict[str, Any] = field(default_factory=dict)   # {name: ..., **config}; no name: the model's sampler
    stabilization: Any = 0.02                      # level of generated history fed clean: k or [oldest, newest]
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "history", "scheme": "vanilla", "scale": 2.0})
    samples: int = option(2, ge=1)                 # videos (or clips) rolled out together
    seed: int = 0
    batch: bool = True
    output: dict[str, Any] = field(default_factory=dict)   # the model's writer options (video: formats, scale ...)
    progress: bool = True
    threads: int | None = option(None, ge=1)       # torch CPU threads (None: torch's default)


def build_subject(cfg: dict[str, Any], path: str = "model") -> Any:
    """What the rollout needs from the model named by ``cfg['name']`` (see :data:`ROLLOUT_MODELS`)."""
    name = cfg.get("name") if isinstance(cfg, dict) else None
    if name not in ROLLOUT_MODELS:
        hint = errors.did_you_mean(str(name), ROLLOUT_MODELS)
        raise errors.ConfigError(f"{path}.name", f"unknown rollout model '{name}'{hint}")
    module, _, attr = ROLLOUT_MODELS[name].partition(":")
    return getattr(importlib.import_module(module), attr)(cfg, path)


def make_rollout(cfg: RolloutConfig, subject: Any, guider=None, on_window=None):
    """The :class:`~omniguide.modalities.video.rollout.Rollout` of a config (validates the plan)."""
    # torch, the core and the video modality load here: ``omniguide show`` imports this module
    from ...modalities import video as _video  # noqa: F401  (registers the video guiders and scales by name)
    from ...modalities.video.rollout import Rollout, RolloutPlan, check_frame_multiple
    from ..builders import make_guider

    window = cfg.window or subject.window
    if window > subject.window:
        raise errors.ConfigError("window", f"{window} frames is more than the model's window of {subject.window}")
    if cfg.context >= window:
        raise errors.ConfigError("context", f"history of {cfg.context} frames is longer than the window allows "
                          f"(at most {window - 1} with a window of {window})")
    check_frame_multiple(subject.frame_multiple, window=window, history=cfg.history, context=cfg.context,
                         chunk=cfg.chunk, frames=cfg.frames)
    try:
        plan = RolloutPlan(window, cfg.context, cfg.chunk, cfg.keyframe_stride)
    except errors.ConfigError as err:
        raise errors.ConfigError(err.path, err.message) from None
    options = {k: v for k, v in cfg.scheduler.items() if k != "name"}
    scheduler = subject.scheduler(cfg.scheduler.get("name", subject.sampler), "scheduler.name", **options)
    guider = guider or make_guider(cfg.guider, "guider")
    keyframe_inputs = subject.keyframe_inputs(cfg.keyframe_stride) if cfg.keyframe_stride > 1 else {}
    return Rollout.of(subject, cfg.prompt, cfg.samples, scheduler, guider, plan, keyframe_inputs=keyframe_inputs,
                      steps=cfg.steps, stabilization=cfg.stabilization, batch=cfg.batch, progress=cfg.progress,
                      on_window=on_window)


def check_histories(cfg: RolloutConfig, roll: Any) -> None:
    """Every history the rollout will meet fits the guider (a temporal subset beyond the history fails now)."""
    import torch

    from ...modalities.video.protocol import GENERATED, GIVEN, History
    from ...modalities.video.rollout import bind_history

    lengths = {min(cfg.context, cfg.history + k * cfg.chunk) for k in range(cfg.context + 1)}
    if cfg.keyframe_stride > 1:
        lengths.add(2)
    for n in sorted(x for x in lengths if x > 0):
        frames = torch.zeros(1, 1, n, 1, 1)
        history = History(frames, (GIVEN,) + (GENERATED,) * (n - 1), frames, roll.schedule,
                          stabilization=cfg.stabilization)
        try:
            bind_history(roll.guider, history, {})
        except (errors.ConfigError, errors.GuidanceError) as err:
            raise errors.ConfigError("guider", f"does not fit a history of {n} frames: {err}") from None


def check_stabilization(value: Any, where: str = "stabilization") -> None:
    """One level or ``[oldest, newest]``: the noise level generated history is fed at, in [0, 1)."""
    if isinstance(value, (list, tuple)) and len(value) != 2:
        raise errors.ConfigError(where, f"give one level or [oldest, newest], got {list(value)}")
    for i, level in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
        at = where if i is None else f"{where}.{i}"
        require_finite(level, at)
        if not 0 <= float(level) < 1:
            raise errors.ConfigError(at, f"a noise level must lie in [0, 1), got {level}")


def check_rollout(cfg: RolloutConfig) -> None:
    check_stabilization(cfg.stabilization)
    subject = build_subject(cfg.model)
    subject.check_prompt(cfg.prompt, "prompt")
    if cfg.history >= cfg.frames:
        raise errors.ConfigError("frames", f"{cfg.frames} frames in all leaves nothing to generate after {cfg.history} "
                          "history frames")
    roll = make_rollout(cfg, subject)
    check_histories(cfg, roll)
    subject.check_output(cfg.output)


@register_recipe("rollout", RolloutConfig, check=check_rollout)
def run_rollout(cfg: RolloutConfig, run: RunContext) -> dict:
    """Roll out a long video (or audio) from a few history frames; the model's writer gets every frame in order."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_rollout(cfg)
    subject = build_subject(cfg.model)
    given, state = subject.start(cfg.prompt, cfg.samples, cfg.history, cfg.seed)
    stream = subject.stream(run.dir, cfg.samples, cfg.output)
    score = subject.score(state) if hasattr(subject, "score") else None
    windows = {"done": 0}

    def on_window(entry: dict) -> None:
        windows["done"] += 1
        run.log(f"window {windows['done']} ({entry['kind']}): {entry['new']} frames from a history of "
                f"{entry['history']} ({entry['generated_history']} generated), nfe {entry['nfe']}")

    def sink(frames, start):
        stream(frames, start)
        if score is not None:
            score(frames, start)
    roll = make_rollout(cfg, subject, on_window=on_window)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            result = roll(given, cfg.frames, sink, torch.Generator().manual_seed(cfg.seed))
    finally:
        files = stream.finish()
        run.log(f"{stream.frames} frames per sample written: {', '.join(files)}")
    seconds = time.perf_counter() - start
    metrics = {"frames": result.frames, "samples": cfg.samples, "windows": result.windows, "nfe": result.nfe,
               "forward_passes": result.forward_passes, "nfe_per_frame": result.nfe_per_frame, "seconds": seconds,
               "files": files}
    if score is not None:
        metrics.update(score.summary(cfg.history, cfg.chunk))
    return metrics
