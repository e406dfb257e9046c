"""``from_diffusers(guider)``: the omniguide guider equivalent to a ``diffusers.guiders`` object.

The mapping docs/methods.md describes, as code (diffusers 0.42). diffusers' guiders work on the
model's own output and reduce over every non-batch dim, so the mapped guiders use ``space=None``
and the axes their driver declares (the pipeline adapter's family layout covers every non-batch dim).

* ``ClassifierFreeGuidance(w, use_original_formulation)`` -> ``CFG(w, form="u+w(c-u)" | "c+w(c-u)")``
* ``AdaptiveProjectedGuidance(w, momentum, rescale=r, eta, norm_dim)`` ->
  ``APG(w, eta, norm_threshold=r, momentum, form="u+w*upd" | "c+w*upd", space=None)``
* ``ClassifierFreeZeroStarGuidance(w, zero_init_steps)`` -> ``CFGZeroStar(w, zero_init_steps, space=None)``
* ``TangentialClassifierFreeGuidance(w)`` -> ``TCFG(w, space=None)``
* ``MagnitudeAwareGuidance(w, alpha)`` -> ``MagnitudeAware(w, alpha, space=None)`` (diffusers' own
  version fails on 4-D image predictions: its ``torch.norm`` over three dims is refused by torch)
* ``FrequencyDecoupledGuidance([w_high, ..., w_low], parallel_weights)`` ->
  ``FDG(w_low, scale_high, levels, parallel_weight)``
* ``PerturbedAttentionGuidance`` / ``SkipLayerGuidance`` / ``SmoothedEnergyGuidance`` ->
  ``PAG`` / ``SkipLayer`` / ``SEG`` with ``layers`` and a ``perturbed_interval`` over steps
* ``guidance_rescale=phi`` (on any of them) -> ``Rescale(guider, rescale=phi, space=None)``
* ``start, stop`` (step fractions) -> ``Interval(guider, step=(start, stop))``
* ``enabled=False`` -> ``CFG(scale=1)`` (the conditional prediction, one pass)

Step windows are approximate: diffusers guides where ``int(start N) <= i < int(stop N)``, omniguide's
``step`` coordinate is ``i / (N - 1)`` with a closed window, so the two agree at 0 and 1 and may
differ by one step at other boundaries. ``AutoGuidance`` (layer skips on the unconditional pass,
not the paper's weak model), ``AdaptiveProjectedMixGuidance`` and ``LTX2Guidance``
have no exact equivalent here and are refused with the closest composition named.
"""

from __future__ import annotations

import math
from typing import Any

from ..core.errors import GuidanceError
from ..core.guider import Guider
from ..core.methods import APG, CFG, FDG, PAG, SEG, TCFG, CFGZeroStar, Interval, MagnitudeAware, Rescale, SkipLayer

_REFUSED = {
    "AutoGuidance": "it perturbs the unconditional pass with layer skips, which is not the paper's weak-model "
                    "autoguidance; compose Terms with a SkipBlocks-perturbed branch instead",
    "AdaptiveProjectedMixGuidance": "it switches from CFG to APG at an integer step; compose Interval(CFG) and "
                                    "Interval(APG) over 'step' with Terms",
    "LTX2Guidance": "its perturbed passes are LTX-2 transformer keyword arguments; use Terms with named branches",
}


def _selectors(configs: Any) -> tuple | None:
    """diffusers' LayerSkipConfig / SmoothedEnergyGuidanceConfig list -> omniguide layer selectors."""
    if not configs:
        return None
    out: list[int | str] = []
    for config in configs if isinstance(configs, (list, tuple)) else [configs]:
        if isinstance(config, dict):
            fqn, indices = config.get("fqn", "auto"), config["indices"]
        else:
            fqn, indices = config.fqn, config.indices
        indices = [indices] if isinstance(indices, int) else list(indices)
        out += indices if fqn == "auto" else [f"{fqn}.{i}" for i in indices]
    return tuple(out)


def _form(guider: Any) -> str:
    return "c+w(c-u)" if guider.config.get("use_original_formulation", False) else "u+w(c-u)"


