"""The small text-to-audio model of the zoo: a diffusers-style pipeline over a spectrogram latent.

    from omniguide.zoo.toy_audio import load_pretrained
    pipe = load_pretrained()          # omniguide/zoo/weights/toy_audio, from disk only
    with guide(pipe, CFG(scale=3)):
        audio = pipe("a bright A4 tone, decaying", num_waveforms_per_prompt=4).audios   # [4, 1, 8064]

Components (each saved by ``save_pretrained``, reloaded by ``from_pretrained``):

* ``text_encoder`` -- :class:`ToyTextEncoder`: one learned vector per caption word (the vocabulary is
  in its config); a prompt is its words' vectors, padded to ``max_length`` with a mask. The empty
  prompt (all mask 0) is the unconditional input, as in training (condition dropout).
* ``codec`` -- :class:`SpectrogramCodec`: the fixed latent. ``encode``: waveform -> normalised
  log-magnitude STFT ``[B, 129, frames]`` (hann 256, hop 128 at 8 kHz; ``(log(|X| + 0.01) + 0.5)/4.1``,
  about [-1, 1]); ``decode``: magnitudes -> waveform by Griffin-Lim (torchaudio, 64 iterations,
  deterministic start). Griffin-Lim recovers magnitudes, not the partials' relative phases, so
  the crest factor of harmonic sounds changes (RMS within 2 %, peaks up to 2x for square waves).
* ``denoiser`` -- :class:`ToyAudioDenoiser`: a 1-D UNet over frames (the 129 bins are its input
  channels), v-prediction on a cosine (``squaredcos_cap_v2``) VP schedule, conditioned by FiLM on
  a per-frame embedding of the timestep plus the masked mean of the prompt's word vectors; its
  coarsest level (16 frames) has a transformer block (self-attention over frames) in ``mid_block``,
  which PAG / SEG (attention) and skip-layer guidance (the block) perturb by default.
* ``scheduler`` -- DPM-Solver++ (2M) on the same schedule.

**Denoiser call convention** (for reuse, e.g. continuation with history guidance):
``denoiser(sample [B, 129, F], timestep, encoder_hidden_states [B, L, D], encoder_attention_mask
[B, L]) -> v [B, 129, F]``, with ``timestep`` a number, ``[B]`` (per sample) or ``[B, F]`` (per
frame, training-schedule units 0 ... 999). Training drew per-frame timesteps in 4-frame blocks,
with history prefixes given clean, slightly noisy or masked (timestep 999) while the other frames
share one level (:func:`omniguide.zoo.history_levels.history_levels`), so continuation with
history guidance queries the model in distribution. ``F`` must be a multiple of 4 (two 2x
downsamplings); the model was trained on 64-frame windows (1.008 s).

The pipeline's own ``guidance_scale`` is plain CFG (``u + w (c - u)``, batched ``[negative,
positive]``) like diffusers' pipelines, so :func:`omniguide.guide` is checked against it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from torch import Tensor, nn

from ..core.errors import GuidanceError
from ..modalities.audio.common import check_prompt_list
from ..modalities.base import Family, register_family
from . import toy_audio_data as data

WEIGHTS = str(Path(__file__).parent / "weights" / "toy_audio")
logger = logging.getLogger(__name__)


# -- components -----------------------------------------------------------------------------------------
class ToyTextEncoder(ModelMixin, ConfigMixin):
    """Word vectors over a fixed vocabulary; unknown words are left out (with a warning)."""

    @register_to_config
    def __init__(self, vocabulary: tuple[str, ...] = data.VOCABULARY, dim: int = 64, max_length: int = 12):
        super().__init__()
        self.index = {w: i for i, w in enumerate(vocabulary)}
        self.embedding = nn.Embedding(len(vocabulary), dim)

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """``(ids [B, max_length], mask [B, max_length])``; a one-line error for a prompt that is too long."""
        n = self.config.max_length
        ids, mask = torch.zeros(len(prompts), n, dtype=torch.long), torch.zeros(len(prompts), n, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            known = [self.index[w] for w in data.words(prompt) if w in self.index]
            unknown = [w for w in data.words(prompt) if w not in self.index]
            if unknown:
                logger.warning("toy text encoder: ignoring unknown words %s in %r", unknown, prompt)
            if len(known) > n:
                raise ValueError(f"prompt {row} ({prompt!r}) has {len(known)} words; the toy text encoder takes "
                                 f"at most {n}")
            ids[row, :len(known)] = torch.tensor(known, dtype=torch.long)
            mask[row, :len(known)] = 1
        return ids, mask

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Word vectors ``[B, L, dim]``, zero where the mask is 0."""
        return self.embedding(input_ids) * attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)


