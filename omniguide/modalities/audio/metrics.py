"""Audio metrics over a pluggable embedder: Fréchet distance between embedding sets, a text-audio
cosine score, re-ranking of candidates, and signal statistics of waveforms.

* :func:`frechet_distance` -- ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between
  Gaussian fits of two embedding sets (FAD when the embedder is an audio classifier's; Heusel et
  al. 2017, arXiv:1706.08500; Kilgour et al. 2019, arXiv:1812.08466). The matrix square root's
  trace is computed as ``sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2)))`` on symmetric matrices in float64.
* :func:`cosine_scores` / :func:`text_audio_score` -- cosine of paired text and audio embeddings
  (the CLAP score, Wu et al. 2023, arXiv:2211.06687, when the embedder is CLAP).
* An **embedder** is anything with ``embed_audio(waveforms [N, C, T], rate) -> [N, D]`` and
  ``embed_text(prompts) -> [N, D]``. :class:`ClapEmbedder` wraps transformers' ``ClapModel`` loaded
  from a local folder or a cached model id (no downloads when ``HF_HUB_OFFLINE=1``); tests use a tiny
  random CLAP. :class:`ClapScorer` makes it a sample-recipe scorer (``scorer: {name: clap, path: ...}``).
* :func:`signal_stats` -- peak, RMS, spectral flatness and the share of samples at full scale
  (``|x| >= 0.999``): clipping and over-saturation indicators.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ...core.errors import ConfigError
from ...core.scorers import register_output_scorer


class Embedder(Protocol):
    def embed_audio(self, waveforms: Tensor, rate: int) -> Tensor: ...

    def embed_text(self, prompts: Sequence[str]) -> Tensor: ...


# -- Fréchet distance ------------------------------------------------------------------------------------
def gaussian_stats(embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``[N, D]`` embeddings (float64)."""
    x = torch.as_tensor(embeddings).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embeddings must be [N >= 2, D], got {tuple(x.shape)}")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(a: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_from_stats(mu_a: Tensor, cov_a: Tensor, mu_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet distance between ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``."""
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(v).double() for v in (mu_a, mu_b, cov_a, cov_b))
    root = _sqrt_psd(cov_a)
    middle = root @ cov_b @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussian fits of embedding sets ``a [N, D]`` and ``b [M, D]``."""
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


# -- text-audio agreement ---------------------------------------------------------------------------------
def cosine_scores(text: Tensor, audio: Tensor) -> Tensor:
    """Row-wise cosine similarity of paired ``[N, D]`` embeddings."""
    return torch.nn.functional.cosine_similarity(text.double(), audio.double(), dim=-1)


def text_audio_score(embedder: Embedder, waveforms: Tensor, rate: int, prompts: str | Sequence[str]) -> Tensor:
    """Per-clip cosine between each clip and its prompt (one prompt for all clips, or one per clip)."""
    prompts = [prompts] * waveforms.shape[0] if isinstance(prompts, str) else list(prompts)
    if len(prompts) != waveforms.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {waveforms.shape[0]} clips")
    return cosine_scores(embedder.embed_text(prompts), embedder.embed_audio(waveforms, rate))


def rerank(waveforms: Tensor, scores: Tensor, keep: int | None = None) -> tuple[Tensor, Tensor]:
    """The clips sorted by decreasing score (stable), the best ``keep`` of them, and their order."""
    order = torch.sort(torch.as_tensor(scores).double(), descending=True, stable=True).indices
    if keep is not None:
        order = order[: max(1, int(keep))]
    return waveforms[order], order


# -- CLAP --------------------------------------------------------------------------------------------------
def check_model_folder(path: str, where: str = "embedder.path") -> str:
    """A local folder with a ``config.json``, or a model id already in the local Hugging Face cache."""
    folder = Path(path).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise ConfigError(where, f"{folder} is not a model folder (config.json is missing)")
        return str(folder)
    if "/" in path and not path.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(path, local_files_only=True)
        except Exception:
            raise ConfigError(where, f"'{path}' is neither a local folder nor in the local Hugging Face "
                              "cache") from None
    raise ConfigError(where, f"embedder folder not found: {path}")


def _tensor(output: Any) -> Tensor:
    """transformers 5's feature getters return output objects; older ones a tensor."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClapEmbedder:
    """Text and audio embeddings of transformers' ``ClapModel`` (and its ``ClapProcessor``) from
    ``path``; audio is averaged to mono and resampled to the feature extractor's rate."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import ClapModel, ClapProcessor

        folder = check_model_folder(path)
        self.model = ClapModel.from_pretrained(folder).to(device).eval()
        self.processor = ClapProcessor.from_pretrained(folder)
        self.device = device

    @property
    def rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> Tensor:
        inputs = self.processor(text=list(prompts), return_tensors="pt", padding=True)
        return _tensor(self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})).float()

    @torch.no_grad()
    def embed_audio(self, waveforms: Tensor, rate: int) -> Tensor:
        import torchaudio

        mono = waveforms.detach().float().cpu().mean(1)
        if rate != self.rate:
            mono = torchaudio.functional.resample(mono, rate, self.rate)
        inputs = self.processor(audio=[w.numpy() for w in mono], sampling_rate=self.rate, return_tensors="pt")
        features = inputs["input_features"].to(self.device)
        return _tensor(self.model.get_audio_features(input_features=features)).float()


class ClapScorer:
    """A sample-recipe scorer: ``clap_score`` (mean cosine of clips and prompt) and, for re-ranking,
    ``clip_scores``."""

    def __init__(self, path: str, device: str = "cpu"):
        self.embedder = ClapEmbedder(path, device)

    def clip_scores(self, data: Tensor, prompt: str, rate: int) -> Tensor:
        return text_audio_score(self.embedder, data, rate, prompt)

    def __call__(self, data: Tensor, prompt: str, rate: int) -> dict:
        scores = self.clip_scores(data, prompt, rate)
        return {"clap_score": float(scores.mean()), **signal_stats(data)}


@register_output_scorer("clap")
def build_clap_scorer(path: str = "???", device: str = "cpu") -> ClapScorer:
    """The ``clap`` scorer (``scorer: {name: clap, path: <CLAP folder or cached model id>}``)."""
    if path == "???":
        raise ConfigError("model.scorer.path", "the clap scorer needs the path of a CLAP model folder")
    return ClapScorer(path, device)


# -- signal statistics ---------------------------------------------------------------------------------------
def signal_stats(data: Tensor, full_scale: float = 0.999) -> dict[str, float]:
    """Means over the clips of ``[N, C, T]`` waveforms: ``peak`` (max |x|), ``rms``, ``crest``
    (peak / RMS), ``flatness`` (spectral flatness: geometric / arithmetic mean of the power spectrum
    over 256-sample frames; 0 for a pure tone, ~0.56 for white noise), ``clipped`` (share of samples
    with ``|x| >= full_scale``)."""
    x = data.detach().float().cpu()
    peak = x.abs().amax(dim=(1, 2))
    rms = x.pow(2).mean(dim=(1, 2)).sqrt()
    n_fft = min(256, max(2, x.shape[-1]))
    frames = x.reshape(-1, x.shape[-1])
    if frames.shape[-1] < n_fft:
        frames = torch.nn.functional.pad(frames, (0, n_fft - frames.shape[-1]))
    spec = torch.stft(frames, n_fft, hop_length=max(1, n_fft // 4), window=torch.hann_window(n_fft),
                      center=False, return_complex=True).abs().pow(2) + 1e-12
    flatness = (spec.log().mean(1).exp() / spec.mean(1)).mean()
    return {"peak": float(peak.mean()), "rms": float(rms.mean()),
            "crest": float((peak / rms.clamp_min(1e-12)).mean()), "flatness": float(flatness),
            "clipped": float((x.abs() >= full_scale).float().mean())}
