"""Training the small text-to-audio model (:mod:`omniguide.zoo.toy_audio`) with a ``train`` recipe.

    kind: train
    model: {name: toy-audio, channels: [144, 144, 160]}
    data: {drop: 0.25, p_structured: 0.4}
    cond_dropout: 0.15

A pool of ``data.pool`` clips (:mod:`omniguide.zoo.toy_audio_data`) is synthesised once from the
seed and kept as latents; each step draws a global batch from it (clips, fresh captions with the
timbre / envelope left out at random, noise, timesteps) with its own generator seeded by
``(seed, step)``; each rank keeps rows ``rank::world``, so resuming and the number of ranks do not
change the data. Loss: MSE of the v prediction on the cosine VP
schedule; captions are replaced by the empty prompt with probability ``cond_dropout`` (the
unconditional input for guidance). Timesteps are per frame, drawn by
:func:`~omniguide.zoo.history_levels.history_levels` in blocks of 4 frames (the coarsest level's
resolution): a share of the clips have a history prefix given clean, slightly noisy or masked
while the rest shares one level, the situations continuation with history guidance queries; clean
frames (timestep 0) are left out of the loss (their v is the noise itself, unpredictable). An exponential moving
average of the weights is kept and is what ``save_outputs`` writes: ``pipeline/``, a folder
``ToyAudioPipeline.from_pretrained`` reads.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import toy_audio_data as data
from .history_levels import history_levels
from .toy_audio import SpectrogramCodec, ToyAudioDenoiser, ToyTextEncoder, build_pipeline
from .trainer import StepTrainer, TrainSettings, trainable_builder


@dataclass
class ToyAudioModelConfig:
    """Architecture of the denoiser and the text encoder."""

    channels: list[int] = field(default_factory=lambda: [144, 144, 160])   # level 1 >= 129 bins: no bottleneck
    embed_dim: int = 64
    text_dim: int = 64
    heads: int = 4
    groups: int = 8


@dataclass
class ToyAudioData:
    """How training clips and captions are drawn."""

    pool: int = 6144            # clips synthesised once (latents kept in memory)
    drop: float = 0.25          # leave the timbre / the envelope out of a caption
    p_clean: float = 0.1        # per-block atoms of the unstructured clips (history_levels)
    p_masked: float = 0.05
    p_structured: float = 0.4   # share of clips with a history prefix / subset at one level
    block: int = 4              # frames per noise-level block


@dataclass
class ToyAudioSettings(TrainSettings):
    warmup: int = 100           # steps of linear learning-rate warm-up
    ema: float = 0.995          # decay of the moving average of the weights


class ToyAudioModel(nn.Module):
    """The trained parts: text encoder and denoiser."""

    def __init__(self, config: ToyAudioModelConfig):
        super().__init__()
        self.text_encoder = ToyTextEncoder(dim=config.text_dim)
        self.denoiser = ToyAudioDenoiser(channels=tuple(config.channels), text_dim=config.text_dim,
                                         embed_dim=config.embed_dim, heads=config.heads, groups=config.groups)


class ToyAudioModule(StepTrainer):
    """v-prediction training of :class:`ToyAudioModel` on synthetic captioned clips, with an EMA copy."""

    def __init__(self, model: ToyAudioModelConfig, data_cfg: ToyAudioData, settings: ToyAudioSettings):
        super().__init__()
        self.save_hyperparameters({"model": asdict(model), "data": asdict(data_cfg), "settings": asdict(settings)})
        self.model = ToyAudioModel(model)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.codec = SpectrogramCodec()
        self.data_cfg, self.settings = data_cfg, settings
        from diffusers import DDPMScheduler

        abar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)

    def pool(self) -> tuple[Tensor, list[data.Attributes]]:
        """The clip pool as latents ``[P, bins, frames]`` (float16) and its attributes, made once."""
        if getattr(self, "_pool", None) is None:
            gen = torch.Generator().manual_seed(self.settings.seed * 7919 + 17)
            attributes = [data.random_attributes(gen) for _ in range(self.data_cfg.pool)]
            latents = []
            for i in range(0, len(attributes), 256):
                chunk = [data.Attributes(a.kind, a.pitch, a.timbre or "pure", a.envelope)
                         for a in attributes[i:i + 256]]
                with torch.no_grad():
                    latents.append(self.codec.cpu().encode(data.synthesize(chunk, gen)).half())
            self._pool = (torch.cat(latents), attributes)
        return self._pool

    def global_batch(self, step: int) -> tuple[Tensor, list[str], Tensor, Tensor]:
        """``(latents, captions, timesteps [B, F], noise)`` of one step, identical on every rank and rerun."""
        s, d = self.settings, self.data_cfg
        latents, attributes = self.pool()
        gen = self.generator(step)
        index = torch.randint(len(attributes), (s.batch_size,), generator=gen)
        keep = torch.rand(s.batch_size, 2, generator=gen) >= d.drop
        dropped = torch.rand(s.batch_size, generator=gen) < s.cond_dropout
        captions = []
        for row, i in enumerate(index.tolist()):
            a = attributes[i]
            said = data.Attributes(a.kind, a.pitch, a.timbre if keep[row, 0] else None,
                                   a.envelope if keep[row, 1] else None)
            captions.append("" if dropped[row] else data.caption(said))
        levels = history_levels(s.batch_size, data.FRAMES, gen, d.p_clean, d.p_masked, d.p_structured, d.block)
        t = (levels * (len(self.alphas_cumprod) - 1)).round().long()
        noise = torch.randn(s.batch_size, self.codec.channels, data.FRAMES, generator=gen)
        return latents[index].float(), captions, t, noise

    def loss(self, x0: Tensor, captions: list[str], t: Tensor, noise: Tensor) -> Tensor:
        """MSE of the v prediction at per-frame timesteps ``t`` ``[B, F]``, over the frames with ``t > 0``."""
        abar = self.alphas_cumprod[t].unsqueeze(1)                       # [B, 1, F]
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        xt = alpha * x0 + sigma * noise
        target = alpha * noise - sigma * x0
        ids, mask = self.model.text_encoder.tokenize(captions)
        text = self.model.text_encoder(ids.to(self.device), mask.to(self.device))
        pred = self.model.denoiser(xt, t, text, mask.to(self.device), return_dict=False)[0]
        noisy = (t > 0).unsqueeze(1).to(pred.dtype)                      # [B, 1, F]
        return ((pred - target) ** 2 * noisy).sum() / (noisy.sum() * pred.shape[1]).clamp_min(1.0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema(self.ema, self.model, self.settings.ema)

    def configure_optimizers(self) -> dict:
        """AdamW, linear warm-up, then cosine down to 10 %."""
        return self.adamw_warmup_cosine(self.model.parameters(), self.settings.warmup)

    def pipeline(self):
        """A :class:`~omniguide.zoo.toy_audio.ToyAudioPipeline` with the EMA weights (CPU, eval mode)."""
        ema = copy.deepcopy(self.ema).cpu().eval()
        return build_pipeline(ema.denoiser, ema.text_encoder)

    def save_outputs(self, run_dir: Path) -> None:
        """``run_dir/pipeline/``: the EMA pipeline in float16 (``load_pretrained`` reads it back as
        float32), written to a temporary folder then renamed."""
        final = Path(run_dir) / "pipeline"
        tmp = Path(run_dir) / f".pipeline.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe = self.pipeline()
        pipe.text_encoder.half()
        pipe.denoiser.half()
        pipe.save_pretrained(tmp, safe_serialization=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


build_trainable = trainable_builder(ToyAudioModule, ToyAudioModelConfig, ToyAudioData, ToyAudioSettings)