class SpectrogramCodec(ModelMixin, ConfigMixin):
    """Waveform <-> normalised log-magnitude STFT (see the module docstring)."""

    @register_to_config
    def __init__(self, sample_rate: int = data.SAMPLE_RATE, n_fft: int = data.N_FFT, hop_length: int = data.HOP,
                 floor: float = 0.01, shift: float = 0.5, scale: float = 4.1, griffin_lim_iters: int = 64):
        super().__init__()
        self.register_buffer("window", torch.hann_window(n_fft))

    @property
    def channels(self) -> int:
        return self.config.n_fft // 2 + 1

    def samples(self, frames: int) -> int:
        """Waveform length of ``frames`` centred STFT frames."""
        return self.config.hop_length * (frames - 1)

    def encode(self, wave: Tensor) -> Tensor:
        """``[B, T]`` -> ``[B, n_fft/2 + 1, T / hop + 1]``."""
        c = self.config
        spec = torch.stft(wave.float(), c.n_fft, hop_length=c.hop_length, window=self.window.float(), center=True,
                          return_complex=True).abs()
        return (torch.log(spec + c.floor) + c.shift) / c.scale

    def magnitude(self, latent: Tensor) -> Tensor:
        c = self.config
        return (torch.exp(latent.float() * c.scale - c.shift) - c.floor).clamp_min(0)

    def decode(self, latent: Tensor) -> Tensor:
        """``[B, bins, frames]`` -> waveform ``[B, hop * (frames - 1)]`` by Griffin-Lim."""
        import torchaudio

        c = self.config
        griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=c.n_fft, hop_length=c.hop_length, power=1.0, n_iter=c.griffin_lim_iters,
            length=self.samples(latent.shape[-1]), rand_init=False).to(latent.device)
        return griffin_lim(self.magnitude(latent))


def timestep_features(timestep: Tensor, dim: int) -> Tensor:
    """Sinusoidal features ``[..., dim]`` of (continuous) timesteps (diffusers' layout: cos, sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timestep.device, dtype=torch.float32) / half)
    angles = timestep.float().unsqueeze(-1) * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM from the per-frame embedding, residual."""

    def __init__(self, cin: int, cout: int, embed: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv1d(cin, cout, 3, padding=1)
        self.film = nn.Conv1d(embed, 2 * cout, 1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv1d(cout, cout, 3, padding=1)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention over frames ``[B, T, C]`` (diffusers-style ``to_q`` / ``to_k`` /
    ``to_v`` / ``to_out``, through ``scaled_dot_product_attention``, so PAG and SEG can perturb it)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden_states: Tensor) -> Tensor:
        b, t, c = hidden_states.shape

        def heads(x: Tensor) -> Tensor:
            return x.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)
        q, k, v = heads(self.to_q(hidden_states)), heads(self.to_k(hidden_states)), heads(self.to_v(hidden_states))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, t, c))