def _core(guider: Any) -> Guider:
    import diffusers.guiders

    def kind(name: str) -> bool:   # an instance of diffusers.guiders.<name> (subclasses too)
        cls = getattr(diffusers.guiders, name, None)
        return isinstance(cls, type) and isinstance(guider, cls)

    name, config = type(guider).__name__, guider.config
    w = float(config["guidance_scale"]) if "guidance_scale" in config else None
    if kind("ClassifierFreeGuidance"):
        return CFG(scale=w, form=_form(guider))
    if kind("AdaptiveProjectedGuidance"):
        dims = config.get("adaptive_projected_guidance_norm_dim")
        axes = None if dims is None else ((dims,) if isinstance(dims, int) else tuple(dims))
        return APG(scale=w, eta=float(config["eta"]),
                   norm_threshold=float(config["adaptive_projected_guidance_rescale"]),
                   momentum=float(config.get("adaptive_projected_guidance_momentum") or 0.0),
                   form="c+w*upd" if config.get("use_original_formulation") else "u+w*upd", space=None, axes=axes)
    if kind("ClassifierFreeZeroStarGuidance"):
        return CFGZeroStar(scale=w, zero_init_steps=int(config["zero_init_steps"]), form=_form(guider), space=None)
    if kind("MagnitudeAwareGuidance"):   # diffusers' mambo_guidance: norms over all but the batch axis
        return MagnitudeAware(scale=w, alpha=float(config["alpha"]), form=_form(guider), space=None)
    if kind("TangentialClassifierFreeGuidance"):
        return TCFG(scale=w, form=_form(guider), space=None)
    if kind("FrequencyDecoupledGuidance"):
        scales = [float(s) for s in config["guidance_scales"]]
        weights = config.get("parallel_weights")
        weight = 1.0 if weights is None else float(weights if isinstance(weights, (int, float)) else weights[0])
        high = scales[:-1]
        return FDG(scale=scales[-1], scale_high=high[0] if len(high) == 1 else tuple(high), levels=len(scales),
                   parallel_weight=weight, form=_form(guider))
    if kind("PerturbedAttentionGuidance"):
        return PAG(scale=w, perturbed_scale=float(config["perturbed_guidance_scale"]),
                   layers=_selectors(guider.skip_layer_config), form=_form(guider),
                   perturbed_interval=(config["perturbed_guidance_start"], config["perturbed_guidance_stop"]))
    if kind("SkipLayerGuidance"):
        return SkipLayer(scale=w, perturbed_scale=float(config["skip_layer_guidance_scale"]),
                         layers=_selectors(guider.skip_layer_config), form=_form(guider),
                         perturbed_interval=(config["skip_layer_guidance_start"], config["skip_layer_guidance_stop"]))
    if kind("SmoothedEnergyGuidance"):
        sigma = float(config["seg_blur_sigma"])
        return SEG(scale=w, perturbed_scale=float(config["seg_guidance_scale"]),
                   blur_sigma=math.inf if sigma > float(config["seg_blur_threshold_inf"]) else sigma,
                   layers=_selectors(getattr(guider, "seg_guidance_config", None)), form=_form(guider),
                   perturbed_interval=(config["seg_guidance_start"], config["seg_guidance_stop"]))
    refused = next((why for known, why in _REFUSED.items() if kind(known)), None)
    if refused:
        raise GuidanceError(f"from_diffusers: {name} has no exact omniguide equivalent: {refused}")
    raise GuidanceError(f"from_diffusers: {name} is not a diffusers guider omniguide knows "
                        "(diffusers.guiders, 0.42)")


def from_diffusers(guider: Any) -> Guider:
    """The omniguide guider equivalent to the diffusers guider object ``guider`` (see the module docstring)."""
    from diffusers.configuration_utils import ConfigMixin

    if not isinstance(guider, ConfigMixin):
        raise GuidanceError(f"from_diffusers: {type(guider).__name__} is not a diffusers guider (diffusers.guiders)")
    config = guider.config
    if not getattr(guider, "_enabled", True):
        return CFG(scale=1.0)
    out = _core(guider)
    rescale = config.get("guidance_rescale", 0.0)
    if isinstance(rescale, (list, tuple)):
        if any(float(r) != 0.0 for r in rescale):
            raise GuidanceError("from_diffusers: a per-level guidance_rescale (FDG) has no omniguide equivalent")
        rescale = 0.0
    if float(rescale) > 0.0:
        out = Rescale(out, rescale=float(rescale), space=None)
    start, stop = config.get("start", 0.0), config.get("stop", 1.0)
    if isinstance(start, (list, tuple)) or isinstance(stop, (list, tuple)):
        raise GuidanceError("from_diffusers: per-level start/stop windows (FDG) have no omniguide equivalent")
    if (float(start), float(stop)) != (0.0, 1.0):
        out = Interval(out, step=(float(start), float(stop)))
    return out
