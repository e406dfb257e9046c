"""Guider presets of the text-to-audio reference implementations: their default guidance, by name.

    from omniguide import preset
    guider = preset("ace-step")                 # or in a recipe: guider: {preset: ace-step, scale: 10}

Each preset is a factory whose keyword parameters are what may be overridden; ``source`` names the
file and function its defaults come from (see docs/audio.md for the table). Axes assume the audio
layouts of :mod:`omniguide.modalities.audio`: dim 1 channels, dim 2 time (``BCT`` and ``BCTW``).
"""

from __future__ import annotations

import math

from ...core.methods import APG, CFG, CFGRescale, Interval
from ...core.registry import register_preset


def vp_sigma_to_edm(sigma: float) -> float:
    """stable-audio-tools' interval coordinate ``sigma = sin(t pi/2)`` (v objective: ``alpha = cos``) as
    the path-independent ``sigma / alpha`` omniguide's intervals read (``inf`` at ``sigma = 1``)."""
    if not 0.0 <= sigma <= 1.0:
        raise ValueError(f"cfg_interval bounds are sin(t pi/2) in [0, 1], got {sigma}")
    return math.inf if sigma >= 1.0 else sigma / math.sqrt(1.0 - sigma * sigma)


@register_preset("stable-audio-tools", source="Stability-AI/stable-audio-tools: models/dit.py "
                 "DiffusionTransformer.forward (cfg_scale, scale_phi, cfg_interval); interface/gradio.py "
                 "defaults cfg_scale=7.0, cfg_rescale=0.0, cfg_interval (0, 1)")
def stable_audio_tools(scale: float = 7.0, rescale: float = 0.0, cfg_interval: tuple = (0.0, 1.0)):
    """CFG 7 with stable-audio-tools' std rescale (std over channels, per frame) and its sigma interval."""
    guider = CFGRescale(scale=scale, rescale=rescale, space="v", axes=(1,))
    low, high = (float(b) for b in cfg_interval)
    if (low, high) == (0.0, 1.0):
        return guider
    return Interval(guider, sigma=(vp_sigma_to_edm(low), vp_sigma_to_edm(high)))


@register_preset("ace-step", source="ace-step/ACE-Step: acestep/apg_guidance.py apg_forward + MomentumBuffer; "
                 "acestep/pipeline_ace_step.py text2music_diffusion_process (guidance_scale=15, "
                 "guidance_interval=0.5, cfg_type='apg')")
def ace_step(scale: float = 15.0, momentum: float = -0.75, norm_threshold: float = 2.5, eta: float = 0.0,
             guidance_interval: float = 0.5, axes: tuple = (2,)):
    """APG 15, momentum -0.75, norm threshold 2.5, normalised over time, on the middle half of the steps.

    ACE-Step guides steps ``int(N (1-g)/2) <= i < int(N (g/2 + 1/2))``; here the step coordinate
    ``i / (N - 1)`` lies in ``[(1-g)/2, (1+g)/2]``: the same steps for N = 60 (ACE-Step's default),
    within one step at either end otherwise."""
    apg = APG(scale=scale, eta=eta, norm_threshold=norm_threshold, momentum=momentum, form="c+(w-1)*upd", space=None,
              axes=tuple(axes))
    g = float(guidance_interval)
    if not 0.0 < g <= 1.0:
        raise ValueError(f"guidance_interval must be in (0, 1], got {g}")
    return apg if g == 1.0 else Interval(apg, step=((1 - g) / 2, (1 + g) / 2))


@register_preset("ezaudio", source="haidog-yaqub/EzAudio: api/ezaudio.py generate_audio(guidance_scale=5, "
                 "guidance_rescale=0.75); src/inference.py rescale_noise_cfg (std over all non-batch dims)")
def ezaudio(scale: float = 5.0, rescale: float = 0.75):
    """CFG 5 with rescale 0.75 on the model's v prediction, std over every non-batch dim."""
    return CFGRescale(scale=scale, rescale=rescale, space="v")


def _cfg_preset(name: str, default: float, source: str, summary: str) -> None:
    def build(scale: float = default):
        return CFG(scale=scale)
    build.__doc__ = summary
    register_preset(name, source=source)(build)


_cfg_preset("audioldm2", 3.5, "diffusers: pipelines/audioldm2/pipeline_audioldm2.py AudioLDM2Pipeline.__call__ "
            "guidance_scale=3.5", "CFG 3.5 (AudioLDM2's pipeline default).")
_cfg_preset("audioldm", 2.5, "diffusers: pipelines/deprecated/audioldm/pipeline_audioldm.py "
            "AudioLDMPipeline.__call__ guidance_scale=2.5", "CFG 2.5 (AudioLDM's pipeline default).")
_cfg_preset("musicldm", 2.0, "diffusers: pipelines/deprecated/musicldm/pipeline_musicldm.py "
            "MusicLDMPipeline.__call__ guidance_scale=2.0", "CFG 2 (MusicLDM's pipeline default).")
_cfg_preset("stable-audio", 7.0, "diffusers: pipelines/stable_audio/pipeline_stable_audio.py "
            "StableAudioPipeline.__call__ guidance_scale=7.0", "CFG 7 (diffusers' Stable Audio default).")
_cfg_preset("tango", 3.0, "declare-lab/tango: inference.py --guidance 3 (models.py AudioDiffusion.inference, "
            "unconditional = empty prompt)", "CFG 3 (Tango / Tango 2 inference default).")
_cfg_preset("mmaudio", 4.5, "hkchengrex/MMAudio: cfg_strength=4.5 (mmaudio/eval_utils.py generate); "
            "v = s v_c + (1 - s) v_null", "CFG 4.5 (MMAudio's cfg_strength; u + s (c - u)).")
_cfg_preset("musicgen", 3.0, "transformers: MusicGen checkpoints' generation_config.json guidance_scale=3.0 "
            "(ClassifierFreeGuidanceLogitsProcessor)", "CFG 3 on the logits (MusicGen's default).")