class FrameTransformerBlock(nn.Module):
    """Pre-norm self-attention and MLP over frames, residual (skip-layer guidance skips it)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(channels), SelfAttention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states))
        return hidden_states + self.ff(self.norm2(hidden_states))


class MidBlock(nn.Module):
    """ResBlock, a transformer block over frames, ResBlock (at the coarsest resolution)."""

    def __init__(self, channels: int, embed: int, heads: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels, embed, groups) for _ in range(2)])
        self.transformer_blocks = nn.ModuleList([FrameTransformerBlock(channels, heads)])

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        h = self.resnets[0](h, emb)
        for block in self.transformer_blocks:
            h = block(h.transpose(1, 2)).transpose(1, 2)
        return self.resnets[1](h, emb)


class ToyAudioDenoiser(ModelMixin, ConfigMixin):
    """1-D UNet over STFT frames predicting v; see the module docstring for the call convention."""

    @register_to_config
    def __init__(self, in_channels: int = 129, channels: tuple[int, ...] = (96, 128, 160), text_dim: int = 64,
                 embed_dim: int = 128, heads: int = 4, groups: int = 8, num_train_timesteps: int = 1000):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.proj_in = nn.Conv1d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(ResBlock(prev, ch, embed_dim, groups))
            prev = ch
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv1d(ch, ch, 4, stride=2, padding=1))
        self.mid_block = MidBlock(prev, embed_dim, heads, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            self.up.append(ResBlock(prev + ch, ch, embed_dim, groups))
            prev = ch
            if i > 0:
                self.upsample.append(nn.ConvTranspose1d(ch, channels[i - 1], 4, stride=2, padding=1))
                prev = channels[i - 1]
        self.norm_out = nn.GroupNorm(groups, channels[0])
        self.proj_out = nn.Conv1d(channels[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def embedding(self, timestep, frames: int, batch: int, text: Tensor, mask: Tensor | None) -> Tensor:
        """The per-frame embedding ``[B, embed_dim, frames]``: timestep features plus the pooled prompt."""
        t = torch.as_tensor(timestep, device=text.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            t = t.expand(batch).unsqueeze(1).expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"timestep of shape {tuple(t.shape)}: expected a number, [{batch}] or [{batch}, {frames}]")
        emb = self.time_mlp(timestep_features(t, self.config.embed_dim))           # [B, F, E]
        if mask is None:
            mask = torch.ones(text.shape[:2], device=text.device)
        m = mask.to(text.dtype).unsqueeze(-1)
        pooled = (text * m).sum(1) / m.sum(1).clamp_min(1.0)
        return (emb + self.text_mlp(pooled.float()).unsqueeze(1)).transpose(1, 2)

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor,
                encoder_attention_mask: Tensor | None = None, return_dict: bool = True):
        b, _, frames = sample.shape
        if frames % 4:
            raise ValueError(f"the toy denoiser needs a multiple of 4 frames, got {frames}")
        dtype = sample.dtype
        emb = self.embedding(timestep, frames, b, encoder_hidden_states, encoder_attention_mask)
        h = self.proj_in(sample.float())
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, F.adaptive_avg_pool1d(emb, h.shape[-1]))
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid_block(h, F.adaptive_avg_pool1d(emb, h.shape[-1]))
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), F.adaptive_avg_pool1d(emb, h.shape[-1]))
            if i < len(self.upsample):
                h = self.upsample[i](h)
        out = self.proj_out(F.silu(self.norm_out(h))).to(dtype)
        return {"sample": out} if return_dict else (out,)


# -- the pipeline ---------------------------------------------------------------------------------------
class ToyAudioPipeline(DiffusionPipeline):
    """Text -> 8 kHz mono audio (at most 1.008 s); see the module docstring."""

    model_cpu_offload_seq = "text_encoder->denoiser"

    def __init__(self, text_encoder: ToyTextEncoder, denoiser: ToyAudioDenoiser, codec: SpectrogramCodec,
                 scheduler):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, denoiser=denoiser, codec=codec, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> ToyAudioPipeline:
        """``DiffusionPipeline.from_pretrained``, float32 by default: the weights are stored in
        float16 to keep the folder small and come back as float32 on any device."""
        if "torch_dtype" not in kwargs:
            kwargs.setdefault("dtype", torch.float32)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.codec.config.sample_rate

    @property
    def max_audio_length_in_s(self) -> float:
        return self.codec.samples(data.FRAMES) / self.sample_rate

    def encode_prompt(self, prompt, device, num_waveforms_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt=None):
        """``(embeds, mask, negative_embeds, negative_mask)``, each repeated per waveform; the negative
        is the empty prompt unless given (``None`` without CFG)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids, mask = self.text_encoder.tokenize(prompts)
        embeds = self.text_encoder(ids.to(device), mask.to(device))
        mask = mask.to(device)
        negative = negative_mask = None
        if do_classifier_free_guidance:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
            n_ids, negative_mask = self.text_encoder.tokenize(negatives)
            negative = self.text_encoder(n_ids.to(device), negative_mask.to(device))
            negative_mask = negative_mask.to(device)

        def repeat(x):
            return None if x is None else x.repeat_interleave(num_waveforms_per_prompt, dim=0)
        return repeat(embeds), repeat(mask), repeat(negative), repeat(negative_mask)

    def check_inputs(self, prompt, audio_length_in_s, num_waveforms_per_prompt, negative_prompt=None) -> None:
        check_prompt_list(prompt)
        for texts in (prompt, negative_prompt):
            if texts is not None:
                self.text_encoder.tokenize([texts] if isinstance(texts, str) else list(texts))
        if audio_length_in_s is not None and not 0 < audio_length_in_s <= self.max_audio_length_in_s + 1e-9:
            raise ValueError(f"audio_length_in_s={audio_length_in_s}: the toy model produces 0 < length <= "
                             f"{self.max_audio_length_in_s:.3f} s")
        if num_waveforms_per_prompt < 1:
            raise ValueError(f"num_waveforms_per_prompt must be >= 1, got {num_waveforms_per_prompt}")

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], audio_length_in_s: float | None = None, num_inference_steps: int = 25,
                 guidance_scale: float = 3.0, negative_prompt: str | list[str] | None = None,
                 num_waveforms_per_prompt: int = 1, generator: torch.Generator | None = None,
                 latents: Tensor | None = None, output_type: str = "np", return_dict: bool = True):
        """Generate ``[N, 1, samples]`` waveforms (``output_type``: ``np``, ``pt`` or ``latent``)."""
        self.check_inputs(prompt, audio_length_in_s, num_waveforms_per_prompt, negative_prompt)
        device = self._execution_device
        batch = 1 if isinstance(prompt, str) else len(prompt)
        cfg = guidance_scale > 1.0
        embeds, mask, negative, negative_mask = self.encode_prompt(prompt, device, num_waveforms_per_prompt, cfg,
                                                                   negative_prompt)
        if cfg:
            embeds, mask = torch.cat([negative, embeds]), torch.cat([negative_mask, mask])
        shape = (batch * num_waveforms_per_prompt, self.codec.channels, data.FRAMES)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            pred = self.denoiser(model_input, t, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                 return_dict=False)[0]
            if cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        if output_type == "latent":
            audio = latents
        else:
            audio = self.codec.decode(latents).unsqueeze(1)
            if audio_length_in_s is not None:
                audio = audio[..., : int(round(audio_length_in_s * self.sample_rate))]
            if output_type == "np":
                audio = audio.cpu().numpy().astype(np.float32)
        self.maybe_free_model_hooks()
        return AudioPipelineOutput(audios=audio) if return_dict else (audio,)


