"""Prompt accuracy and saturation of a shapes pipeline over classifier-free guidance scales.

Every scale sees the same prompts and the same initial noise (per seed), so differences between
rows come from guidance alone. Images are scored as a user sees them (clamped to [-1, 1]).

    python -m omniguide.zoo.shapes.evaluate                      # the committed pipeline
    python -m omniguide.zoo.shapes.evaluate --pipeline runs/shapes-.../pipeline --scales 1 3 5 7.5
    python -m omniguide.zoo.shapes.evaluate --scorer-guidance --cfg 3 --scales 0 1 2 4   # classifier guidance
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from .data import IMAGE_SIZE, prompt_set
from .pipeline import ShapesPipeline
from .scorer import accuracy, pixel_stats

COLUMNS = ("scale", "colour", "shape", "position", "joint", "mean_abs", "clipped", "chroma", "colourfulness")


def generate(pipe: ShapesPipeline, prompts: Sequence[str], seed: int, scale: float, steps: int = 30,
             batch: int = 64) -> torch.Tensor:
    """Images ``[N, 3, 32, 32]`` in [-1, 1] for ``prompts``, the initial noise drawn from ``seed``."""
    noise = torch.randn(len(prompts), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, len(prompts), batch):
        part = list(prompts[start:start + batch])
        raw = pipe(part, num_inference_steps=steps, guidance_scale=scale, latents=noise[start:start + batch],
                   output_type="latent").images
        out.append(raw.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def evaluate(pipe: ShapesPipeline, scales: Sequence[float] = (1.0, 3.0, 5.0, 7.5), prompts: int = 64,
             seeds: Sequence[int] = (0, 1), steps: int = 30) -> list[dict[str, float]]:
    """One row per scale: per-attribute and joint accuracy, and the pixel statistics."""
    captions, attrs = prompt_set(prompts)
    rows = []
    for scale in scales:
        images = torch.cat([generate(pipe, captions, seed, scale, steps) for seed in seeds])
        rows.append({"scale": scale, **accuracy(images, attrs * len(seeds)), **pixel_stats(images)})
    return rows


def scorer_guidance(pipe: ShapesPipeline, scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0), cfg_scale: float = 3.0,
                    prompts: int = 32, seeds: Sequence[int] = (0, 1), steps: int = 20) -> list[dict[str, float]]:
    """One row per scorer-guidance scale ``s`` on top of CFG ``cfg_scale`` (``s = 0`` is CFG alone),
    the classifier scoring each image against its own prompt; graded by the analytic scorer, which
    shares nothing with the classifier. Same prompts and initial noise in every row."""
    from ...core.methods import CFG, ScorerGuidance
    from ...modalities.base import guide
    from .classifier import ShapesClassifierScorer

    captions, attrs = prompt_set(prompts)
    scorer = ShapesClassifierScorer(prompt=captions)
    rows = []
    for scale in scales:
        guider = ScorerGuidance(scale=scale, scorer=scorer, guider=CFG(scale=cfg_scale))
        images, start = [], time.perf_counter()
        for seed in seeds:
            noise = torch.randn(len(captions), 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
            with guide(pipe, guider) as run:
                out = pipe(captions, num_inference_steps=steps, latents=noise, output_type="latent").images
            images.append(out.detach().float().clamp(-1, 1).cpu())
        images = torch.cat(images)
        rows.append({"scale": scale, **accuracy(images, attrs * len(seeds)), **pixel_stats(images),
                     "nfe": run.nfe, "seconds": time.perf_counter() - start})
    return rows


def markdown(rows: list[dict[str, float]]) -> str:
    """The rows as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:g}" if c == "scale" else f"{row[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table for a pipeline folder (default: the committed one)."""
    from . import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", default=None, help="save_pretrained folder (default: the committed one)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--scorer-guidance", action="store_true",
                        help="rows are scorer-guidance scales (the classifier) on top of CFG --cfg")
    parser.add_argument("--cfg", type=float, default=3.0)
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.pipeline)
    start = time.perf_counter()
    if args.scorer_guidance:
        rows = scorer_guidance(pipe, args.scales, args.cfg, args.prompts, args.seeds, args.steps)
    else:
        rows = evaluate(pipe, args.scales, args.prompts, args.seeds, args.steps)
    print(markdown(rows))
    print(f"\n{args.prompts} prompts x {len(args.seeds)} seeds, {args.steps} DDIM steps, "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
