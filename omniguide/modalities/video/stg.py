"""Spatiotemporal skip guidance (STG; Hyung et al. 2024, "Spatiotemporal Skip Guidance for Enhanced
Video Diffusion Sampling", arXiv:2411.18664) with LTX-Video's four perturbation modes and its std
rescale (Lightricks/LTX-Video ``ltx_video/pipelines/pipeline_ltx_video.py``,
``models/transformers/attention.py``):

    pred = u + w (c - u) + s (c - p)            (c + s (c - p) with CFG off)
    pred = pred (r std(c) / std(pred) + 1 - r)  when s > 0 and r != 1   (r = rescaling_scale)

``p`` is the conditional branch with selected transformer blocks perturbed; ``mode`` picks how,
as LTX-Video names them (its ``skip_layer_mask`` is 0 for the perturbed batch item):

* ``attention_values`` (STG-A, the default): self-attention returns ``V`` (the identity map;
  the core's :class:`~omniguide.core.perturbations.IdentityAttention`);
* ``attention_skip``: the attention core returns its input (``to_out`` is applied to the
  attention's input hidden states instead of the attention result);
* ``residual``: the attention layer's own residual connection is dropped. In LTX-Video's
  transformer no attention has one (``residual_connection=False``), so there this mode changes
  nothing; here a selection without such a residual is a one-line error rather than a silent no-op;
* ``transformer_block`` (STG-R): the whole block returns its input (the core's ``SkipBlocks``).

The perturbed pass runs separately from ``cond`` / ``uncond`` (one extra forward pass). Scales
may be piecewise over noise-level bins (LTX-Video 13B 0.9.8: cfg ``[1, 1, 6, 8, 6, 1, 1]``, stg
``[0, 0, 4, 4, 4, 2, 1]``, rescale ``[1, 1, 0.5, 0.5, 1, 1, 1]`` at
``[1.0, 0.996, 0.9933, 0.985, 0.9767, 0.9008, 0.618]``), and so may the perturbed blocks
(``layer_bins`` at ``layer_at``; an empty list skips the STG pass in that bin).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ...core.axes import as_axes, std
from ...core.branch import Branch, Perturbation
from ...core.errors import ConfigError, GuidanceError
from ...core.guider import GuidanceStep, guided, passthrough
from ...core.methods.pag import PerturbedGuidance, perturbed_guidance
from ...core.needs import BLOCKS
from ...core.perturbations import IdentityAttention, LayerPerturbation, SkipBlocks, check_fired
from ...core.perturbations.selection import select_self_attention
from ...core.prediction import Guided, Prediction
from ...core.registry import register_guider
from ...core.scale import Piecewise, Scale, is_neutral, resolve

MODES = ("attention_values", "attention_skip", "residual", "transformer_block")


@dataclass(frozen=True)
class SkipAttention(LayerPerturbation):
    """LTX-Video's ``AttentionSkip``: each selected self-attention projects its *input* through
    ``to_out`` instead of the attention result (needs the attention's inner width to equal its input
    width, as in LTX-Video)."""

    who = "stg(attention_skip)"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        return select_self_attention(module, self.layers, self.who)

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)
        captured: dict[str, Tensor] = {}
        handles = []

        def capture(name):
            def hook(attention, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                captured[name] = hidden
            return hook

        def replace(name):
            def hook(linear, args):
                hidden = captured.get(name)
                if hidden is None or hidden.shape != args[0].shape:
                    raise GuidanceError(
                        f"{self.who}: {name} cannot skip its attention: its input "
                        f"{None if hidden is None else tuple(hidden.shape)} and the attention result "
                        f"{tuple(args[0].shape)} differ in shape")
                fired[name] += 1
                return (hidden,)
            return hook
        try:
            for name, attention in targets.items():
                handles.append(attention.register_forward_pre_hook(capture(name), with_kwargs=True))
                handles.append(attention.to_out[0].register_forward_pre_hook(replace(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()
        check_fired(fired, self.who, "the output projection to_out")


@dataclass(frozen=True)
class DropResidual(LayerPerturbation):
    """LTX-Video's ``Residual``: the selected self-attention layers drop their own residual
    connection (``residual_connection``); a selection with none is an error (see the module docstring)."""

    who = "stg(residual)"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        chosen = select_self_attention(module, self.layers, self.who)
        with_residual = {n: m for n, m in chosen.items() if getattr(m, "residual_connection", False)}
        if not with_residual:
            raise GuidanceError(f"{self.who}: none of the {len(chosen)} selected attention layers has a residual "
                                "connection of its own, so this mode would change nothing (as in LTX-Video's "
                                "transformer); use attention_values, attention_skip or transformer_block")
        return with_residual

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        try:
            for attention in targets.values():
                attention.residual_connection = False
            yield
        finally:
            for attention in targets.values():
                attention.residual_connection = True


def stg_perturbation(mode: str, layers: Any) -> Perturbation:
    """The perturbation of an STG ``mode`` on ``layers`` (selectors; ``None``: the middle block)."""
    kinds = dict(zip(MODES, (IdentityAttention, SkipAttention, DropResidual, SkipBlocks)))
    if mode not in kinds:
        raise ConfigError("mode", f"unknown STG mode '{mode}'; valid: {', '.join(MODES)}")
    return kinds[mode](layers)


def rescaled(out: Tensor, cond: Tensor, r: float | Tensor, axes) -> Tensor:
    """``out (r std(c) / std(out) + 1 - r)`` per sample over ``axes`` (LTX-Video's STG rescale)."""
    factor = std(cond, axes) / std(out, axes)
    return out * (r * factor + (1 - r)).to(out.dtype)


@register_guider("stg")
@dataclass
class STG(PerturbedGuidance):
    """Spatiotemporal skip guidance with LTX-Video's modes and rescale (see the module docstring).

    ``scale``: CFG ``w`` (``u + w (c - u)``; 1 = off); ``perturbed_scale``: STG ``s``; ``mode``;
    ``rescaling_scale``: ``r`` (LTX-Video: applied when ``!= 1``); ``layers``: perturbed blocks
    (``None``: the middle block); ``layer_bins`` / ``layer_at`` / ``layer_coordinate``: blocks per
    noise-level bin (a :class:`~omniguide.core.scale.Piecewise` rule)."""

    needs: ClassVar[Mapping[str, str]] = {BLOCKS: "skips attention or residuals in transformer blocks"}

    scale: Scale = 3.0
    perturbed_scale: Scale = 1.0
    mode: str = "attention_values"
    rescaling_scale: Scale = 0.7
    layer_bins: list | None = None
    layer_at: list | None = None
    layer_coordinate: str = "t"
    axes: Any = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError("mode", f"unknown STG mode '{self.mode}'; valid: {', '.join(MODES)}")
        super().__post_init__()
        self.bins = None
        if self.layer_bins is not None:
            if self.layer_at is None or len(self.layer_at) != len(self.layer_bins):
                raise ConfigError("layer_at", "give one bin start per entry of layer_bins")
            self.bins = Piecewise(tuple(range(len(self.layer_bins))), tuple(self.layer_at), self.layer_coordinate)
            self.bin_perturbations = [stg_perturbation(self.mode, tuple(layers)) if layers else None
                                      for layers in self.layer_bins]
        self.axes = as_axes(self.axes)

    def make_perturbation(self) -> Perturbation:
        return stg_perturbation(self.mode, self.layers)

    def branch_defaults(self) -> dict:
        if self.bins is None:
            return super().branch_defaults()
        return {f"{self.branch}:{i}": Branch(f"{self.branch}:{i}", base="cond", perturbation=p)
                for i, p in enumerate(self.bin_perturbations) if p is not None}

    def perturbed_branch(self, step: GuidanceStep) -> str | None:
        """The perturbed branch at this step (``None`` where the bin has no blocks)."""
        if self.bins is None:
            return self.branch
        i = int(self.bins(step))
        return f"{self.branch}:{i}" if self.bin_perturbations[i] is not None else None

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        needed = ["cond"]
        if not is_neutral(resolve(self.scale, step), self.neutral):
            needed.append("uncond")
        name = self.perturbed_branch(step)
        if name is not None and not is_neutral(self.term.value(step), 0.0):
            needed.append(name)
        return tuple(needed)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        name = self.perturbed_branch(step)
        if "uncond" not in preds and name not in preds:
            return passthrough(preds, step)
        kind = preds["cond"].kind
        c = preds["cond"].value
        u = preds["uncond"].to(kind) if "uncond" in preds else None
        p = preds[name].to(kind) if name in preds else None
        s = self.term.value(step)
        out = perturbed_guidance(c, u, p, resolve(self.scale, step), s, self.form)
        r = resolve(self.rescaling_scale, step)
        if p is not None and not is_neutral(r, 1.0):
            out = rescaled(out, c, r, step.require_axes("stg", self.axes))
        return guided(out, step, kind)