# -- the adapter's family -------------------------------------------------------------------------------
def _encode(original, arguments: dict, negatives: dict):
    embeds, mask, negative, negative_mask = original(**{**arguments, **negatives,
                                                        "do_classifier_free_guidance": True})
    return ((embeds, mask, None, None), {"prompt_embeds": embeds, "attention_mask": mask},
            {"prompt_embeds": negative, "attention_mask": negative_mask})


def _read_output(pipe, result) -> tuple[Tensor, int]:
    return torch.as_tensor(result.audios), pipe.sample_rate


def _check_call(pipe, arguments: dict) -> None:
    try:
        pipe.check_inputs(arguments.get("prompt"), arguments.get("audio_length_in_s"),
                          arguments.get("num_waveforms_per_prompt", 1), arguments.get("negative_prompt"))
    except ValueError as err:
        raise GuidanceError(f"guide(): {err}") from None


TOY_AUDIO = register_family(Family(
    name="toy-audio",
    pipelines=("omniguide.zoo.toy_audio:ToyAudioPipeline",),
    denoiser="denoiser",
    sample="sample",
    encode=_encode,
    conditions={"encoder_hidden_states": "prompt_embeds", "encoder_attention_mask": "attention_mask"},
    layout="BCT",
    negatives=("negative_prompt",),
    modality="audio",
    samples_kwarg="num_waveforms_per_prompt",
    output_kwargs={"output_type": "pt"},
    read_output=_read_output,
    check_call=_check_call,
))


def build_pipeline(denoiser: ToyAudioDenoiser | None = None, text_encoder: ToyTextEncoder | None = None,
                   steps_scheduler: str = "dpm++") -> ToyAudioPipeline:
    """A pipeline around (trained or fresh) components, with the DPM-Solver++ sampler on the training
    schedule."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                            algorithm_type="dpmsolver++", solver_order=2)
    return ToyAudioPipeline(text_encoder or ToyTextEncoder(), denoiser or ToyAudioDenoiser(), SpectrogramCodec(),
                            scheduler)


def load_pretrained(path: str | Path | None = None, **kwargs) -> ToyAudioPipeline:
    """The committed, trained model (``omniguide/zoo/weights/toy_audio``, shipped as package data), or
    a folder written by the ``train`` recipe; read from disk only (``local_files_only``), never downloaded."""
    folder = Path(path) if path is not None else Path(WEIGHTS)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no toy-audio pipeline at {folder} (expected model_index.json; train one with "
                                f"`omniguide run configs/train/toy_audio.yaml`)")
    return ToyAudioPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
